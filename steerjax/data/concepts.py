"""Config -> concept benchmark: training pairs (ConceptData) and evaluation prompts."""

from __future__ import annotations

import functools

from steerjax.data import tinystories
from steerjax.data.batching import ConceptData

SOURCES = ("tinystories",)


@functools.lru_cache(maxsize=4)
def _tinystories(data_root, concepts, n_train, n_eval, seed, max_stories, prefix_tokens,
                 continuation_tokens, tokenizer):
  stories = tinystories.load_stories(data_root or None, limit=max_stories or None)
  return tinystories.build_benchmark(stories, tokenizer, concepts=list(concepts),
                                     n_train=n_train, n_eval=n_eval, seed=seed,
                                     prefix_tokens=prefix_tokens,
                                     continuation_tokens=continuation_tokens)


def benchmark(config, tokenizer) -> dict:
  """concept -> {"train": [(x_ids, y_ids)], "eval": [x_ids], "train_text", "eval_text"}."""
  data = config.data
  if data.source not in SOURCES:
    raise ValueError(f"config.data.source={data.source!r}; expected one of {SOURCES}")
  return _tinystories(config.data_root, tuple(data.concepts), data.n_train, data.n_eval,
                      data.seed, data.max_stories, data.prefix_tokens,
                      data.continuation_tokens, tokenizer)


def training_concepts(config, model, params, tokenizer, neutral: bool, log=print) -> list:
  """One ConceptData per configured concept; with `neutral`, y = the model's own greedy
  continuation of x (computed once per concept and reused)."""
  bench = benchmark(config, tokenizer)
  out = []
  for name in config.data.concepts:
    pairs = bench[name]["train"]
    y = None
    if neutral:
      y = _neutral(name, model, params, pairs)
    out.append(ConceptData(name, [list(x) for x, _ in pairs], [list(r) for _, r in pairs], y))
  log(f"data: {len(out)} concept(s) x {len(out[0].prompts)} training pairs "
      f"({config.data.source}{', with neutral responses' if neutral else ''})")
  return out


_NEUTRAL_CACHE = {}


def _neutral(name, model, params, pairs):
  key = (name, id(params), tuple(tuple(x) for x, _ in pairs))
  if key not in _NEUTRAL_CACHE:
    _NEUTRAL_CACHE[key] = tinystories.neutral_responses(model, params, pairs)
  return _NEUTRAL_CACHE[key]
