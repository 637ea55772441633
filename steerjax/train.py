"""Training steering vectors: a pure, jitted step and a resumable loop.

C concepts train together as one stacked SV (`[C]` factors, `[C, D]` directions); each
example carries its concept's index. Factor modes (`FACTOR_MODES`):
  joint   - alpha and v trained together (the paper's method),
  fixed   - alpha frozen at `fixed_factor`, only v trained,
  sampled - alpha drawn per example from `factor_set` (RePS-style), only v trained.
Objectives come from `steerjax.losses.OBJECTIVES`. A run takes two configs: `StepConfig`
(what the compiled step depends on) and `RunConfig` (init, base rates, loop), so sweeps
over beta, lam, learning rates and seeds reuse one compiled step.

With the prefix cache on, the block-`layer` output of every training sequence is computed
once; each step then runs only the blocks after it (the SV never reaches earlier blocks).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from steerjax import checkpoint, losses
from steerjax.train_config import RunConfig, StepConfig, factor_mode, needs_neutral
from steerjax.data.batching import ConceptData, batch_indices, pack, response_window
from steerjax.optim import make_optimizer, scaled_learning_rates
from steerjax.steering import SteerSpec, edit, init_sv, positions_mask, steer

class NonFiniteError(FloatingPointError):
  """The loss or an SV became NaN/inf; the last good checkpoint is kept."""


# --------------------------------------------------------------------------- data on device

def prepare_data(concepts: Sequence[ConceptData], objective: str, pad_id: int):
  """Pack every concept's examples into one set of arrays; `offsets[k]` is where concept k
  starts. Each concept keeps the same number of examples so all share one schedule.
  Every set also gets its response window (`batching.response_window`): the loss takes
  logits only there."""
  n = min(len(c.prompts) for c in concepts)
  if any(len(c.prompts) != n for c in concepts):
    print(f"note: concepts have unequal example counts; using the first {n} of each")
  neutral = needs_neutral(objective)
  if neutral and any(c.neutral is None for c in concepts):
    missing = [c.name for c in concepts if c.neutral is None]
    raise ValueError(f"objective {objective!r} needs neutral responses; missing for {missing}")
  prompts = [p for c in concepts for p in c.prompts[:n]]
  lengths = [len(p) + max(len(r), len(c.neutral[i]) if neutral else 0)
             for c in concepts for i, (p, r) in enumerate(zip(c.prompts[:n], c.responses[:n]))]
  length = -(-max(lengths) // 8) * 8
  data = {"pos": pack(prompts, [r for c in concepts for r in c.responses[:n]], pad_id, length)}
  if neutral:
    data["neg"] = pack(prompts, [y for c in concepts for y in c.neutral[:n]], pad_id, length)
  width = max(int(seq["response"].sum(1).max()) for seq in data.values())
  for seq in data.values():
    seq.update(response_window(seq, width))
  return data, n


def _forward(model, spec: SteerSpec, op: str, params, sv_B, seq, h=None):
  """Steered log-probs [B, R] of the response window's targets in one packed batch `seq`;
  `sv_B` holds one SV per example. With `h` (cached block-`layer` outputs) only later
  blocks run."""
  mask = positions_mask(spec.positions, seq["prompt"], seq["valid"])
  ids = jnp.arange(seq["tokens"].shape[0])
  if h is None:
    return steer(model.apply, dataclasses.replace(spec, op=op))(
        {"params": params}, sv_B, seq["tokens"], mask, concept_ids=ids, valid_BT=seq["valid"],
        logits_at=seq["at"], targets=seq["target"])
  h = edit(h, sv_B, mask, op, ids)
  return model.apply({"params": params}, None, valid_BT=seq["valid"], h_BTD=h,
                     first_layer=spec.layer + 1, logits_at=seq["at"], targets=seq["target"])


@functools.partial(jax.jit, static_argnames=("model", "layer"))
def _site_outputs(model, layer, params, tokens, valid):
  return model.apply({"params": params}, tokens, valid_BT=valid, last_layer=layer + 1, head=False)


@functools.partial(jax.jit, static_argnames=("model",))
def _unsteered_logprobs(model, params, tokens, valid, at, target, target_mask):
  lp = model.apply({"params": params}, tokens, valid_BT=valid, logits_at=at, targets=target)
  return losses.masked_sum(lp, target_mask)[0]


def _in_chunks(fn, arrays: dict, chunk: int):
  n = len(next(iter(arrays.values())))
  parts = [fn(**{k: v[i:i + chunk] for k, v in arrays.items()}) for i in range(0, n, chunk)]
  return jnp.concatenate(parts, 0)


def prefix_cache_bytes(model, data) -> int:
  n_seq = sum(d["tokens"].shape[0] * d["tokens"].shape[1] for d in data.values())
  return n_seq * model.cfg.dim * jnp.dtype(model.dtype).itemsize


def precompute(model, params, spec: SteerSpec, data, step: StepConfig, run: RunConfig,
               log=print):
  """Device arrays for training: packed sequences, unsteered reference log-probs (SimPO/RePS)
  and, when the prefix cache is on, every sequence's block-`layer` output."""
  out = {name: {k: jnp.asarray(v) for k, v in seq.items()} for name, seq in data.items()}
  if needs_neutral(step.objective):
    for name in ("pos", "neg"):
      s = out[name]
      out[name]["ref"] = _in_chunks(
          functools.partial(_unsteered_logprobs, model, params),
          {k: s[k] for k in ("tokens", "valid", "at", "target", "target_mask")}, 64)
  size = prefix_cache_bytes(model, data)
  use = run.prefix_cache == "on" or (
      run.prefix_cache == "auto" and size <= run.prefix_cache_max_bytes)
  if run.prefix_cache == "on" and size > run.prefix_cache_max_bytes:
    raise MemoryError(f"prefix cache needs {size / 2**20:.1f} MiB, over "
                      f"train.prefix_cache_max_bytes={run.prefix_cache_max_bytes}; set "
                      "train.prefix_cache='off' or raise the limit")
  n_examples = next(iter(data.values()))["tokens"].shape[0]
  if use:
    log(f"prefix cache: block-{spec.layer} outputs of {n_examples} examples, "
        f"{size / max(n_examples, 1) / 1024:.1f} KiB per example, {size / 2**20:.2f} MiB total")
    for name, s in out.items():
      s["h"] = _in_chunks(
          lambda tokens, valid: _site_outputs(model, spec.layer, params, tokens, valid),
          {"tokens": s["tokens"], "valid": s["valid"]}, 64)
  else:
    log(f"prefix cache off ({run.prefix_cache}; it would need {size / 2**20:.2f} MiB)")
  return out


def residual_norm(model, params, spec: SteerSpec, arrays) -> float:
  """Mean L2 norm of the block-`layer` output over the training tokens (64 examples at most),
  the scale an edit alpha*v is compared with."""
  pos = arrays["pos"]
  h = pos.get("h")
  if h is None:
    h = _site_outputs(model, spec.layer, params, pos["tokens"][:64], pos["valid"][:64])
  valid = np.asarray(pos["valid"][:h.shape[0]])
  norms = np.linalg.norm(np.asarray(h[:64], np.float32), axis=-1)
  return float(norms[valid[:64]].mean())


# --------------------------------------------------------------------------- the step

def _take(seq, idx):
  return {k: v[idx] for k, v in seq.items()}


def loss_fn(sv, model, spec: SteerSpec, step: StepConfig, groups: int, params, data,
            idx, group, key):
  """Objective of one stacked batch: `idx` [B] example indices, `group` [B] concept index."""
  factor = factor_mode(step.factor_mode).per_example(sv["factor"], group, key, step)
  sv_B = {"factor": factor, "direction": sv["direction"][group]}
  batch = {name: _take(seq, idx) for name, seq in data.items()}

  def logprob(name, op=None):
    seq = batch[name]
    return losses.masked_sum(_forward(model, spec, op or spec.op, params, sv_B, seq,
                                      seq.get("h")), seq["target_mask"])
  return losses.objective(step.objective).loss(logprob, batch, group, groups)


@functools.partial(jax.jit, static_argnames=("model", "spec", "step", "groups", "tx"),
                   donate_argnames=("state",))
def train_step(state, model, spec, step, groups, tx, params, data, idx, group):
  key = jax.random.fold_in(state["rng"], state["step"])
  loss, grads = jax.value_and_grad(loss_fn)(
      state["sv"], model, spec, step, groups, params, data, idx, group, key)
  updates, opt_state = tx.update(grads, state["opt"], state["sv"])
  updates = {k: u * state["lr"][k] for k, u in updates.items()}
  sv = optax.apply_updates(state["sv"], updates)
  metrics = {"loss": loss / groups,  # mean per concept; the gradient uses the sum
             "factor": jnp.mean(jnp.abs(sv["factor"])),
             "direction_norm": jnp.mean(jnp.linalg.norm(sv["direction"], axis=-1)),
             "grad_factor": jnp.linalg.norm(grads["factor"]),
             "grad_direction": jnp.linalg.norm(grads["direction"])}
  return dict(state, sv=sv, opt=opt_state, step=state["step"] + 1), metrics


# --------------------------------------------------------------------------- the loop

@functools.lru_cache(maxsize=32)
def _unit_optimizer(width: int, step: StepConfig, total_steps: int):
  return make_optimizer(
      width, lr_factor=1.0, lr_direction=1.0, total_steps=total_steps,
      train_factor=factor_mode(step.factor_mode).trained, clip_direction=step.clip_direction,
      clip_factor=step.clip_factor, schedule=step.schedule, warmup_steps=step.warmup_steps,
      weight_decay=step.weight_decay)[0]


def optimizer_for(width: int, step: StepConfig, run: RunConfig, total_steps: int):
  """(tx, base learning rates). `tx` runs at unit learning rate and is shared by every run
  with the same StepConfig; the train step scales its updates by the width-scaled base
  rates carried in the state."""
  lr_f, lr_d = scaled_learning_rates(width, run.lr_factor, run.lr_direction,
                                     run.ref_width or None)
  return _unit_optimizer(width, step, total_steps), {"factor": lr_f, "direction": lr_d}


def initial_sv(step: StepConfig, run: RunConfig, width: int, concept_indices: Sequence[int]):
  """One SV per concept, each drawn from a key folded with the concept's global index, so a
  concept gets the same init whether it trains alone or stacked with others."""
  base = jax.random.PRNGKey(run.seed)
  rows = [init_sv(jax.random.fold_in(base, int(c)), width, run.beta, run.lam,
                  run.direction_init) for c in concept_indices]
  sv = {k: jnp.stack([r[k] for r in rows]) for k in ("factor", "direction")}
  sv["factor"] = factor_mode(step.factor_mode).init(sv["factor"], run)
  return sv


def fresh_state(step: StepConfig, run: RunConfig, width: int, concept_indices: Sequence[int],
                total_steps: int):
  """The train state before step 0: SVs, optimizer state, step, RNG."""
  sv = initial_sv(step, run, width, concept_indices)
  tx, lrs = optimizer_for(width, step, run, total_steps)
  return {"sv": sv, "opt": tx.init(sv), "step": jnp.zeros((), jnp.int32),
          "rng": jax.random.PRNGKey(run.seed + 1),
          "lr": {k: jnp.float32(v) for k, v in lrs.items()}}


def _finite(tree) -> bool:
  return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree))


def _fmt_time(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 60}m{seconds % 60:02d}s"


# An edit this many times the residual stream's norm drowns the block output; gradients
# this many logged steps in a row at zero mean the SV no longer learns.
EDIT_WARN_RATIO = 100.0
STALL_WARN_LOGS = 3


class _Health:
  """Warns once when the SV stops learning or its edit dwarfs the residual stream."""

  def __init__(self, residual: float, trains_factor: bool, tag: str, log):
    self.residual, self.trains_factor, self.tag, self.log = residual, trains_factor, tag, log
    self.stalled, self.warned = 0, set()

  def check(self, done: int, metrics: dict, sv):
    grads = metrics["grad_direction"] + (metrics["grad_factor"] if self.trains_factor else 0)
    self.stalled = self.stalled + 1 if grads == 0 else 0
    if self.stalled >= STALL_WARN_LOGS and "stall" not in self.warned:
      self.warned.add("stall")
      self.log(f"{self.tag}WARNING: zero gradients for {self.stalled} progress lines in a row "
               f"(step {done}): the SV has stopped learning. Lower optim.lr_direction / "
               "optim.lr_factor or sv.beta.")
    factor = np.abs(np.asarray(sv["factor"], np.float64))
    direction = np.linalg.norm(np.asarray(sv["direction"], np.float64), axis=-1)
    edit = float(np.max(factor * direction)) if factor.any() else float(np.max(direction))
    if self.residual > 0 and edit > EDIT_WARN_RATIO * self.residual and "edit" not in self.warned:
      self.warned.add("edit")
      self.log(f"{self.tag}WARNING: the edit |alpha|*||v|| = {edit:.3g} at step {done} is "
               f"{edit / self.residual:.3g}x the residual stream's norm ({self.residual:.3g}): "
               "the SV overwrites the block output. Lower optim.lr_direction / optim.lr_factor "
               "or sv.beta / sv.lam.")


def train_concepts(model, params, spec: SteerSpec, concepts: Sequence[ConceptData],
                   concept_indices: Sequence[int], step_cfg: StepConfig, run: RunConfig,
                   workdir: str, log=print, metrics_path: Optional[str] = None, tag: str = "",
                   writer=None, mesh=None, rules=None):
  """Train one stacked SV for `concepts` (resuming from `workdir/checkpoints` if present).

  `params` are taken as placed; with a `mesh` (and logical-axis `rules`, see
  steerjax.sharding) they must already be on it (`sharding.shard_params`), and the example
  store and the stacked SV are sharded over it with explicit step shardings.
  Returns the final stacked SV as numpy arrays {"factor": [C], "direction": [C, D]}.
  """
  groups = len(concepts)
  data, n = prepare_data(concepts, step_cfg.objective, model.cfg.pad_id)
  if step_cfg.batch_size > n:
    raise ValueError(f"train.batch_size={step_cfg.batch_size} exceeds the {n} examples per "
                     "concept")
  per_epoch = n // step_cfg.batch_size
  total = per_epoch * step_cfg.epochs
  if run.max_steps:
    total = min(total, run.max_steps)
  width = model.cfg.dim
  tx, lrs = optimizer_for(width, step_cfg, run, per_epoch * step_cfg.epochs)
  state = fresh_state(step_cfg, run, width, concept_indices, per_epoch * step_cfg.epochs)
  ckpts = checkpoint.RunCheckpoints(os.path.join(workdir, "checkpoints"))
  if ckpts.latest_step() is not None:
    lrs_now = state["lr"]
    state, meta = ckpts.restore(state)
    state["lr"] = lrs_now  # learning rates are settings: the config in force wins
    log(f"{tag}resumed from step {int(state['step'])} ({ckpts.directory})")
  if mesh is not None:  # before the prefix-cache pass, so the model never runs from one device
    from steerjax import sharding
    data = sharding.place_store(data, mesh, rules)
  arrays = precompute(model, params, spec, data, step_cfg, run, log)
  health = _Health(residual_norm(model, params, spec, arrays),
                   factor_mode(step_cfg.factor_mode).trained, tag, log)
  step_fn = functools.partial(train_step, model=model, spec=spec, step=step_cfg, groups=groups,
                              tx=tx)
  if mesh is not None:
    step_fn, state, arrays = sharding.shard_train_step(
        step_fn, mesh, rules, state, params, arrays, groups=groups,
        rows=groups * step_cfg.batch_size)

  # Example index of row b in a stacked batch: concept k's rows come from its own block.
  rows_per_concept = np.repeat(np.arange(groups), step_cfg.batch_size)
  offsets = rows_per_concept * n
  group = jnp.asarray(rows_per_concept, jnp.int32)
  start = int(state["step"])
  last_good = start
  t0 = time.time()
  log(f"{tag}{groups} concept(s), {n} examples each, {total} steps "
      f"(lr factor {lrs['factor']:.4g}, lr direction {lrs['direction']:.4g} at width {width})")
  for step in range(start, total):
    idx = np.tile(batch_indices(n, step_cfg.batch_size, run.seed, step), groups) + offsets
    state, metrics = step_fn(state, params=params, data=arrays, idx=jnp.asarray(idx, jnp.int32),
                             group=group)
    done = step + 1
    if done % run.log_every == 0 or done == total or done == start + 1:
      m = {k: float(v) for k, v in metrics.items()}
      if not (math.isfinite(m["loss"]) and _finite(state["sv"])):
        raise NonFiniteError(
            f"{tag}non-finite loss or SV at step {done} (loss={m['loss']}); the last good "
            f"checkpoint (step {last_good}) is kept in {ckpts.directory}. Lower "
            "optim.lr_factor / optim.lr_direction or sv.beta and resume.")
      elapsed = time.time() - t0
      eta = elapsed / (done - start) * (total - done)
      log(f"{tag}step {done}/{total} loss {m['loss']:.4f} |alpha| {m['factor']:.3f} "
          f"||v|| {m['direction_norm']:.3f} grad(a) {m['grad_factor']:.3g} "
          f"grad(v) {m['grad_direction']:.3g} eta {_fmt_time(eta)}")
      health.check(done, m, state["sv"])
      if metrics_path:
        with open(metrics_path, "a") as f:
          f.write(json.dumps(dict(m, step=done, tag=tag.strip(" :"), elapsed_s=elapsed)) + "\n")
      if writer is not None:
        for k, v in m.items():
          writer.add_scalar(f"{tag.strip(' :') or 'train'}/{k}", v, done)
    if done % run.checkpoint_every == 0 and done < total:
      if not _finite(state["sv"]):
        raise NonFiniteError(f"{tag}non-finite SV at step {done}; the last good checkpoint "
                             f"(step {last_good}) is kept in {ckpts.directory}")
      ckpts.save(done, state, {"step": done, "total": total})
      last_good = done
  if not _finite(state["sv"]):
    raise NonFiniteError(f"{tag}non-finite SV at the end of training; the last good checkpoint "
                         f"(step {last_good}) is kept in {ckpts.directory}")
  return {k: np.asarray(v) for k, v in state["sv"].items()}
