"""The two configs of a training run and the factor-mode registry.

`StepConfig` holds what the compiled train step depends on; `LoopConfig` what only shapes
the initial state, the base learning rates and the loop. Runs that differ only in their
LoopConfig (a sweep over beta, lam, rates or seeds) reuse one compiled step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

from steerjax import losses


@dataclasses.dataclass(frozen=True)
class FactorMode:
  """How a method treats the factor alpha: whether the optimizer trains it, its initial
  value `init(factors [C], loop)`, and the factor each example is steered with
  `per_example(factors [C], group [B], key, step)`. Untrained factors need a grid of
  factors to pick from at inference."""
  trained: bool
  init: Callable
  per_example: Callable


def _own_factor(factors, group, key, step):
  return factors[group]


def _sampled_factor(factors, group, key, step):
  choices = jnp.asarray(step.factor_set, jnp.float32)
  return choices[jax.random.randint(key, group.shape, 0, len(step.factor_set))]


FACTOR_MODES = {
    "joint": FactorMode(True, lambda f, loop: f, _own_factor),
    "fixed": FactorMode(False, lambda f, loop: jnp.full_like(f, loop.fixed_factor), _own_factor),
    # The stored factor is unused: every example draws one from `factor_set`.
    "sampled": FactorMode(False, lambda f, loop: jnp.zeros_like(f), _sampled_factor),
}


def factor_mode(name: str) -> FactorMode:
  if name not in FACTOR_MODES:
    raise ValueError(f"sv.factor_mode={name!r} is unknown; use one of {sorted(FACTOR_MODES)}")
  return FACTOR_MODES[name]


SCHEDULE_STEPS = ("updates", "micro_batches")
PARAM_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What the compiled train step depends on: runs that share it share one program."""
  objective: str = "lang"            # a key of steerjax.losses.OBJECTIVES
  factor_mode: str = "joint"         # a key of FACTOR_MODES
  factor_set: tuple = tuple(range(2, 21, 2))   # factors drawn from in factor_mode=sampled
  batch_size: int = 12               # examples per concept per step
  epochs: int = 12                   # with the example count, the schedule's length
  clip_direction: float = 1.0
  clip_factor: float = 0.0
  schedule: str = "linear"
  warmup_steps: int = 0
  weight_decay: float = 0.0
  grad_accum_steps: int = 1          # micro-batches per update (exact: equals the big batch)
  schedule_steps: str = "updates"    # updates | micro_batches (the authors' longer schedule)
  param_dtype: str = "float32"       # bfloat16 emulates the authors' bf16 SV storage
  bias: bool = False                 # a learned bias b: add h + (a + b) v, null relu(h.v + b)
  dropout: float = 0.0               # dropout on the added v in training (AxBench's RePS)

  def __post_init__(self):
    losses.objective(self.objective)
    factor_mode(self.factor_mode)
    if self.grad_accum_steps < 1 or self.batch_size % self.grad_accum_steps:
      raise ValueError(f"train.grad_accum_steps={self.grad_accum_steps} must be >= 1 and divide "
                       f"train.batch_size={self.batch_size}")
    if self.schedule_steps not in SCHEDULE_STEPS:
      raise ValueError(f"train.schedule_steps={self.schedule_steps!r}; use one of "
                       f"{SCHEDULE_STEPS}")
    if self.param_dtype not in PARAM_DTYPES:
      raise ValueError(f"sv.param_dtype={self.param_dtype!r}; use one of {PARAM_DTYPES}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"sv.dropout={self.dropout!r} must be in [0, 1)")
    if self.batch_size < 1 or self.epochs < 1:
      raise ValueError(f"train.batch_size={self.batch_size} and train.epochs={self.epochs} "
                       "must be >= 1")
    if self.factor_mode == "sampled" and not self.factor_set:
      raise ValueError("sv.factor_set is empty; factor_mode=sampled draws factors from it")


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """What shapes a run but not its compiled step: init sizes, base rates, loop, checkpoints."""
  beta: float = 4.0                  # factor init alpha0 = beta * sqrt(D)
  lam: float = 8.0                   # direction init size
  direction_init: str = "normal"     # normal (paper) | uniform (authors' code) | constant
  fixed_factor: float = 1.0          # alpha in factor_mode=fixed
  lr_factor: float = 10.0
  lr_direction: float = 0.04
  ref_width: int = 0                 # width the learning rates were tuned at (0: model width)
  seed: int = 42
  max_steps: int = 0                 # stop early (0: epochs * steps per epoch)
  prefix_cache: str = "auto"         # auto | on | off
  prefix_cache_max_bytes: int = 4 << 30
  log_every: int = 10
  checkpoint_every: int = 50

  def __post_init__(self):
    if self.prefix_cache not in ("auto", "on", "off"):
      raise ValueError(f"train.prefix_cache={self.prefix_cache!r}; use 'auto', 'on' or 'off'")
    for name in ("beta", "lam", "fixed_factor", "lr_factor", "lr_direction"):
      value = getattr(self, name)
      if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name}={value!r} must be a finite number >= 0")
    if self.log_every < 1 or self.checkpoint_every < 1:
      raise ValueError(f"train.log_every={self.log_every} and train.checkpoint_every="
                       f"{self.checkpoint_every} must be >= 1")


def schedule_length(step: StepConfig, updates: int) -> int:
  """Steps the learning-rate schedule is laid over. The authors' code counted micro-batches
  while stepping per update, so with accumulation their rate ends near 1 - 1/accum of its
  start instead of 0; `schedule_steps="micro_batches"` reproduces that."""
  return updates * (step.grad_accum_steps if step.schedule_steps == "micro_batches" else 1)

