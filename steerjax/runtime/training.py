"""One method's SVs over many concepts: training (resumable, stacked concepts per step),
the model's own neutral responses, SV files, and stacking SVs for generation."""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Dict, List, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from steerjax import checkpoint, paths
from steerjax.data.batching import ConceptData
from steerjax.generate import generate_many
from steerjax.train import train_concepts


def with_model_neutral(ctx, concepts: Sequence[ConceptData],
                       batch_size: int = 32) -> List[ConceptData]:
  """`concepts` with a neutral y wherever one is missing: the unsteered model's greedy
  continuation of each x, as long as its y_c at most (EOS not kept). Made once per concept
  and job, in fixed-size batches so the compiled programs are reused."""
  out = []
  for c in concepts:
    if c.neutral is None:
      key = ("neutral", c.name, tuple(map(tuple, c.prompts)), tuple(map(len, c.responses)))
      if key not in ctx.memo:
        ctx.memo[key] = generate_many(
            ctx.model, ctx.params, c.prompts, max_new_tokens=[len(y) for y in c.responses],
            batch_size=batch_size, fixed_batch=True, temperature=0.0)
      c = dataclasses.replace(c, neutral=ctx.memo[key])
    out.append(c)
  return out


def sv_filename(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".safetensors"


def sv_meta(ctx, method, concept: str, factor) -> dict:
  spec = method.spec
  return {"model": ctx.config.model.path, "model_fingerprint": ctx.model.cfg.fingerprint(),
          "width": ctx.model.cfg.dim, "layer": spec.layer, "op": spec.op,
          "positions": spec.positions, "concept": concept, "factor": float(np.mean(factor)),
          "objective": method.step.objective, "factor_mode": method.step.factor_mode,
          "hyperparameters": {**dataclasses.asdict(method.step),
                              **dataclasses.asdict(method.loop)}}


def _tensorboard(config, workdir):
  if not config.train.tensorboard:
    return None
  try:
    from tensorboardX import SummaryWriter
  except ImportError as e:
    raise ImportError("config.train.tensorboard=True needs tensorboardX: "
                      "pip install 'steerjax[tensorboard]'") from e
  return SummaryWriter(os.path.join(workdir, "tensorboard"))


def write_config(config, workdir: str):
  paths.write_atomic(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))


def train_svs(ctx, method, concepts: Sequence[ConceptData], workdir: str,
              concept_ids: Optional[Sequence[int]] = None, tag: str = "",
              row_methods: Optional[Sequence] = None) -> Dict[str, dict]:
  """Train one SV per concept; `train.concepts_per_step` concepts share each jitted step.

  SVs go to `workdir/svs/<concept>.safetensors`, metrics to `workdir/metrics.jsonl`.
  Finished concepts are skipped on a rerun and a killed group resumes from its checkpoint.
  `concept_ids` (one global id per concept) seed each SV's init and name the group folders,
  so a run over a different concept range never reuses another group's checkpoint.
  `row_methods` (one per concept, sharing `method`'s spec and step) give each row its own
  init sizes and rates, as a grid search stacks its points; groups are then named by
  their rows. Returns {concept: {"factor", "direction"}}.
  """
  config, log = ctx.config, ctx.log
  os.makedirs(workdir, exist_ok=True)
  write_config(config, workdir)
  per_step = config.train.concepts_per_step
  if per_step <= 0:   # as many as the device holds
    from steerjax import memory
    per_step = memory.pick_concepts_per_step(
        ctx.model, ctx.params, method.spec, method.step, method.loop, concepts,
        budget=int(config.train.memory_fraction * memory.device_bytes()),
        most=config.train.max_concepts_per_step, log=log)
    log(f"{tag}{per_step} concept(s) per step (memory)")
  writer = _tensorboard(config, workdir)
  ids = list(range(len(concepts))) if concept_ids is None else [int(i) for i in concept_ids]
  if len(ids) != len(concepts):
    raise ValueError(f"{len(ids)} concept_ids for {len(concepts)} concepts")
  svs = {}
  for start in range(0, len(concepts), per_step):
    group = list(concepts[start:start + per_step])
    group_ids = ids[start:start + len(group)]
    rows = None if row_methods is None else list(row_methods[start:start + len(group)])
    folder = (f"{start:04d}" if concept_ids is None or rows is not None
              else f"{group_ids[0]:04d}-{group_ids[-1]:04d}")
    files = [os.path.join(workdir, "svs", sv_filename(c.name)) for c in group]
    if all(os.path.exists(p) for p in files):
      log(f"{tag}skipping {[c.name for c in group]}: SVs already in {workdir}/svs")
      for c, p in zip(group, files):
        svs[c.name] = checkpoint.load_sv(p, ctx.model.cfg)[0]
      continue
    label = (f"{tag}[{', '.join(c.name for c in group)}] " if rows is None
             else f"{tag}rows {start}..{start + len(group) - 1} ")
    stacked = train_concepts(
        ctx.model, ctx.params, method.spec, group, group_ids, method.step, method.loop,
        os.path.join(workdir, "groups", folder), log=log,
        metrics_path=os.path.join(workdir, "metrics.jsonl"), tag=label, writer=writer,
        mesh=ctx.mesh, rules=ctx.rules, row_loops=None if rows is None else [m.loop for m in rows])
    for k, (c, p) in enumerate(zip(group, files)):
      sv = {"factor": stacked["factor"][k], "direction": stacked["direction"][k]}
      checkpoint.save_sv(p, sv, sv_meta(ctx, rows[k] if rows else method, c.name, sv["factor"]))
      svs[c.name] = sv
  if writer is not None:
    writer.close()
  log(f"{tag}{len(svs)} SV(s) in {os.path.join(workdir, 'svs')}")
  return svs


def stacked_sv(names: Sequence[str], svs: Dict[str, dict], grid: Optional[tuple],
               capacity: int = 0):
  """(stacked SV with one row per (concept, factor), {(name, factor): row}) for steering
  many concepts in one generation batch; grid None keeps each SV's learned factor. Zero
  rows fill it up to `capacity`, so a short last chunk reuses the compiled programs."""
  factors, directions, index = [], [], {}
  for name in names:
    for g in (grid or (None,)):
      index[(name, g)] = len(factors)
      factors.append(float(np.asarray(svs[name]["factor"])) if g is None else g)
      directions.append(np.asarray(svs[name]["direction"], np.float32))
  fill = max(0, capacity - len(factors))
  factors += [0.0] * fill
  directions += [np.zeros_like(directions[0])] * fill
  return {"factor": jnp.asarray(factors, jnp.float32),
          "direction": jnp.asarray(np.stack(directions), jnp.float32)}, index
