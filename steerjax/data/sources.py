"""Config -> the concepts a run trains on: `data.source` picks where they come from.

  tinystories  concept words in TinyStories (steerjax.data.tinystories)
  axbench      AxBench Concept10 / Concept500 (`data.suite`, `data.task`, a concept range)
  file         your own JSON-lines or parquet rows (`data.path`; steerjax.data.local)
  chat         concrete topics on AlpacaEval instructions, y_c written by the model itself
               (steerjax.data.chat; built by steerjax.runtime.chat)

Each gives `ConceptData` (token ids) and one global id per concept, which seeds its SV's
init. Neutral responses are kept where the source has them and otherwise left for the job
to make: data modules never run the model.
"""

from __future__ import annotations

import functools
from typing import List, Tuple

from steerjax.data import axbench, local, tinystories
from steerjax.data.batching import ConceptData
from steerjax.data.benchmark import Benchmark, Concept

SOURCES = ("tinystories", "axbench", "file", "chat")


def check(config):
  """Errors in `config.data` that need no file, raised before anything loads."""
  d = config.data
  if d.source not in SOURCES:
    raise ValueError(f"data.source={d.source!r}; use one of {SOURCES}")
  if d.source == "file" and not d.path:
    raise ValueError("data.source='file' needs data.path (a .jsonl or .parquet concept file)")
  if d.source == "chat" and config.job != "chat":
    raise ValueError(f"data.source='chat' is built with its model by job=chat; job="
                     f"{config.job!r} reads 'tinystories', 'axbench' or 'file'")


@functools.lru_cache(maxsize=4)
def _tinystories(data_root, concepts, n_train, n_eval, seed, max_stories, prefix_tokens,
                 continuation_tokens, tokenizer):
  stories = tinystories.load_stories(data_root or None, limit=max_stories or None)
  return tinystories.build_benchmark(stories, tokenizer, concepts=list(concepts),
                                     n_train=n_train, n_eval=n_eval, seed=seed,
                                     prefix_tokens=prefix_tokens,
                                     continuation_tokens=continuation_tokens)


def tinystories_entries(config, tokenizer) -> dict:
  """concept -> {"train": [(x_ids, y_ids)], "eval": [x_ids], "train_text", "eval_text",
  "train_stories", "eval_stories"} (see `tinystories.build_benchmark`)."""
  d = config.data
  return _tinystories(config.data_root, tuple(d.concepts), d.n_train, d.n_eval, d.seed,
                      d.max_stories, d.prefix_tokens, d.continuation_tokens, tokenizer)


def tinystories_benchmark(config, tokenizer) -> Benchmark:
  """The TinyStories concepts as a benchmark: story openings are the test instructions,
  each concept's description its steering prompt, its word its file name."""
  entries = tinystories_entries(config, tokenizer)
  concepts = [Concept(k, name, key=name) for k, name in enumerate(config.data.concepts)]
  return Benchmark(
      concepts, {c.concept_id: entries[c.name]["train_text"] for c in concepts},
      {c.concept_id: entries[c.name]["eval_text"] for c in concepts},
      {c.concept_id: tinystories.CONCEPTS[c.name].description for c in concepts})


def axbench_benchmark(config) -> Benchmark:
  d = config.data
  return axbench.load_benchmark(d.suite, d.task, d.first_concept, d.num_concepts, d.n_train,
                                config.data_root or None)


def training_concepts(config, tokenizer) -> Tuple[List[ConceptData], List[int]]:
  """(one ConceptData per concept, their global ids) from `config.data.source`."""
  check(config)
  d = config.data
  if d.source == "tinystories":
    bench = tinystories_entries(config, tokenizer)
    concepts = [ConceptData(name, [list(x) for x, _ in bench[name]["train"]],
                            [list(y) for _, y in bench[name]["train"]])
                for name in d.concepts]
    return concepts, list(range(len(concepts)))
  if d.source == "axbench":
    bench = axbench_benchmark(config)
    return (axbench.training_data(bench, tokenizer, d.max_response_tokens),
            [c.concept_id for c in bench.concepts])
  grouped = local.by_concept(local.read_rows(d.path), d.n_train)
  concepts = [ConceptData(name, *local.tokenize(tokenizer, pairs, d.max_response_tokens))
              for name, pairs in grouped.items()]
  return concepts, list(range(len(concepts)))
