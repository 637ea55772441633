"""How many concepts fit in one train step: the compiled step's own memory analysis.

`train.concepts_per_step=0` picks the largest power of two (up to the number of concepts
and `train.max_concepts_per_step`) whose step, compiled for the real shapes, needs at most
`train.memory_fraction` of the device's memory: parameters, the example store and prefix
cache, the SV state and XLA's temporaries together. Nothing runs on the device but the
compiler. Stacking more concepts changes no SV (a stacked run equals separate runs).
"""

from __future__ import annotations

import functools
import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from steerjax import train
from steerjax.data.batching import ConceptData

quiet = lambda *a, **k: None


def device_bytes(device=None) -> int:
  """Memory of one device: the allocator's limit on GPUs and TPUs, physical memory on CPU."""
  device = device or jax.devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def step_bytes(model, params, spec, step_cfg, run_cfg, concepts: Sequence[ConceptData]) -> int:
  """Peak bytes of one train step stacking `concepts` (arguments + outputs - donated +
  temporaries), from XLA's memory analysis of the compiled step."""
  groups = len(concepts)
  data, n = train.prepare_data(concepts, step_cfg.objective, model.cfg.pad_id)
  total = train.schedule_length(step_cfg, n // step_cfg.batch_size * step_cfg.epochs)
  store = jax.eval_shape(
      lambda p: train.precompute(model, p, spec, data, step_cfg, run_cfg, log=quiet), params)
  state = jax.eval_shape(
      lambda: train.fresh_state(step_cfg, run_cfg, model.cfg.dim, range(groups), total))
  tx, _ = train.optimizer_for(model.cfg.dim, step_cfg, run_cfg, total)
  rows = jax.ShapeDtypeStruct((groups * step_cfg.batch_size,), jnp.int32)
  step = functools.partial(train.train_step, model=model, spec=spec, step=step_cfg,
                           groups=groups, tx=tx)
  mem = jax.jit(lambda s, p, d, i, g: step(s, params=p, data=d, idx=i, group=g)).lower(
      state, params, store, rows, rows).compile().memory_analysis()
  return peak_bytes(mem)


def peak_bytes(mem) -> int:
  """Peak bytes of a compiled program from its memory analysis: arguments and outputs
  (donated buffers counted once) and temporaries."""
  return int(mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
             + mem.temp_size_in_bytes)


def pick_concepts_per_step(model, params, spec, step_cfg, run_cfg,
                           concepts: Sequence[ConceptData], budget: Optional[int] = None,
                           most: int = 64, log=print) -> int:
  """The largest power of two C <= min(len(concepts), most) whose step fits in `budget`
  bytes (default: 90% of the device), measured on the C concepts with the longest examples
  (the packed length follows them). At least 1."""
  budget = int(0.9 * device_bytes()) if budget is None else budget
  by_length = sorted(concepts, key=lambda c: -max(len(p) + len(r) for p, r in
                                                  zip(c.prompts, c.responses)))
  chosen, c = 1, 1
  while c <= min(len(concepts), most):
    need = step_bytes(model, params, spec, step_cfg, run_cfg, by_length[:c])
    log(f"memory: {c} concept(s) per step need {need / 2**30:.2f} GiB of {budget / 2**30:.2f}")
    if need > budget:
      break
    chosen, c = c, c * 2
  return chosen
