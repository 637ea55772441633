"""Training steering vectors: a pure, jitted step and a resumable loop.

C concepts train together as one stacked SV (`[C]` factors, `[C, D]` directions); each
example carries its concept's index. Factor modes:
  joint   - alpha and v trained together (the paper's method),
  fixed   - alpha frozen at `fixed_factor`, only v trained,
  sampled - alpha drawn per example from `factor_set` (RePS-style), only v trained.

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
from steerjax.data.batching import ConceptData, batch_indices, pack, response_window
from steerjax.optim import make_optimizer, scaled_learning_rates
from steerjax.steering import SteerSpec, edit, init_sv, positions_mask, steer

FACTOR_MODES = ("joint", "fixed", "sampled")


class NonFiniteError(FloatingPointError):
  """The loss or an SV became NaN/inf; the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class TrainOptions:
  """Everything that shapes one training run of a group of concepts."""
  objective: str = "lang"            # lang | simpo | reps
  factor_mode: str = "joint"         # joint | fixed | sampled
  beta: float = 4.0                  # factor init alpha0 = beta * sqrt(D)
  lam: float = 8.0                   # direction init size
  direction_init: str = "normal"     # normal (paper) | uniform (authors' code)
  fixed_factor: float = 1.0
  factor_set: tuple = tuple(range(2, 21, 2))
  lr_factor: float = 10.0
  lr_direction: float = 0.04
  ref_width: int = 0                 # width the learning rates were tuned at (0: model width)
  clip_direction: float = 1.0
  clip_factor: float = 0.0
  schedule: str = "linear"
  warmup_steps: int = 0
  weight_decay: float = 0.0
  batch_size: int = 12
  epochs: int = 12
  max_steps: int = 0                 # stop early (0: epochs * steps per epoch)
  seed: int = 42
  prefix_cache: str = "auto"         # auto | on | off
  prefix_cache_max_bytes: int = 4 << 30
  log_every: int = 10
  checkpoint_every: int = 50

  def __post_init__(self):
    if self.objective not in losses.OBJECTIVES:
      raise ValueError(f"train.objective={self.objective!r}; expected one of {losses.OBJECTIVES}")
    if self.factor_mode not in FACTOR_MODES:
      raise ValueError(f"train.factor_mode={self.factor_mode!r}; expected one of {FACTOR_MODES}")
    if self.prefix_cache not in ("auto", "on", "off"):
      raise ValueError(f"train.prefix_cache={self.prefix_cache!r}; use 'auto', 'on' or 'off'")
    if self.batch_size < 1 or self.epochs < 1:
      raise ValueError(f"train.batch_size={self.batch_size} and train.epochs={self.epochs} "
                       "must be >= 1")


def needs_neutral(objective: str) -> bool:
  return objective in ("simpo", "reps")


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


def precompute(model, params, spec: SteerSpec, data, opts: TrainOptions, log=print):
  """Device arrays for training: packed sequences, unsteered reference log-probs (SimPO/RePS)
  and, when the prefix cache is on, every sequence's block-`layer` output."""
  out = {name: {k: jnp.asarray(v) for k, v in seq.items()} for name, seq in data.items()}
  if needs_neutral(opts.objective):
    for name in ("pos", "neg"):
      s = out[name]
      out[name]["ref"] = _in_chunks(
          functools.partial(_unsteered_logprobs, model, params),
          {k: s[k] for k in ("tokens", "valid", "at", "target", "target_mask")}, 64)
  size = prefix_cache_bytes(model, data)
  use = opts.prefix_cache == "on" or (
      opts.prefix_cache == "auto" and size <= opts.prefix_cache_max_bytes)
  if opts.prefix_cache == "on" and size > opts.prefix_cache_max_bytes:
    raise MemoryError(f"prefix cache needs {size / 2**20:.1f} MiB, over "
                      f"train.prefix_cache_max_bytes={opts.prefix_cache_max_bytes}; set "
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
    log(f"prefix cache off ({opts.prefix_cache}; it would need {size / 2**20:.2f} MiB)")
  return out


# --------------------------------------------------------------------------- the step

def _take(seq, idx):
  return {k: v[idx] for k, v in seq.items()}


def loss_fn(sv, model, spec: SteerSpec, opts: TrainOptions, groups: int, params, data,
            idx, group, key):
  """Objective of one stacked batch: `idx` [B] example indices, `group` [B] concept index."""
  factor = sv["factor"][group]
  if opts.factor_mode == "sampled":
    choices = jnp.asarray(opts.factor_set, jnp.float32)
    factor = choices[jax.random.randint(key, group.shape, 0, len(opts.factor_set))]
  sv_B = {"factor": factor, "direction": sv["direction"][group]}
  pos = _take(data["pos"], idx)
  lp = lambda seq, op: losses.masked_sum(
      _forward(model, spec, op, params, sv_B, seq, seq.get("h")), seq["target_mask"])
  if opts.objective == "lang":
    lp_pos, n_pos = lp(pos, spec.op)
    return losses.lang(lp_pos, n_pos, group, groups)
  neg = _take(data["neg"], idx)
  args = (lp(pos, spec.op), lp(neg, spec.op))
  if opts.objective == "simpo":
    return losses.simpo(*args, pos["ref"], neg["ref"], group, groups)
  return losses.reps(*args, lp(pos, "null"), lp(neg, "null"), pos["ref"], neg["ref"],
                     group, groups)


@functools.partial(jax.jit, static_argnames=("model", "spec", "opts", "groups", "tx"),
                   donate_argnames=("state",))
def train_step(state, model, spec, opts, groups, tx, params, data, idx, group):
  key = jax.random.fold_in(state["rng"], state["step"])
  loss, grads = jax.value_and_grad(loss_fn)(
      state["sv"], model, spec, opts, groups, params, data, idx, group, key)
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

def step_options(opts: TrainOptions) -> TrainOptions:
  """`opts` with the values that only shape the initial state (init sizes, base learning
  rates, seed) and the loop (logging, checkpoints) set to constants: the compiled step
  depends on the rest, so sweeps over beta, lam, learning rates and seeds compile once."""
  return dataclasses.replace(
      opts, beta=0.0, lam=0.0, direction_init="normal", fixed_factor=0.0, lr_factor=1.0,
      lr_direction=1.0, ref_width=0, seed=0, max_steps=0, log_every=1, checkpoint_every=1,
      prefix_cache="auto")


@functools.lru_cache(maxsize=32)
def _unit_optimizer(width: int, opts: TrainOptions, total_steps: int):
  return make_optimizer(
      width, lr_factor=1.0, lr_direction=1.0, total_steps=total_steps,
      train_factor=opts.factor_mode == "joint", clip_direction=opts.clip_direction,
      clip_factor=opts.clip_factor, schedule=opts.schedule, warmup_steps=opts.warmup_steps,
      weight_decay=opts.weight_decay)[0]


def optimizer_for(width: int, opts: TrainOptions, total_steps: int):
  """(tx, base learning rates). `tx` runs at unit learning rate and is shared by every run
  with the same `step_options`; the train step scales its updates by the width-scaled base
  rates carried in the state."""
  lr_f, lr_d = scaled_learning_rates(width, opts.lr_factor, opts.lr_direction,
                                     opts.ref_width or None)
  return _unit_optimizer(width, step_options(opts), total_steps), {"factor": lr_f,
                                                                    "direction": lr_d}


def initial_sv(opts: TrainOptions, width: int, concept_indices: Sequence[int]):
  """One SV per concept, each drawn from a key folded with the concept's global index, so a
  concept gets the same init whether it trains alone or stacked with others."""
  base = jax.random.PRNGKey(opts.seed)
  rows = [init_sv(jax.random.fold_in(base, int(c)), width, opts.beta, opts.lam,
                  opts.direction_init) for c in concept_indices]
  sv = {k: jnp.stack([r[k] for r in rows]) for k in ("factor", "direction")}
  if opts.factor_mode == "fixed":
    sv["factor"] = jnp.full_like(sv["factor"], opts.fixed_factor)
  elif opts.factor_mode == "sampled":
    sv["factor"] = jnp.zeros_like(sv["factor"])  # unused: factors come from factor_set
  return sv


def fresh_state(opts: TrainOptions, width: int, concept_indices: Sequence[int],
                total_steps: int):
  """The train state before step 0: SVs, optimizer state, step, RNG."""
  sv = initial_sv(opts, width, concept_indices)
  tx, lrs = optimizer_for(width, opts, total_steps)
  return {"sv": sv, "opt": tx.init(sv), "step": jnp.zeros((), jnp.int32),
          "rng": jax.random.PRNGKey(opts.seed + 1),
          "lr": {k: jnp.float32(v) for k, v in lrs.items()}}


def _finite(tree) -> bool:
  return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree))


def _fmt_time(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 60}m{seconds % 60:02d}s"


def train_concepts(model, params, spec: SteerSpec, concepts: Sequence[ConceptData],
                   concept_indices: Sequence[int], opts: TrainOptions, workdir: str,
                   log=print, metrics_path: Optional[str] = None, tag: str = "",
                   writer=None, mesh=None, rules=None):
  """Train one stacked SV for `concepts` (resuming from `workdir/checkpoints` if present).

  With a `mesh` (and logical-axis `rules`, see steerjax.sharding) the frozen params, the
  example store and the stacked SV are sharded over it and the step has explicit shardings.
  Returns the final stacked SV as numpy arrays {"factor": [C], "direction": [C, D]}.
  """
  groups = len(concepts)
  data, n = prepare_data(concepts, opts.objective, model.cfg.pad_id)
  if opts.batch_size > n:
    raise ValueError(f"train.batch_size={opts.batch_size} exceeds the {n} examples per concept")
  per_epoch = n // opts.batch_size
  total = per_epoch * opts.epochs
  if opts.max_steps:
    total = min(total, opts.max_steps)
  width = model.cfg.dim
  tx, lrs = optimizer_for(width, opts, per_epoch * opts.epochs)
  step_opts = step_options(opts)
  state = fresh_state(opts, width, concept_indices, per_epoch * opts.epochs)
  ckpts = checkpoint.RunCheckpoints(os.path.join(workdir, "checkpoints"))
  if ckpts.latest_step() is not None:
    lrs_now = state["lr"]
    state, meta = ckpts.restore(state)
    state["lr"] = lrs_now  # learning rates are settings: the config in force wins
    log(f"{tag}resumed from step {int(state['step'])} ({ckpts.directory})")
  if mesh is not None:  # shard the frozen params before the prefix-cache pass runs the model
    from steerjax import sharding
    params, data = sharding.place_inputs(model, mesh, rules, params, data)
  arrays = precompute(model, params, spec, data, opts, log)
  step_fn = functools.partial(train_step, model=model, spec=spec, opts=step_opts, groups=groups,
                              tx=tx)
  if mesh is not None:
    step_fn, state, arrays = sharding.shard_train_step(
        step_fn, mesh, rules, state, params, arrays, groups=groups, rows=groups * opts.batch_size)

  # Example index of row b in a stacked batch: concept k's rows come from its own block.
  rows_per_concept = np.repeat(np.arange(groups), opts.batch_size)
  offsets = rows_per_concept * n
  group = jnp.asarray(rows_per_concept, jnp.int32)
  start = int(state["step"])
  last_good = start
  t0 = time.time()
  log(f"{tag}{groups} concept(s), {n} examples each, {total} steps "
      f"(lr factor {lrs['factor']:.4g}, lr direction {lrs['direction']:.4g} at width {width})")
  for step in range(start, total):
    idx = np.tile(batch_indices(n, opts.batch_size, opts.seed, step), groups) + offsets
    state, metrics = step_fn(state, params=params, data=arrays, idx=jnp.asarray(idx, jnp.int32),
                             group=group)
    done = step + 1
    if done % opts.log_every == 0 or done == total or done == start + 1:
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
      if metrics_path:
        with open(metrics_path, "a") as f:
          f.write(json.dumps(dict(m, step=done, tag=tag.strip(" :"), elapsed_s=elapsed)) + "\n")
      if writer is not None:
        for k, v in m.items():
          writer.add_scalar(f"{tag.strip(' :') or 'train'}/{k}", v, done)
    if done % opts.checkpoint_every == 0 and done < total:
      if not _finite(state["sv"]):
        raise NonFiniteError(f"{tag}non-finite SV at step {done}; the last good checkpoint "
                             f"(step {last_good}) is kept in {ckpts.directory}")
      ckpts.save(done, state, {"step": done, "total": total})
      last_good = done
  if not _finite(state["sv"]):
    raise NonFiniteError(f"{tag}non-finite SV at the end of training; the last good checkpoint "
                         f"(step {last_good}) is kept in {ckpts.directory}")
  return {k: np.asarray(v) for k, v in state["sv"].items()}
