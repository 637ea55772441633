"""Synthetic training data shared by the training and sharding tests."""

import numpy as np

from steerjax.data.batching import ConceptData


def synthetic_concepts(n_concepts=3, n=8, seed=0):
  """`n_concepts` concepts of `n` random pairs; concept c's responses open and close with
  token 10 + c, so each concept has something of its own to learn."""
  rng = np.random.default_rng(seed)
  out = []
  for c in range(n_concepts):
    word = 10 + c
    prompts = [[1] + rng.integers(20, 64, rng.integers(3, 8)).tolist() for _ in range(n)]
    responses = [[word] + rng.integers(20, 64, 6).tolist() + [word] for _ in range(n)]
    neutral = [rng.integers(20, 64, 7).tolist() for _ in range(n)]
    out.append(ConceptData(f"c{c}", prompts, responses, neutral))
  return out


def train_configs(**fields):
  """(StepConfig, LoopConfig) from one dict of their fields."""
  import dataclasses
  from steerjax.train import LoopConfig, StepConfig
  names = {f.name for f in dataclasses.fields(StepConfig)}
  unknown = set(fields) - names - {f.name for f in dataclasses.fields(LoopConfig)}
  assert not unknown, f"not a train config field: {sorted(unknown)}"
  return (StepConfig(**{k: v for k, v in fields.items() if k in names}),
          LoopConfig(**{k: v for k, v in fields.items() if k not in names}))
