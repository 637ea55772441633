"""The TinyStories concept benchmark and the offline judge, on the local excerpt."""

import warnings

import pytest

from steerjax.data import tinystories as ts
from steerjax.data.batching import ConceptData
from steerjax.eval.offline_judge import OfflineJudge
from steerjax.eval.scoring import RATINGS
from steerjax.generate import generate
from steerjax.runtime import context, training

N_TRAIN = 20   # every concept has at least this many pairs in the local excerpt


@pytest.fixture(scope="module")
def local_stories():
  return ts.load_stories()


@pytest.fixture(scope="module")
def bench(local_stories, stories):
  _, _, tokenizer = stories
  return ts.build_benchmark(local_stories, tokenizer, n_train=N_TRAIN)


@pytest.fixture(scope="module")
def judge(stories):
  model, params, tokenizer = stories
  return OfflineJudge(model, params, tokenizer, batch_size=8)


# ---------------------------------------------------------------- stories

def test_local_excerpt_splits_into_stories(local_stories):
  assert 880 <= len(local_stories) <= 960
  assert local_stories[0].startswith("Spot. Spot saw the shiny car")
  assert local_stories[1].startswith("Once upon a time, in a big forest, there lived a rhinoceros")
  assert local_stories[1].endswith("she could climb anything.")
  assert local_stories[-1].endswith("He knew he would always remember his special performance.")
  assert ts.load_stories(limit=5) == local_stories[:5]


def test_split_rules_on_a_small_text():
  text = ("Once upon a time, there was a cat named Tom. Tom liked milk.\n\n"
          "But then, the milk was gone. Tom was sad. \n\n"          # linking word: same story
          "He looked everywhere for Tom's milk.\n\n"               # after "sad. ": same story
          "Anna and Ben are twins. They like to paint.\n\n"         # introduction: new story
          "\"Look!\" said Anna to Ben. Ben waved at Anna and Ben smiled.\n\n"   # quote: same story
          "Long ago, a king lived in a castle.\n\n")                # classic opener: new story
  stories = ts.split_stories(text)
  assert [s.split()[0] for s in stories] == ["Once", "Anna", "Long"]
  assert stories[0].count("\n\n") == 2 and stories[1].count("\n\n") == 1


def test_missing_local_file_goes_to_the_hub(tmp_path, monkeypatch):
  monkeypatch.setattr(ts, "_hub_stories", lambda limit: ["from the hub"] * (limit or 3))
  assert ts.load_stories(str(tmp_path), limit=2) == ["from the hub"] * 2


# ---------------------------------------------------------------- concepts and pairs

def test_concepts_are_documented_word_sets():
  assert len(ts.CONCEPTS) >= 10
  for name, concept in ts.CONCEPTS.items():
    assert name == concept.name and concept.description
    assert all(w.isalpha() and w.islower() for w in concept.words)
  dog = ts.CONCEPTS["dog"]
  assert dog.mentions("The Dog saw two puppies and a dog's bone.") == 3
  assert dog.mentions("Hotdogs and dogma.") == 0          # whole words only


def test_benchmark_counts_and_shapes(bench, stories):
  _, _, tokenizer = stories
  assert set(bench) == set(ts.CONCEPTS)
  for entry in bench.values():
    assert len(entry["train"]) == len(entry["train_text"]) == len(entry["train_stories"]) == N_TRAIN
    assert len(entry["eval"]) == len(entry["eval_text"]) == len(entry["eval_stories"]) == 10
    for x_ids, y_ids in entry["train"]:
      assert x_ids[0] == tokenizer.bos_id and tokenizer.bos_id not in x_ids[1:]
      assert ts.MIN_PREFIX_TOKENS <= len(x_ids) <= ts.PREFIX_TOKENS
      assert 0 < len(y_ids) <= ts.CONTINUATION_TOKENS and tokenizer.eos_id not in y_ids
    for x_ids in entry["eval"]:
      assert x_ids[0] == tokenizer.bos_id and len(x_ids) <= ts.PREFIX_TOKENS
  assert ts.eval_split(10) == ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9])


def test_training_pairs_are_real_story_text(bench, local_stories, stories):
  _, _, tokenizer = stories
  for name, entry in bench.items():
    concept = ts.CONCEPTS[name]
    for (x_ids, y_ids), (x, y), i in zip(entry["train"], entry["train_text"],
                                         entry["train_stories"]):
      story = local_stories[i]
      assert x_ids == tokenizer.encode(x, bos=True) and y == tokenizer.decode(y_ids)
      assert concept.mentions(x) == 0, (name, x)
      assert concept.mentions(y) >= 1, (name, y)
      assert story.startswith(x)
      assert story[len(x):].lstrip().startswith(y.strip()[:30])


def test_eval_prompts_are_concept_free_openings_of_unused_stories(bench, local_stories, stories):
  _, _, tokenizer = stories
  train_stories = {i for entry in bench.values() for i in entry["train_stories"]}
  for name, entry in bench.items():
    concept = ts.CONCEPTS[name]
    assert len(set(entry["eval_stories"])) == 10
    assert not train_stories & set(entry["eval_stories"])
    for x_ids, x, i in zip(entry["eval"], entry["eval_text"], entry["eval_stories"]):
      assert concept.mentions(local_stories[i]) == 0
      assert local_stories[i].startswith(x) and x_ids == tokenizer.encode(x, bos=True)


def test_benchmark_is_deterministic_given_the_seed(bench, local_stories, stories):
  _, _, tokenizer = stories
  concepts = ["dog", "rain"]
  again = ts.build_benchmark(local_stories, tokenizer, concepts, n_train=N_TRAIN)
  other = ts.build_benchmark(local_stories, tokenizer, concepts, n_train=N_TRAIN, seed=1)
  for name in concepts:
    assert again[name]["train"] == bench[name]["train"]
    assert other[name]["train_stories"] != again[name]["train_stories"]


def test_too_few_stories_is_a_clear_error(local_stories, stories):
  _, _, tokenizer = stories
  too_many = r"concept 'dog': found \d+ training pairs \(asked n_train=500\)"
  with pytest.raises(ValueError, match=too_many):
    ts.build_benchmark(local_stories, tokenizer, ["dog"], n_train=500)
  with pytest.raises(ValueError, match="unknown concept 'unicorn'"):
    ts.build_benchmark(local_stories, tokenizer, ["unicorn"])
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    fewer = ts.build_benchmark(local_stories[:200], tokenizer, ["dog"], allow_fewer=True)
  assert 0 < len(fewer["dog"]["train"]) < 72 and "concept 'dog'" in str(caught[0].message)


def test_neutral_responses_are_the_models_greedy_text(bench, stories):
  model, params, tokenizer = stories
  # Prompts of one length and batches of one size: every call reuses one compiled program.
  pairs = [(x[:24], y) for x, y in bench["dog"]["train"][:5]]
  ctx = context.Context(None, model, params, tokenizer)
  concept = ConceptData("dog", [x for x, _ in pairs], [y for _, y in pairs])
  (made,) = training.with_model_neutral(ctx, [concept], batch_size=3)   # the last batch padded
  neutral = made.neutral
  assert len(neutral) == 5
  for (_, y_ids), y in zip(pairs, neutral):
    assert 0 < len(y) <= len(y_ids) and tokenizer.eos_id not in y
  x, y_ids = pairs[4]
  alone = generate(model, params, [x] * 3, max_new_tokens=len(y_ids))[0]
  assert neutral[4] == alone
  assert training.with_model_neutral(ctx, [concept], batch_size=3)[0].neutral is neutral  # cached


# ---------------------------------------------------------------- the judge

OPENING = ("Once upon a time, there was a little girl named Lily. "
           "She lived in a small house with her mom and dad.")
TEXTS = {
    "dog story": ("One day, Lily found a little dog in the garden. The dog was brown and very "
                  "friendly. Lily gave the dog some water, and they played together all day."),
    "one puppy": ("One day, Lily saw a puppy in the park. She smiled and waved at it, and then she "
                  "went home with her mom."),
    "park story": ("One day, Lily went to the park with her mom. She played on the swings and "
                   "laughed. Her mom pushed her high."),
    "shuffled": ("the day. swings One Lily park mom. went high. to played on laughed. pushed Her "
                 "and the her She her with mom"),
    "unrelated": ("The old king counted his gold coins in the castle tower. His knights rode out "
                  "to fight the dragon in the mountains."),
    "loop": "the dog the dog the dog the dog the dog the dog the dog the dog the dog the dog",
    "empty": "",
}
EXPECTED = {   # concept, instruction, fluency
    "dog story": (2, 2, 2), "one puppy": (1, 2, 2), "park story": (0, 2, 2),
    "shuffled": (0, 1, 0), "unrelated": (0, 0, 1), "loop": (2, 0, 0), "empty": (0, 0, 0),
}


def _items(names):
  return [{"concept": "dog", "instruction": OPENING, "continuation": TEXTS[n]} for n in names]


def test_judge_ratings_on_known_texts(judge):
  names = list(TEXTS)
  ratings = judge.rate(_items(names))
  for name, rating in zip(names, ratings):
    assert set(rating) == set(RATINGS) | {"ok"}
    assert tuple(rating[k] for k in RATINGS) == EXPECTED[name], name


def test_judge_measurements_do_not_depend_on_the_batch(judge):
  names = ["dog story", "shuffled"] * 5                  # ten items: two batches of eight
  together = judge.measure(_items(names))
  for name, measured in zip(names, together):
    alone = judge.measure(_items([name]))[0]
    assert measured["nll"] == pytest.approx(alone["nll"], abs=1e-5)
    assert measured["pmi"] == pytest.approx(alone["pmi"], abs=1e-5)
  assert together[0]["nll"] < 2.0 < 3.0 < together[1]["nll"]


def test_judge_rejects_unknown_concepts(judge):
  with pytest.raises(ValueError, match="unknown concept 'unicorn'"):
    judge.rate([{"concept": "unicorn", "instruction": OPENING, "continuation": "Hi."}])
