"""Config -> model, data and a resumable multi-concept training run (the `train` job)."""

from __future__ import annotations

import json
import os
import re
from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np

from steerjax import checkpoint, sharding
from steerjax.data.batching import ConceptData
from steerjax.models import load, load_tokenizer
from steerjax.steering import SteerSpec
from steerjax.train import TrainOptions, needs_neutral, train_concepts

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def load_model(config):
  """(model, params, tokenizer) from `config.model` and the data root."""
  if config.model.dtype not in DTYPES:
    raise ValueError(f"config.model.dtype={config.model.dtype!r}; use one of {sorted(DTYPES)}")
  root = config.data_root or None
  model, params = load(config.model.path, DTYPES[config.model.dtype], data_root=root)
  if config.model.get("remat"):
    model = model.clone(remat=True)
  tok = load_tokenizer(config.model.tokenizer or config.model.path, data_root=root)
  return model, params, tok


def steer_spec(config) -> SteerSpec:
  return SteerSpec(layer=config.steer.layer, positions=config.steer.positions, op=config.steer.op)


def train_options(config, **overrides) -> TrainOptions:
  """Flatten the sv / optim / train config groups into TrainOptions."""
  sv, opt, tr = config.sv, config.optim, config.train
  fields = dict(
      objective=tr.objective, factor_mode=sv.factor_mode, beta=sv.beta, lam=sv.lam,
      direction_init=sv.init, fixed_factor=sv.fixed_factor, factor_set=tuple(sv.factor_set),
      lr_factor=opt.lr_factor, lr_direction=opt.lr_direction, ref_width=opt.ref_width,
      clip_direction=opt.clip_direction, clip_factor=opt.clip_factor, schedule=opt.schedule,
      warmup_steps=opt.warmup_steps, weight_decay=opt.weight_decay, batch_size=tr.batch_size,
      epochs=tr.epochs, max_steps=tr.max_steps, seed=config.seed, prefix_cache=tr.prefix_cache,
      log_every=tr.log_every, checkpoint_every=tr.checkpoint_every)
  fields.update(overrides)
  return TrainOptions(**fields)


def sv_filename(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".safetensors"


def sv_meta(config, model, spec: SteerSpec, opts: TrainOptions, concept: str, factor) -> dict:
  return {"model": config.model.path, "model_fingerprint": model.cfg.fingerprint(),
          "width": model.cfg.dim, "layer": spec.layer, "op": spec.op,
          "positions": spec.positions, "concept": concept, "factor": float(np.mean(factor)),
          "objective": opts.objective, "factor_mode": opts.factor_mode,
          "hyperparameters": {k: v for k, v in opts.__dict__.items()}}


def _tensorboard(config, workdir):
  if not config.train.tensorboard:
    return None
  try:
    from tensorboardX import SummaryWriter
  except ImportError as e:
    raise ImportError("config.train.tensorboard=True needs tensorboardX: "
                      "pip install 'steerjax[tensorboard]'") from e
  return SummaryWriter(os.path.join(workdir, "tensorboard"))


def train(config, workdir: str, model_bundle=None, concepts: Optional[Sequence[ConceptData]] = None,
          opts: Optional[TrainOptions] = None, spec: Optional[SteerSpec] = None, log=print,
          tag: str = "", concept_ids: Optional[Sequence[int]] = None):
  """Train one SV per concept; `concepts_per_step` concepts share each jitted step.

  SVs go to `workdir/svs/<concept>.safetensors`, metrics to `workdir/metrics.jsonl`.
  Finished concepts are skipped on a rerun and a killed group resumes from its checkpoint.
  `concept_ids` (one global id per concept) seed each SV's init and name the group folders,
  so a run over a different concept range never reuses another group's checkpoint.
  Returns {concept: {"factor", "direction"}}.
  """
  os.makedirs(workdir, exist_ok=True)
  mesh, rules = sharding.from_config(config)  # (None, None) unless config.mesh.shape is set
  model, params, tok = model_bundle or load_model(config)
  if mesh is not None:
    params = sharding.shard_params(params, sharding.param_shardings(model, mesh, rules))
  spec = spec or steer_spec(config)
  opts = opts or train_options(config)
  if concepts is None:
    from steerjax.data.concepts import training_concepts
    concepts = training_concepts(config, model, params, tok,
                                 neutral=needs_neutral(opts.objective), log=log)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2) if hasattr(config, "to_json_best_effort")
            else json.dumps(dict(config), indent=2, default=str))
  per_step = max(1, config.train.concepts_per_step)
  writer = _tensorboard(config, workdir)
  ids = list(range(len(concepts))) if concept_ids is None else [int(i) for i in concept_ids]
  if len(ids) != len(concepts):
    raise ValueError(f"{len(ids)} concept_ids for {len(concepts)} concepts")
  svs = {}
  for start in range(0, len(concepts), per_step):
    group = list(concepts[start:start + per_step])
    group_ids = ids[start:start + len(group)]
    folder = f"{start:04d}" if concept_ids is None else f"{group_ids[0]:04d}-{group_ids[-1]:04d}"
    paths = [os.path.join(workdir, "svs", sv_filename(c.name)) for c in group]
    if all(os.path.exists(p) for p in paths):
      log(f"{tag}skipping {[c.name for c in group]}: SVs already in {workdir}/svs")
      for c, p in zip(group, paths):
        svs[c.name] = checkpoint.load_sv(p, model.cfg)[0]
      continue
    label = f"{tag}[{', '.join(c.name for c in group)}] "
    stacked = train_concepts(
        model, params, spec, group, group_ids, opts,
        os.path.join(workdir, "groups", folder), log=log,
        metrics_path=os.path.join(workdir, "metrics.jsonl"), tag=label, writer=writer,
        mesh=mesh, rules=rules)
    for k, (c, p) in enumerate(zip(group, paths)):
      sv = {"factor": stacked["factor"][k], "direction": stacked["direction"][k]}
      checkpoint.save_sv(p, sv, sv_meta(config, model, spec, opts, c.name, sv["factor"]))
      svs[c.name] = sv
  if writer is not None:
    writer.close()
  log(f"{tag}{len(svs)} SV(s) in {os.path.join(workdir, 'svs')}")
  return svs
