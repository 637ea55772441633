"""Meshes, logical-axis sharding rules and multi-host start-up.

Mesh axes (`config.mesh.axes`, outer to inner; `config.mesh.shape` gives the devices on each,
and one -1 takes the rest):
  data     independent batch rows (plain data parallel)
  fsdp     frozen params split along their "embed" dim (ZeRO-3 style: XLA gathers a layer's
           weights where it needs them)
  tensor   Megatron-style split of heads, kv heads, mlp and vocab
  concept  stacked SVs [C, D], their optimizer moments and their examples' rows

Logical axes name the dims of params (decoder.py: vocab, embed, heads, kv_heads, head_dim,
mlp; the q/k norm scales of Qwen3 and Gemma-3 are head_dim, replicated) and of training
arrays (batch: rows of one step; examples: rows of the example store and prefix cache;
concept: the leading C of stacked SVs). The rules are an ordered list of
(logical axis, mesh axes) pairs: for each dim the first rule whose mesh axes are still free
in that array wins (flax's `logical_to_mesh_axes`). A logical axis that no rule names is an
error (map it to None to replicate), and so is a dim its mesh axes do not divide.

Shapes first, then shardings, then a jitted init: `init_sharded` never builds the full params
on one host. Loaded weights go through `shard_params`, which places each leaf with
`jax.make_array_from_callback`, so a process copies only the slices its own devices hold.
A real 32B load should stream: pass leaves that slice lazily (`np.load(..., mmap_mode="r")`,
or a view over safetensors `safe_open(...).get_slice(key)` after the key map and layout change
of `models/loading.py`) instead of a numpy tree read whole on every host.

Multi-host: every process runs the same command on its local devices.
  TPU VM pods: set `config.mesh.distributed.enabled=True`; jax reads the coordinator,
    process count and ids from the TPU metadata. Start it on all workers at once
    (`gcloud compute tpus tpu-vm ssh NAME --worker=all --command="..."`).
  Multi-node GPU: SLURM and Open MPI launches are detected the same way; elsewhere also set
    `coordinator_address=host0:port`, `num_processes` and, per node, `process_id`.
`maybe_initialize_distributed` must run before anything touches a device. Every process
builds the same batches (the order depends only on seed and step) and places them with
`make_array_from_callback`. The loop reads metrics and SVs on every host, so a multi-host
run keeps the SV state replicated (map "concept" to None); it is kilobytes.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor", "concept")
DEFAULT_RULES = (
    ("batch", ("concept", "data")),  # concept-major, like the rows of a stacked batch
    ("examples", "concept"),         # concept k's examples sit with its SV
    ("concept", "concept"),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
)


# --------------------------------------------------------------------------- meshes

def resolve_shape(shape: Sequence[int], n_devices: int) -> tuple:
  """Replace the one -1 in `shape` by what is left of `n_devices`; check the product."""
  shape = [int(s) for s in shape]
  if any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh shape {tuple(shape)}: sizes must be >= 1, or -1 for the rest")
  free = [i for i, s in enumerate(shape) if s == -1]
  if len(free) > 1:
    raise ValueError(f"mesh shape {tuple(shape)} has {len(free)} entries of -1; at most one "
                     "axis can take the rest of the devices")
  fixed = math.prod(s for s in shape if s != -1)
  if free:
    if n_devices % fixed:
      raise ValueError(f"mesh shape {tuple(shape)}: the fixed axes use {fixed} devices, which "
                       f"does not divide the {n_devices} devices available")
    shape[free[0]] = n_devices // fixed
  elif fixed != n_devices:
    raise ValueError(f"mesh shape {tuple(shape)} needs {fixed} devices but {n_devices} are "
                     "available; change a size or use -1 for one axis")
  return tuple(shape)


def make_mesh(shape: Sequence[int], axes: Sequence[str] = AXES, devices=None):
  """A mesh with Auto axis types (the Explicit default breaks flax's embedding lookup)."""
  axes = tuple(axes)
  if len(shape) != len(axes):
    raise ValueError(f"mesh shape {tuple(shape)} has {len(shape)} sizes for {len(axes)} axes "
                     f"{axes}")
  if len(set(axes)) != len(axes):
    raise ValueError(f"mesh axes {axes} repeat a name")
  devices = jax.devices() if devices is None else list(devices)
  sizes = resolve_shape(shape, len(devices))
  return jax.make_mesh(sizes, axes, axis_types=(AxisType.Auto,) * len(axes), devices=devices)


# --------------------------------------------------------------------------- rules

def _mesh_axes(entry) -> tuple:
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def normalize_rules(rules=None) -> tuple:
  """Rules (default: DEFAULT_RULES) as a hashable tuple of (logical axis, None | mesh axis |
  tuple of mesh axes)."""
  out = []
  for rule in DEFAULT_RULES if rules is None else rules:
    if len(rule) != 2 or not isinstance(rule[0], str):
      raise ValueError(f"sharding rule {rule!r} must be a (logical axis, mesh axes) pair")
    name, axes = rule
    axes = _mesh_axes(axes)
    out.append((name, None if not axes else axes[0] if len(axes) == 1 else axes))
  return tuple(out)


def check_rules(rules, mesh):
  """Every mesh axis a rule names exists in `mesh`."""
  for name, axes in rules:
    unknown = [a for a in _mesh_axes(axes) if a not in mesh.axis_names]
    if unknown:
      raise ValueError(f"sharding rule ({name!r}, {axes!r}) names mesh axes {unknown} that "
                       f"the mesh {mesh.axis_names} does not have")


def logical_spec(names: Sequence[Optional[str]], rules) -> P:
  """PartitionSpec of an array whose dims have logical `names`; uncovered names are errors."""
  rules = normalize_rules(rules)
  covered = {name for name, _ in rules}
  missing = [n for n in names if n is not None and n not in covered]
  if missing:
    raise ValueError(f"logical axes {missing} are covered by no sharding rule; add them to "
                     "config.mesh.rules (map to None to replicate)")
  return nn.logical_to_mesh_axes(tuple(names), rules)


def _axis_size(mesh, entry) -> int:
  return math.prod(mesh.shape[a] for a in _mesh_axes(entry))


def check_divisible(shape, spec: P, mesh, what: str):
  for dim, (size, entry) in enumerate(zip(shape, spec)):
    n = _axis_size(mesh, entry)
    if size % n:
      raise ValueError(f"{what}: dim {dim} of size {size} is split over mesh axes {entry} "
                       f"({n} devices), which does not divide it; change the mesh or map that "
                       "logical axis to None in config.mesh.rules")


def named(mesh, rules, names: Sequence[Optional[str]], shape=None, what="array"):
  """NamedSharding for logical dim `names`, checked against `shape` when given."""
  spec = logical_spec(names, rules)
  if shape is not None:
    check_divisible(shape, spec, mesh, what)
  return NamedSharding(mesh, spec)


# --------------------------------------------------------------------------- params

def abstract_params(model):
  """Param shapes of `model`, boxed with their logical axis names; nothing is allocated."""
  tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  return jax.eval_shape(lambda t: model.init(jax.random.key(0), t), tokens)["params"]


def _path(path) -> str:
  return "/".join(str(getattr(k, "key", k)) for k in path)


def param_shardings(model, mesh, rules=None):
  """NamedSharding per param, from the logical axes each param is declared with."""
  rules = normalize_rules(rules)
  check_rules(rules, mesh)
  boxed = abstract_params(model)
  logical = nn.get_partition_spec(boxed)
  shapes = nn.unbox(boxed)

  def one(path, names, shape):
    return named(mesh, rules, tuple(names), shape.shape, f"param {_path(path)}")
  return jax.tree_util.tree_map_with_path(one, logical, shapes,
                                          is_leaf=lambda x: isinstance(x, P))


def init_sharded(model, mesh, rules=None, rng=None):
  """Random params created directly in their shards by a jitted init."""
  shardings = param_shardings(model, mesh, rules)
  init = lambda key: nn.unbox(model.init(key, jnp.ones((1, 1), jnp.int32))["params"])
  return jax.jit(init, out_shardings=shardings)(jax.random.key(0) if rng is None else rng)


def place(x, sharding):
  """`x` (numpy, jax array or a lazily sliced leaf with `.shape`) as a global array with
  `sharding`; each process reads only the slices its own devices hold."""
  if isinstance(x, jax.Array):
    if x.sharding == sharding:
      return x
    if jax.process_count() == 1 or not x.is_fully_addressable:
      return jax.device_put(x, sharding)
  if not hasattr(x, "shape"):
    x = np.asarray(x)
  return jax.make_array_from_callback(tuple(x.shape), sharding, lambda idx: np.asarray(x[idx]))


def shard_params(params, shardings):
  """Place loaded (or single-device) params leaf by leaf on their shardings."""
  return jax.tree.map(place, nn.unbox(params), shardings)


# --------------------------------------------------------------------------- training

def rows_sharding(mesh, rules, rows: int, logical: str = "batch", what="training batch"):
  """Sharding of a [rows, ...] array whose leading dim is the logical axis `logical`."""
  return named(mesh, rules, (logical,), (rows,), f"{what} of {rows} rows")


def store_shardings(data, mesh, rules):
  """Example store and prefix cache: rows over the "examples" axis, the rest replicated."""
  return jax.tree.map(
      lambda x: rows_sharding(mesh, rules, x.shape[0], "examples", "example store"), data)


def place_store(data, mesh, rules):
  """The packed example arrays over "examples"; done before the prefix-cache pass so the
  model never runs from a single device."""
  return jax.tree.map(place, data, store_shardings(data, mesh, normalize_rules(rules)))


def sv_state_shardings(state, mesh, rules, concepts: int):
  """Train state: SVs and optimizer moments with a leading [C] dim over the "concept" axis;
  step counters and the RNG replicated."""
  stacked = rows_sharding(mesh, rules, concepts, "concept", "stacked SVs")
  if jax.process_count() > 1 and not stacked.is_fully_replicated:
    raise ValueError("on a multi-host mesh the SV state must be replicated: map 'concept' to "
                     "None in config.mesh.rules (the loop reads SVs on every host)")
  replicated = NamedSharding(mesh, P())

  def one(path, x):
    in_sv = getattr(path[0], "key", None) in ("sv", "opt")
    return stacked if in_sv and x.ndim >= 1 and x.shape[0] == concepts else replicated
  return jax.tree_util.tree_map_with_path(one, state)


def train_shardings(mesh, rules, state, params_shardings, data, *, groups: int, rows: int):
  """(state, params, example store, batch rows) shardings of a stacked-SV train step.

  `state` and `data` may be arrays or `jax.ShapeDtypeStruct`s (for dry runs)."""
  rules = normalize_rules(rules)
  check_rules(rules, mesh)
  return (sv_state_shardings(state, mesh, rules, groups), params_shardings,
          store_shardings(data, mesh, rules), rows_sharding(mesh, rules, rows))


def _leaves_key(tree) -> tuple:
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, tuple(leaves)


_STEPS = {}


def jit_train_step(step, mesh, shardings):
  """`step` (train.train_step with its static arguments bound by keyword) jitted as
  `(state, params, data, idx, group) -> (state, metrics)` with explicit in/out shardings.
  Cached, so concept groups with the same layout share one compiled step."""
  key = (step.func, tuple(step.keywords.items()), *(_leaves_key(s) for s in shardings[:3]),
         shardings[3])
  if key not in _STEPS:
    state_sh, params_sh, data_sh, rows_sh = shardings

    def run(state, params, data, idx, group):
      return step(state, params=params, data=data, idx=idx, group=group)
    _STEPS[key] = jax.jit(run, in_shardings=(state_sh, params_sh, data_sh, rows_sh, rows_sh),
                          out_shardings=(state_sh, NamedSharding(mesh, P())), donate_argnums=0)
  return _STEPS[key]


def shard_train_step(step, mesh, rules, state, params, data, *, groups: int, rows: int):
  """(step, state, data) for a stacked-SV run on `mesh`: the step keeps `step`'s keyword call
  signature; params stay as placed (see `shard_params`), the example store goes over
  "examples", batch rows over "batch" and the SV state over "concept"."""
  shardings = train_shardings(mesh, rules, state, jax.tree.map(lambda x: x.sharding, params),
                              data, groups=groups, rows=rows)
  jitted = jit_train_step(step, mesh, shardings)
  state_sh, _, data_sh, rows_sh = shardings

  def sharded_step(state, *, params, data, idx, group):
    return jitted(state, params, data, place(idx, rows_sh), place(group, rows_sh))
  return sharded_step, jax.tree.map(place, state, state_sh), jax.tree.map(place, data, data_sh)


# --------------------------------------------------------------------------- config

def maybe_initialize_distributed(config) -> bool:
  """Start jax's multi-host runtime when `config.mesh.distributed.enabled`; True if it runs.

  With `coordinator_address` empty, jax detects the cluster (TPU VM pods, SLURM, Open MPI).
  """
  dist = config.mesh.distributed
  if not dist.enabled:
    return False
  if jax.distributed.is_initialized():
    return True
  kwargs = {}
  if dist.coordinator_address:
    if dist.num_processes < 1 or not 0 <= dist.process_id < dist.num_processes:
      raise ValueError(
          f"config.mesh.distributed: coordinator_address={dist.coordinator_address!r} needs "
          f"num_processes >= 1 and 0 <= process_id < num_processes (got "
          f"{dist.num_processes}, {dist.process_id})")
    kwargs = dict(coordinator_address=dist.coordinator_address,
                  num_processes=dist.num_processes, process_id=dist.process_id)
  jax.distributed.initialize(**kwargs)
  return True


def from_config(config):
  """(mesh, rules) from `config.mesh`, or (None, None) when `config.mesh.shape` is empty
  (one device, no mesh). Starts the multi-host runtime first when configured."""
  mesh_cfg = config.mesh
  distributed = maybe_initialize_distributed(config)
  if not mesh_cfg.shape:
    if distributed:
      raise ValueError("config.mesh.distributed.enabled needs a mesh: set config.mesh.shape")
    return None, None
  mesh = make_mesh(mesh_cfg.shape, mesh_cfg.axes)
  rules = normalize_rules(mesh_cfg.rules)
  check_rules(rules, mesh)
  return mesh, rules
