"""Training steering vectors: a pure, jitted step and a resumable loop.

C concepts train together as one stacked SV (`[C]` factors, `[C, D]` directions); each
example carries its concept's index. Factor modes (`FACTOR_MODES`):
  joint   - alpha and v trained together (the paper's method),
  fixed   - alpha frozen at `fixed_factor`, only v trained,
  sampled - alpha drawn per example from `factor_set` (RePS-style), only v trained.
Objectives come from `steerjax.losses.OBJECTIVES`. `StepConfig.bias` adds AxBench's learned
bias b to the SV (trained at the direction's rate) and `StepConfig.dropout` its dropout on
the added v, a mask per sequence and op; `SteerSpec.train_positions` lets training steer
other positions than inference. A run takes two configs: `StepConfig`
(what the compiled step depends on) and `LoopConfig` (init, base rates, loop), so sweeps
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
import warnings
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from steerjax import checkpoint, losses
from steerjax.data.batching import ConceptData, batch_indices, pack, response_window
from steerjax.health import Health, residual_norm
from steerjax.optim import make_optimizer, scaled_learning_rates
from steerjax.steering import OPS, SteerSpec, edit, init_sv, positions_mask, steer
from steerjax.train_config import LoopConfig, StepConfig, factor_mode, schedule_length

# SV leaf -> the learning rate it takes: the bias moves at the direction's rate (AxBench's
# one AdamW rate for the whole intervention).
LR_OF = {"bias": "direction"}


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
    warnings.warn(f"concepts have unequal example counts; using the first {n} of each",
                  stacklevel=2)
  neutral = losses.objective(objective).needs_neutral
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
    seq.update(response_window(seq, width), length=seq["valid"].sum(1).astype(np.float32))
  return data, n


def _forward(model, spec: SteerSpec, op: str, params, sv_B, seq, h=None):
  """Steered log-probs [B, R] of the response window's targets in one packed batch `seq`;
  `sv_B` holds one SV per example. With `h` (cached block-`layer` outputs) only later
  blocks run."""
  mask = positions_mask(spec.training_positions, seq["prompt"], seq["valid"])
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


def precompute(model, params, spec: SteerSpec, data, step: StepConfig, loop: LoopConfig,
               log=print):
  """Device arrays for training: packed sequences, unsteered reference log-probs (SimPO/RePS)
  and, when the prefix cache is on, every sequence's block-`layer` output."""
  out = {name: {k: jnp.asarray(v) for k, v in seq.items()} for name, seq in data.items()}
  if losses.objective(step.objective).needs_neutral:
    for name in ("pos", "neg"):
      s = out[name]
      out[name]["ref"] = _in_chunks(
          functools.partial(_unsteered_logprobs, model, params),
          {k: s[k] for k in ("tokens", "valid", "at", "target", "target_mask")}, 64)
  size = prefix_cache_bytes(model, data)
  use = loop.prefix_cache == "on" or (
      loop.prefix_cache == "auto" and size <= loop.prefix_cache_max_bytes)
  if loop.prefix_cache == "on" and size > loop.prefix_cache_max_bytes:
    raise MemoryError(f"prefix cache needs {size / 2**20:.1f} MiB, over "
                      f"train.prefix_cache_max_bytes={loop.prefix_cache_max_bytes}; set "
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
    log(f"prefix cache off ({loop.prefix_cache}; it would need {size / 2**20:.2f} MiB)")
  return out


# --------------------------------------------------------------------------- the step

def _take(seq, idx):
  return {k: v[idx] for k, v in seq.items()}


def _example_svs(sv, step: StepConfig, group, key, name: str):
  """One SV per example for the `name` sequences; with an objective's independent factors
  the neutral sequences draw their own."""
  if name == "neg" and losses.objective(step.objective).independent_factors:
    key = jax.random.fold_in(key, 1)
  factor = factor_mode(step.factor_mode).per_example(sv["factor"], group, key, step)
  out = {"factor": factor, "direction": sv["direction"][group]}
  if "bias" in sv:
    out["bias"] = sv["bias"][group]
  return out


_READ_NAMES = ("pos", "neg")


def _with_dropout(sv_B, step: StepConfig, key, name: str, op: str):
  """`sv_B` with a dropout mask on its added vector (`keep`: 0 or 1 / (1 - p) per example
  and dimension), drawn anew for every sequence and op, as AxBench drops out each
  sequence's v in training; unchanged without dropout."""
  if not step.dropout:
    return sv_B
  key = jax.random.fold_in(jax.random.fold_in(key, 1000 + _READ_NAMES.index(name)),
                           list(OPS).index(op))
  kept = jax.random.bernoulli(key, 1.0 - step.dropout, sv_B["direction"].shape)
  return dict(sv_B, keep=kept.astype(jnp.float32) / (1.0 - step.dropout))


def loss_fn(sv, model, spec: SteerSpec, step: StepConfig, groups: int, params, data,
            idx, group, key):
  """Objective of one stacked batch: `idx` [B] example indices, `group` [B] concept index."""
  batch = {name: _take(seq, idx) for name, seq in data.items()}
  svs = {name: _example_svs(sv, step, group, key, name) for name in data}
  if not losses.objective(step.objective).independent_factors:
    svs = dict.fromkeys(data, svs["pos"])

  def logprob(name, op=None):
    op = op or spec.op
    seq, sv_B = batch[name], _with_dropout(svs[name], step, key, name, op)
    return losses.masked_sum(_forward(model, spec, op, params, sv_B, seq, seq.get("h")),
                             seq["target_mask"])
  return losses.objective(step.objective).loss(logprob, batch, group, groups)


def _reads(step: StepConfig, spec: SteerSpec) -> list:
  """The (sequence, op) pairs the objective asks `logprob` for, found by calling it on
  one-example stand-ins."""
  asked, one = [], jnp.ones((1,))
  stub = lambda name, op=None: asked.append((name, op or spec.op)) or (one, one)
  stand_in = {"ref": one, "length": one}
  losses.objective(step.objective).loss(stub, {"pos": stand_in, "neg": stand_in},
                                        jnp.zeros((1,), jnp.int32), 1)
  return list(dict.fromkeys(asked))


def accumulated_loss_and_grad(sv, model, spec, step: StepConfig, groups: int, params, data,
                              idx, group, key):
  """`jax.value_and_grad(loss_fn)` over `step.grad_accum_steps` micro-batches of the rows,
  exactly: every micro-batch's per-example log-probs are computed first (forward only),
  the objective's gradient with respect to them is taken on the whole batch, and each
  micro-batch is then back-propagated with its part of that gradient, one at a time."""
  k = step.grad_accum_steps
  m = idx.shape[0] // k
  reads = _reads(step, spec)

  def chunk_logprobs(sv, c):
    rows = lambda x: jax.lax.dynamic_slice_in_dim(x, c * m, m)
    out = {}
    for name, op in reads:
      sv_B = jax.tree.map(rows, _with_dropout(_example_svs(sv, step, group, key, name), step,
                                              key, name, op))
      seq = _take(data[name], rows(idx))
      out[(name, op)] = losses.masked_sum(
          _forward(model, spec, op, params, sv_B, seq, seq.get("h")), seq["target_mask"])
    return out

  lps = jax.lax.map(lambda c: chunk_logprobs(sv, c), jnp.arange(k))
  flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), lps)
  sums = {read: lp for read, (lp, _) in flat.items()}
  refs = {name: {k: seq[k][idx] for k in ("ref", "length") if k in seq}
          for name, seq in data.items()}

  def objective(sums):
    logprob = lambda name, op=None: (sums[(name, op or spec.op)], flat[(name, op or spec.op)][1])
    return losses.objective(step.objective).loss(logprob, refs, group, groups)
  loss, d_sums = jax.value_and_grad(objective)(sums)

  def backward(grads, c):
    _, vjp = jax.vjp(lambda sv: {read: lp for read, (lp, _) in chunk_logprobs(sv, c).items()},
                     sv)
    cotangent = {read: jax.lax.dynamic_slice_in_dim(d, c * m, m) for read, d in d_sums.items()}
    return jax.tree.map(jnp.add, grads, vjp(cotangent)[0]), None
  grads, _ = jax.lax.scan(backward, jax.tree.map(jnp.zeros_like, sv), jnp.arange(k))
  return loss, grads


@functools.partial(jax.jit, static_argnames=("model", "spec", "step", "groups", "tx"),
                   donate_argnames=("state",))
def train_step(state, model, spec, step, groups, tx, params, data, idx, group):
  key = jax.random.fold_in(state["rng"], state["step"])
  grad_fn = (jax.value_and_grad(loss_fn) if step.grad_accum_steps == 1
             else accumulated_loss_and_grad)
  loss, grads = grad_fn(state["sv"], model, spec, step, groups, params, data, idx, group, key)
  updates, opt_state = tx.update(grads, state["opt"], state["sv"])
  updates = {k: _scaled(u, state["lr"][LR_OF.get(k, k)]) for k, u in updates.items()}
  sv = optax.apply_updates(state["sv"], updates)
  if step.param_dtype == "bfloat16":   # emulate SV parameters stored in bf16
    sv = jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32), sv)
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


def optimizer_for(width: int, step: StepConfig, loop: LoopConfig, total_steps: int):
  """(tx, base learning rates). `tx` runs at unit learning rate and is shared by every run
  with the same StepConfig; the train step scales its updates by the width-scaled base
  rates carried in the state."""
  lr_f, lr_d = scaled_learning_rates(width, loop.lr_factor, loop.lr_direction,
                                     loop.ref_width or None)
  return _unit_optimizer(width, step, total_steps), {"factor": lr_f, "direction": lr_d}


def initial_sv(step: StepConfig, loop: LoopConfig, width: int, concept_indices: Sequence[int],
               row_loops: Optional[Sequence[LoopConfig]] = None):
  """One SV per concept, each drawn from a key folded with the concept's global index, so a
  concept gets the same init whether it trains alone or stacked with others. `row_loops`
  gives each row its own init sizes (a grid search stacking its points)."""
  base = jax.random.key(loop.seed)
  row_loops = row_loops or [loop] * len(concept_indices)
  rows = []
  for c, r in zip(concept_indices, row_loops):
    sv = init_sv(jax.random.fold_in(base, int(c)), width, r.beta, r.lam, r.direction_init)
    rows.append(dict(sv, factor=factor_mode(step.factor_mode).init(sv["factor"], r)))
  sv = {k: jnp.stack([r[k] for r in rows]) for k in ("factor", "direction")}
  if step.bias:
    sv["bias"] = jnp.zeros_like(sv["factor"])   # AxBench starts it at 0
  if step.param_dtype == "bfloat16":
    sv = jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32), sv)
  return sv


def row_learning_rates(width: int, step: StepConfig, loop: LoopConfig, total_steps: int,
                       row_loops: Optional[Sequence[LoopConfig]] = None) -> dict:
  """{"factor", "direction"}: the width-scaled base rates, one per row with `row_loops`."""
  if not row_loops:
    return {k: jnp.float32(v) for k, v in optimizer_for(width, step, loop, total_steps)[1].items()}
  rates = [optimizer_for(width, step, r, total_steps)[1] for r in row_loops]
  return {k: jnp.asarray([r[k] for r in rates], jnp.float32) for k in ("factor", "direction")}


def fresh_state(step: StepConfig, loop: LoopConfig, width: int, concept_indices: Sequence[int],
                total_steps: int, row_loops: Optional[Sequence[LoopConfig]] = None):
  """The train state before step 0: SVs, optimizer state, step, RNG, base rates."""
  sv = initial_sv(step, loop, width, concept_indices, row_loops)
  tx, _ = optimizer_for(width, step, loop, total_steps)
  return {"sv": sv, "opt": tx.init(sv), "step": jnp.zeros((), jnp.int32),
          "rng": jax.random.key_data(jax.random.key(loop.seed + 1)),  # raw: Orbax saves it
          "lr": row_learning_rates(width, step, loop, total_steps, row_loops)}


def _scaled(update, lr):
  """`update` times its rate: one scalar, or one per stacked row."""
  if jnp.ndim(lr) == 0:
    return update * lr
  return update * jnp.reshape(lr, jnp.shape(lr) + (1,) * (update.ndim - jnp.ndim(lr)))


def _finite(tree) -> bool:
  return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree))


def _rates(lr) -> str:
  lr = np.asarray(lr)
  return f"{float(lr):.4g}" if lr.ndim == 0 else f"{lr.min():.4g}..{lr.max():.4g}"


def _fmt_time(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 60}m{seconds % 60:02d}s"


def train_concepts(model, params, spec: SteerSpec, concepts: Sequence[ConceptData],
                   concept_indices: Sequence[int], step_cfg: StepConfig, loop: LoopConfig,
                   workdir: str, log=print, metrics_path: Optional[str] = None, tag: str = "",
                   writer=None, mesh=None, rules=None,
                   row_loops: Optional[Sequence[LoopConfig]] = None):
  """Train one stacked SV for `concepts` (resuming from `workdir/checkpoints` if present).

  `params` are taken as placed; with a `mesh` (and logical-axis `rules`, see
  steerjax.sharding) they must already be on it (`sharding.shard_params`), and the example
  store and the stacked SV are sharded over it with explicit step shardings.
  `row_loops` (one LoopConfig per concept) give each row its own init sizes and rates; the
  seed, loop and checkpoints stay `loop`'s. Returns the final stacked SV as numpy arrays
  {"factor": [C], "direction": [C, D]}.
  """
  groups = len(concepts)
  if row_loops is not None and len(row_loops) != groups:
    raise ValueError(f"{len(row_loops)} row_loops for {groups} concepts")
  data, n = prepare_data(concepts, step_cfg.objective, model.cfg.pad_id)
  if step_cfg.batch_size > n:
    raise ValueError(f"train.batch_size={step_cfg.batch_size} exceeds the {n} examples per "
                     "concept")
  per_epoch = n // step_cfg.batch_size
  total = per_epoch * step_cfg.epochs
  if loop.max_steps:
    total = min(total, loop.max_steps)
  width = model.cfg.dim
  schedule = schedule_length(step_cfg, per_epoch * step_cfg.epochs)
  tx, _ = optimizer_for(width, step_cfg, loop, schedule)
  state = fresh_state(step_cfg, loop, width, concept_indices, schedule, row_loops)
  lrs = {k: np.asarray(v) for k, v in state["lr"].items()}
  ckpts = checkpoint.RunCheckpoints(os.path.join(workdir, "checkpoints"))
  if ckpts.latest_step() is not None:
    lrs_now = state["lr"]
    state, meta = ckpts.restore(state)
    state["lr"] = lrs_now  # learning rates are settings: the config in force wins
    log(f"{tag}resumed from step {int(state['step'])} ({ckpts.directory})")
  if mesh is not None:  # before the prefix-cache pass, so the model never runs from one device
    from steerjax import sharding
    data = sharding.place_store(data, mesh, rules)
  arrays = precompute(model, params, spec, data, step_cfg, loop, log)
  health = Health(residual_norm(model, params, spec, arrays, _site_outputs),
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
      f"(lr factor {_rates(lrs['factor'])}, lr direction {_rates(lrs['direction'])} at width "
      f"{width})")
  for update in range(start, total):
    idx = np.tile(batch_indices(n, step_cfg.batch_size, loop.seed, update), groups) + offsets
    state, metrics = step_fn(state, params=params, data=arrays, idx=jnp.asarray(idx, jnp.int32),
                             group=group)
    done = update + 1
    if done % loop.log_every == 0 or done == total or done == start + 1:
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
    if done % loop.checkpoint_every == 0 and done < total:
      if not _finite(state["sv"]):
        raise NonFiniteError(f"{tag}non-finite SV at step {done}; the last good checkpoint "
                             f"(step {last_good}) is kept in {ckpts.directory}")
      ckpts.save(done, state, {"step": done, "total": total})
      last_good = done
  if not _finite(state["sv"]):
    raise NonFiniteError(f"{tag}non-finite SV at the end of training; the last good checkpoint "
                         f"(step {last_good}) is kept in {ckpts.directory}")
  return {k: np.asarray(v) for k, v in state["sv"].items()}
