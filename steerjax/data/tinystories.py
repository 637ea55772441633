"""A TinyStories concept benchmark shaped like AxBench.

Per concept, AxBench has training pairs (x, y_c) -- a concept-neutral instruction and a
response that shows the concept -- and 10 held-out evaluation prompts (ids 0..4 choose the
steering factor, ids 5..9 are the test). Here every piece is real TinyStories text:

* x    = the opening of a story, the sentences before the concept's first mention
         (so x never mentions the concept), at most `prefix_tokens` tokens with BOS;
* y_c  = the story's own text from the sentence holding that first mention, cut to
         `continuation_tokens` tokens (the mention must survive the cut);
* eval = the openings of stories that never mention the concept, drawn from stories that
         are no concept's training story.

A concept is a small set of lowercase word forms matched as whole words, ignoring case.
Stories with non-ASCII characters (the dataset's own mojibake, such as "â€™" for an
apostrophe) are left out.
When a concept has fewer usable stories than asked for, `build_benchmark` raises ValueError
naming the concept and the counts, unless `allow_fewer=True` (then it warns and keeps what
there is).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import random
import re
import warnings
from typing import Iterable, Optional, Sequence, Union

from steerjax import paths

LOCAL_FILE = os.path.join("tinystories", "TinyStories-valid-head.txt")
HUB_DATASET = "roneneldan/TinyStories"
HUB_SPLIT = "validation"

PREFIX_TOKENS = 128          # longest x, BOS included
CONTINUATION_TOKENS = 64     # y_c is cut to this many tokens
MIN_PREFIX_TOKENS = 8        # shorter openings (e.g. "Spot.") give the model too little to go on
OPENING_SENTENCES = 2        # an eval prompt is a story's first two sentences (fewer if too long)


@dataclasses.dataclass(frozen=True)
class Concept:
  """A name, a one-line description and the word forms that show the concept."""
  name: str
  description: str
  words: frozenset
  pattern: re.Pattern = dataclasses.field(init=False, repr=False, compare=False)

  def __post_init__(self):
    bad = [w for w in self.words if not re.fullmatch(r"[a-z]+", w)]
    if bad or not self.words:
      raise ValueError(f"concept {self.name!r}: words must be lowercase letters only, got "
                       f"{sorted(bad) or 'none'}")
    alternatives = "|".join(sorted(self.words, key=len, reverse=True))
    object.__setattr__(self, "pattern", re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE))

  def mentions(self, text: str) -> int:
    """How many times the text uses one of the concept's words."""
    return len(self.pattern.findall(text))

  def first_mention(self, text: str) -> Optional[re.Match]:
    return self.pattern.search(text)


def _concept(name: str, description: str, words: str) -> Concept:
  return Concept(name, description, frozenset(words.split()))


# Word sets: singular and plural, plus a few near-synonyms a child's story uses for the same
# thing. Words that double as common character names (Lily, Daisy, Rose, Kitty, Spot) are left
# out because matching ignores case.
CONCEPTS = {c.name: c for c in [
    _concept("dog", "dogs and puppies", "dog dogs puppy puppies pup pups doggy doggie"),
    _concept("cat", "cats and kittens", "cat cats kitten kittens"),
    _concept("bird", "birds", "bird birds birdie owl owls robin robins parrot parrots"),
    _concept("rain", "rain and rainy weather",
             "rain rains rained raining rainy raindrop raindrops"),
    _concept("sea", "the sea, the ocean and the beach",
             "sea seas ocean oceans beach beaches seashore shore seashell seashells"),
    _concept("flower", "flowers", "flower flowers tulip tulips sunflower sunflowers"),
    _concept("ball", "balls", "ball balls"),
    _concept("tree", "trees, woods and forests", "tree trees forest forests woods"),
    _concept("sun", "the sun and sunny weather", "sun sunny sunshine sunlight"),
    _concept("car", "cars and trucks", "car cars truck trucks"),
    _concept("toy", "toys", "toy toys"),
    _concept("music", "music and singing",
             "music song songs sing sings sang sung singing"),
]}


# ---------------------------------------------------------------- loading stories

def load_stories(data_root: Optional[str] = None, limit: Optional[int] = None) -> list:
  """TinyStories validation stories: the local excerpt when the data root has it (split into
  stories by `split_stories`), else the hub dataset's `text` column."""
  root = paths.data_root(data_root)
  local = os.path.join(root, LOCAL_FILE) if root else None
  if local and os.path.isfile(local):
    with open(local, encoding="utf-8") as f:
      stories = split_stories(f.read())
  else:
    stories = _hub_stories(limit)
  return stories if limit is None else stories[:limit]


def _hub_stories(limit: Optional[int]) -> list:
  import datasets
  split = HUB_SPLIT if limit is None else f"{HUB_SPLIT}[:{limit}]"
  rows = datasets.load_dataset(HUB_DATASET, split=split)["text"]
  return [r.strip() for r in rows if r and r.strip()]


# The local excerpt separates stories and the paragraphs inside them alike by a blank line,
# so boundaries are guessed. A paragraph starts a new story when it
#   * opens like a story ("Once upon a time", "Long ago", "There once was", ...), or
#   * its first sentence introduces someone ("Tom and Mia were playing ...", "Max was a
#     puppy ...", "One day, a girl named Sue ..."), or
#   * it names characters in its first words and shares no name with the story so far.
# Never before a paragraph that opens with a quote or a linking word ("But", "Then", ...),
# and never after a separator with trailing spaces: no story in the excerpt begins there.
_OPENER = re.compile(r"^(?:Once upon a time|Once,? (?:there|in|on|a|an|long)\b|Long,? long ago"
                     r"|Long ago|There once|There was once|One upon a time)")
_NAME = r"[A-Z][a-z]+"
_WHO = rf"(?P<who>{_NAME})(?: and (?:(?P<other>{_NAME})|his \w+|her \w+))?"
_INTRODUCTIONS = tuple(re.compile(p) for p in (
    rf"^{_WHO} (?:is|was|are|were) (?:a|an|twins|friends|best friends|brother and sister"
    rf"|siblings|playing|going)\b",
    rf"^{_WHO} (?:like|likes|liked|love|loves|loved) to\b",
    rf"^(?:One|On a) (?:\w+ )?day,? (?:there (?:was|were|lived) )?(?:a|an|two)\b[^.!?\"]*"
    rf"\bnamed (?P<who>{_NAME})",
    rf"^There (?:was|lived) (?:a|an|two)\b[^.!?\"]*\bnamed (?P<who>{_NAME})"))
# A quote (plain, curly, or the mojibake "â€œ") or a linking word continues a story.
_CONTINUES = re.compile(
    r"^(?:[\"'(\u201c]|\u00e2|(?:But|And|So|Then|Suddenly|Later|After|When|Finally)\b)")
_NOT_NAMES = {"i", "mom", "dad", "mommy", "daddy", "mum", "mummy", "mama", "papa", "grandma",
              "grandpa", "god"}


def split_stories(text: str) -> list:
  """Cut the blank-line separated excerpt into stories (see the rules above)."""
  pieces = re.split(r"([ \t]*\n[ \t]*\n\s*)", text)
  paragraphs = [(pieces[i].strip(), pieces[i - 1] if i else "")
                for i in range(0, len(pieces), 2) if pieces[i].strip()]
  is_name = _name_test(text)
  stories, current, current_names = [], [], set()
  for paragraph, separator in paragraphs:
    names = {w for w in re.findall(_NAME, paragraph) if is_name(w)}
    if current and _starts_story(paragraph, separator, names, current_names, is_name):
      stories.append("\n\n".join(current))
      current, current_names = [], set()
    current.append(paragraph)
    current_names |= names
  if current:
    stories.append("\n\n".join(current))
  return stories


def _name_test(text: str):
  """A word is a name when, inside sentences, it is capitalized more often than not."""
  capitalized, lowercase = collections.Counter(), collections.Counter()
  for m in re.finditer(r"(?<=[a-z,;] )([A-Za-z]+)", text):
    word = m.group(1)
    (capitalized if word[0].isupper() else lowercase)[word.lower()] += 1

  def is_name(word: str) -> bool:
    key = word.lower()
    return key not in _NOT_NAMES and capitalized[key] >= 2 and capitalized[key] > lowercase[key]
  return is_name


def _starts_story(paragraph, separator, names, story_names, is_name) -> bool:
  if separator.startswith((" ", "\t")) or _CONTINUES.match(paragraph):
    return False
  first = sentences(paragraph)[0]
  if _OPENER.match(paragraph) or _introduces_someone(first, is_name):
    return True
  leading_names = {w for w in re.findall(_NAME, first[:40]) if is_name(w)}
  return bool(leading_names) and bool(story_names) and not (names & story_names)


def _introduces_someone(sentence: str, is_name) -> bool:
  # "It was a ..." has the shape of "Max was a ..."; only real names count.
  for pattern in _INTRODUCTIONS:
    m = pattern.match(sentence)
    if m and all(is_name(w) for w in m.groupdict().values() if w):
      return True
  return False


# ---------------------------------------------------------------- sentences and pieces

_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"']))(?<!\bMr\.)(?<!\bMrs\.)(?<!\bMs\.)"
                           r"(?<!\bDr\.)\s+(?=[\"'A-Z])")


def sentence_starts(text: str) -> list:
  """Character offsets where the text's sentences begin (the first is 0)."""
  return [0] + [m.end() for m in _SENTENCE_END.finditer(text)]


def sentences(text: str) -> list:
  starts = sentence_starts(text) + [len(text)]
  return [text[a:b].strip() for a, b in zip(starts, starts[1:])]


def training_pair(story: str, concept: Concept, tokenizer, prefix_tokens: int = PREFIX_TOKENS,
                  continuation_tokens: int = CONTINUATION_TOKENS) -> Optional[dict]:
  """(x, y_c) from one story, or None when the story cannot give one.

  x is the text before the sentence holding the first mention; y_c starts at that sentence.
  """
  mention = concept.first_mention(story)
  if mention is None:
    return None
  cut = max(a for a in sentence_starts(story) if a <= mention.start())
  x_text, rest = story[:cut].rstrip(), story[cut:]
  if not x_text:
    return None
  x_ids = tokenizer.encode(x_text, bos=True)
  if not MIN_PREFIX_TOKENS <= len(x_ids) <= prefix_tokens:
    return None
  y_ids = tokenizer.encode(rest)[:continuation_tokens]
  y_text = tokenizer.decode(y_ids)
  if not _mentions_whole_word(y_text, concept):
    return None
  return {"x_ids": x_ids, "y_ids": y_ids, "x_text": x_text, "y_text": y_text}


def _mentions_whole_word(text: str, concept: Concept) -> bool:
  # A mention cut short by the token budget ("dog" from "dogs") must not count: the match
  # needs a character after it.
  return any(m.end() < len(text) for m in concept.pattern.finditer(text))


def story_opening(story: str, tokenizer, prefix_tokens: int = PREFIX_TOKENS) -> Optional[dict]:
  """The first OPENING_SENTENCES sentences (fewer when they exceed the budget), or None."""
  starts = sentence_starts(story) + [len(story)]
  for n in range(min(OPENING_SENTENCES, len(starts) - 1), 0, -1):
    text = story[:starts[n]].rstrip()
    ids = tokenizer.encode(text, bos=True)
    if MIN_PREFIX_TOKENS <= len(ids) <= prefix_tokens:
      return {"x_ids": ids, "x_text": text}
  return None


# ---------------------------------------------------------------- the benchmark

def resolve_concepts(concepts: Union[None, Iterable[Union[str, Concept]]] = None) -> list:
  """Concept objects from names (keys of CONCEPTS) or Concept instances; None = all."""
  if concepts is None:
    return list(CONCEPTS.values())
  out = []
  for c in concepts:
    if isinstance(c, Concept):
      out.append(c)
    elif c in CONCEPTS:
      out.append(CONCEPTS[c])
    else:
      raise ValueError(f"unknown concept {c!r}; known: {sorted(CONCEPTS)} (or pass a Concept)")
  return out


def eval_split(n_eval: int = 10):
  """(selection ids, test ids): the first half of the eval prompts picks the factor."""
  half = n_eval // 2
  return list(range(half)), list(range(half, n_eval))


def build_benchmark(stories: Sequence[str], tokenizer, concepts=None, n_train: int = 72,
                    n_eval: int = 10, prefix_tokens: int = PREFIX_TOKENS,
                    continuation_tokens: int = CONTINUATION_TOKENS, seed: int = 0,
                    allow_fewer: bool = False) -> dict:
  """concept name -> {"train": [(x_ids, y_ids)], "eval": [x_ids], "train_text": [(x, y)],
  "eval_text": [x], "train_stories": [i], "eval_stories": [i]} (i indexes `stories`).

  Deterministic given the arguments. Eval stories avoid every requested concept's training
  stories; eval ids follow `eval_split(n_eval)`.
  """
  chosen = resolve_concepts(concepts)
  usable = [i for i, s in enumerate(stories) if s.isascii()]
  bench = {}
  for concept in chosen:
    pairs = _pick_training(stories, usable, concept, tokenizer, n_train, prefix_tokens,
                           continuation_tokens, seed)
    bench[concept.name] = {
        "train": [(p["x_ids"], p["y_ids"]) for _, p in pairs],
        "train_text": [(p["x_text"], p["y_text"]) for _, p in pairs],
        "train_stories": [i for i, _ in pairs]}
  used = {i for entry in bench.values() for i in entry["train_stories"]}
  for concept in chosen:
    openings = _pick_eval(stories, [i for i in usable if i not in used], concept, tokenizer,
                          n_eval, prefix_tokens, seed)
    bench[concept.name].update(
        eval=[o["x_ids"] for _, o in openings], eval_text=[o["x_text"] for _, o in openings],
        eval_stories=[i for i, _ in openings])
    _check_counts(concept, bench[concept.name], n_train, n_eval, len(usable), allow_fewer)
  return bench


def _shuffled(indices, seed: int, concept: Concept, role: str) -> list:
  order = list(indices)
  random.Random(f"{seed}/{concept.name}/{role}").shuffle(order)
  return order


def _pick_training(stories, usable, concept, tokenizer, n_train, prefix_tokens,
                   continuation_tokens, seed) -> list:
  mentioning = [i for i in usable if concept.first_mention(stories[i])]
  picked = []
  for i in _shuffled(mentioning, seed, concept, "train"):
    pair = training_pair(stories[i], concept, tokenizer, prefix_tokens, continuation_tokens)
    if pair is not None:
      picked.append((i, pair))
      if len(picked) == n_train:
        break
  return picked


def _pick_eval(stories, candidates, concept, tokenizer, n_eval, prefix_tokens, seed) -> list:
  free = [i for i in candidates if not concept.first_mention(stories[i])]
  picked = []
  for i in _shuffled(free, seed, concept, "eval"):
    opening = story_opening(stories[i], tokenizer, prefix_tokens)
    if opening is not None:
      picked.append((i, opening))
      if len(picked) == n_eval:
        break
  return picked


def _check_counts(concept, entry, n_train, n_eval, n_usable, allow_fewer):
  got_train, got_eval = len(entry["train"]), len(entry["eval"])
  if got_train == n_train and got_eval == n_eval:
    return
  message = (f"concept {concept.name!r}: found {got_train} training pairs (asked n_train="
             f"{n_train}) and {got_eval} eval prompts (asked n_eval={n_eval}) in {n_usable} "
             "usable stories; use more stories, ask for fewer, or pass allow_fewer=True")
  if not allow_fewer:
    raise ValueError(message)
  warnings.warn(message, stacklevel=3)
