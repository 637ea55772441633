"""An offline, deterministic judge with AxBench's three 0/1/2 ratings.

`OfflineJudge.rate(items)` takes items `{"concept", "instruction", "continuation"}` (the
instruction is the story opening the model continued) and returns, per item, the dict an LLM
judge would give: `{"concept_score", "instruction_score", "fluency_score"}`. The rules:

* concept: how often the continuation uses the concept's words (whole words, any case):
  none -> 0, once -> 1, twice or more -> 2.
* instruction (does the text continue this opening): one point per content word of the
  opening (names included) that the continuation reuses, counted up to two, plus one point
  when the opening makes the continuation more likely under the unsteered model by at least
  `related_pmi` nats/token (pointwise mutual information: NLL after BOS alone minus NLL after
  the opening) and another at `strongly_related_pmi`; the rating is the points, capped at 2.
* fluency: mean per-token NLL of the continuation after the opening under the unsteered
  model, and the fraction of repeated word 3-grams. 2 when both are low (<= `fluent_nll`,
  <= `fluent_repetition`), 0 when either is high (> `broken_nll`, > `broken_repetition`),
  else 1.

An empty continuation gets 0 everywhere. The thresholds come from real TinyStories text:
`experiments/paper/calibrate_judge.py`, results in docs/judge_calibration.md.

With `chat=True` (the chat benchmark, steerjax.data.chat) the instruction is a user turn:
NLLs are taken after it under the model's chat template, and the PMI's baseline is an empty
user turn. `CHAT_THRESHOLDS` come from the chat model's own answers:
`experiments/paper/calibrate_chat_judge.py`, results in docs/chat_benchmark.md.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from steerjax.data.tinystories import CONCEPTS, Concept
from steerjax.eval.judge import JudgeStats
from steerjax.eval.scoring import RATINGS



@dataclasses.dataclass(frozen=True)
class Thresholds:
  fluent_nll: float = 2.5             # nats/token; at or below (with little repetition) -> 2
  broken_nll: float = 3.0             # above -> 0
  fluent_repetition: float = 0.2      # repeated word 3-grams; at or below -> may be 2
  broken_repetition: float = 0.5      # above -> 0
  related_pmi: float = 0.1            # nats/token the opening buys: one relevance point
  strongly_related_pmi: float = 0.25  # a second point


THRESHOLDS = Thresholds()
# SmolLM2-135M-Instruct as the rater (docs/chat_judge_calibration.md): text it did not write
# itself, as AlpacaEval's reference answers, reaches 3.5 nats/token at p95 and 4.5 at p99;
# its answers with the words shuffled sit at 5.9 (median).
CHAT_THRESHOLDS = Thresholds(fluent_nll=3.0, broken_nll=4.5)

# Function words, story filler and the family every story has: any two TinyStories share
# them, so they say nothing about whether a text continues a particular opening.
_COMMON_WORDS = frozenset("""
a about after again all also always am an and any are around as ask asked at away back be
because been before being big both but by came can come could day days did do does doing
done down each even ever every everyone everything feel felt for found from get gets give gave
go goes going gone good got had happy has have having he her here hers him his how i if in into
is it its just know knew let lets like liked little look looked looking lot lots made make many
me more much my new next nice no not now of off oh ok okay on once one only or other our out
over own play played playing really said sad saw say says see seen she so some something soon
still such than that the their them then there these they thing things think thought this
those time to told tell too took try tried under until up upon us very want wanted was way we
went were what when where which while who why will with would yes yet you your
mom mommy mum mummy mama dad daddy papa friend
""".split())


# ---------------------------------------------------------------- text measurements

def _normalize(word: str) -> str:
  """Lowercase with a crude stem, so "dogs", "dog's" and "dog" meet."""
  word = re.sub(r"'s$", "", word.lower().strip("'"))
  for suffix in ("ing", "ed", "es", "s"):
    if word.endswith(suffix) and len(word) - len(suffix) >= 3:
      return word[:-len(suffix)]
  return word


def content_words(text: str) -> set:
  """Normalized words of three letters or more that are not common filler."""
  words = (_normalize(w) for w in re.findall(r"[A-Za-z']+", text))
  return {w for w in words if len(w) >= 3 and w not in _COMMON_WORDS}


def repetition(text: str, n: int = 3) -> float:
  """Fraction of the text's word n-grams that repeat an earlier one (0 = none)."""
  words = re.findall(r"[a-z']+", text.lower())
  grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
  return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


# ---------------------------------------------------------------- ratings

def concept_rating(mentions: int) -> int:
  return min(int(mentions), 2)


def instruction_rating(shared_words: int, pmi: float, t: Thresholds = THRESHOLDS) -> int:
  points = min(shared_words, 2) + (pmi >= t.related_pmi) + (pmi >= t.strongly_related_pmi)
  return int(min(points, 2))


def fluency_rating(nll: float, repeated: float, t: Thresholds = THRESHOLDS) -> int:
  if nll > t.broken_nll or repeated > t.broken_repetition:
    return 0
  if nll <= t.fluent_nll and repeated <= t.fluent_repetition:
    return 2
  return 1


# ---------------------------------------------------------------- the judge

def _token_nll(model, params, tokens_BT):
  """-log p(token t+1 | tokens <= t), [B, T-1]; right padding needs no mask (causal)."""
  logits = model.apply({"params": params}, tokens_BT)
  logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
  return -jnp.take_along_axis(logp, tokens_BT[:, 1:, None], axis=-1)[..., 0]


class OfflineJudge:
  """Rates continuations with the unsteered model (e.g. stories260K) and word sets.

  NLLs are computed in batches of `batch_size` rows of `max_tokens` tokens (one compiled
  program). A pair longer than that keeps the end of its opening; a continuation longer than
  `max_tokens - 1` tokens is scored on its first `max_tokens - 1`.
  """

  name = "offline"

  def __init__(self, model, params, tokenizer, concepts: Optional[Mapping[str, Concept]] = None,
               thresholds: Thresholds = THRESHOLDS, batch_size: int = 32, max_tokens: int = 192,
               chat: bool = False):
    self.stats = JudgeStats()
    self.chat = chat
    self.params, self.tokenizer = params, tokenizer
    self.concepts = dict(CONCEPTS if concepts is None else concepts)
    self.thresholds, self.batch_size, self.max_tokens = thresholds, batch_size, max_tokens
    self.pad_id = model.cfg.pad_id
    self._nll = jax.jit(lambda p, tokens: _token_nll(model, p, tokens))

  def concept(self, concept) -> Concept:
    if isinstance(concept, Concept):
      return concept
    if concept not in self.concepts:
      raise ValueError(f"unknown concept {concept!r}; the judge knows {sorted(self.concepts)}")
    return self.concepts[concept]

  def context(self, instruction: Optional[str]) -> list:
    """What the continuation is scored after: the opening (BOS alone for None), or with
    `chat` the instruction as a user turn under the chat template (an empty turn for None)."""
    if self.chat:
      return self.tokenizer.chat_prompt(instruction or "")
    if instruction is None:
      return [self.tokenizer.bos_id]
    return self.tokenizer.encode(instruction, bos=True)

  def measure(self, items: Sequence[Mapping]) -> list:
    """Per item: mentions, shared_words, nll, nll_without_opening, pmi, repetition, tokens."""
    concepts = [self.concept(it["concept"]) for it in items]
    openings = [self.context(it["instruction"]) for it in items]
    continuations = [self.tokenizer.encode(it["continuation"]) for it in items]
    nll = self.mean_nll(openings, continuations)
    nll_alone = self.mean_nll([self.context(None)] * len(items), continuations)
    out = []
    for i, it in enumerate(items):
      text = it["continuation"]
      out.append({
          "mentions": concepts[i].mentions(text),
          "shared_words": len(content_words(it["instruction"]) & content_words(text)),
          "nll": float(nll[i]), "nll_without_opening": float(nll_alone[i]),
          "pmi": float(nll_alone[i] - nll[i]), "repetition": repetition(text),
          "tokens": len(continuations[i])})
    return out

  def rate(self, items: Sequence[Mapping]) -> list:
    """[{"concept_score", "instruction_score", "fluency_score", "ok"}] in item order."""
    return [dict(self.rating(m), ok=True) for m in self.measure(items)]

  def ask(self, prompts: Sequence[str]) -> list:
    raise ValueError("the offline judge rates but writes no text: take neutral responses "
                     "from the model (data.neutral=model) and steering prompts from the "
                     "benchmark (eval.steering_prompts=benchmark)")

  def close(self):
    pass

  def rating(self, measured: Mapping) -> dict:
    """The three ratings from one `measure` result."""
    if measured["tokens"] == 0:
      return dict.fromkeys(RATINGS, 0)
    t = self.thresholds
    return {"concept_score": concept_rating(measured["mentions"]),
            "instruction_score": instruction_rating(measured["shared_words"], measured["pmi"], t),
            "fluency_score": fluency_rating(measured["nll"], measured["repetition"], t)}

  def mean_nll(self, contexts: Sequence[Sequence[int]],
               continuations: Sequence[Sequence[int]]) -> np.ndarray:
    """Mean NLL (nats/token) of each continuation after its context; NaN when empty."""
    out = np.full(len(contexts), np.nan)
    for start in range(0, len(contexts), self.batch_size):
      rows = range(start, min(start + self.batch_size, len(contexts)))
      tokens, spans = self._pack([contexts[i] for i in rows], [continuations[i] for i in rows])
      nll = np.asarray(self._nll(self.params, jnp.asarray(tokens)))
      for r, i in enumerate(rows):
        first, stop = spans[r]
        if stop > first:
          out[i] = nll[r, first:stop].mean()
    return out

  def _pack(self, contexts, continuations):
    """Right-padded [batch_size, max_tokens] tokens, and per row the NLL columns to average."""
    T = self.max_tokens
    tokens = np.full((self.batch_size, T), self.pad_id, np.int32)
    spans = []
    for r, (context, continuation) in enumerate(zip(contexts, continuations)):
      continuation = list(continuation)[:T - 1]
      context = list(context)[-(T - len(continuation)):]
      ids = context + continuation
      tokens[r, :len(ids)] = ids
      # column j of the NLL scores token j + 1
      spans.append((len(context) - 1, len(ids) - 1))
    return tokens, spans
