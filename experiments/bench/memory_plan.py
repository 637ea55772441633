"""Memory plan: bytes per device for SV training and generation on the paper's models.

  PYTHONPATH=. python -m experiments.bench.memory_plan [--plans NAME ...] [--out TABLES.md]

Dry runs only: params, batches and caches are `jax.ShapeDtypeStruct`s with shardings from
steerjax.sharding's default rules, and the real programs (the sharded train step with the
prefix cache on; generation's prefill and decode loop) are lowered and compiled for them,
never run. With a GPU attached the meshes are made of compile-only GPU devices of the same
kind (`jax.experimental.topologies`), so one GPU plans for eight or sixteen; without one,
of fake CPU devices. Per device:
  params        bf16 param shards, from the shardings
  prefix cache  block-l outputs of the 72 training examples (Lang: y_c; SimPO: y_c and y)
  SV + Adam     the stacked SV, Adam's moments and counters (fp32)
  saved for backward   jax.vjp's residuals of the loss (inputs excluded) in the layout the
                SPMD partitioner gives them: what the backward pass reads from the forward
  XLA temp      the compiled program's temporaries (`memory_analysis().temp_size_in_bytes`)
  XLA peak      arguments + outputs - donated + temporaries
  KV cache      generation's cache, from the shardings the compiled prefill gives it
Training: one concept, packed length 160 (longest prompt 32 + response 128), the paper's
batches (Lang 12, SimPO 6), PrOSV f2+l2 at the paper's layer. Generation: 10 prompts
(left-padded to 32), 128 new tokens, steered prefill. Params, caches and SV state are exact;
temporaries are what the target compiler plans. XLA:CPU has no bf16 matmul and keeps f32
copies of the weights it multiplies, so its temporaries overstate a GPU's or TPU's; "saved for
backward" does not depend on the backend's fusions.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from steerjax import generate, memory, sharding, train
from steerjax.data.batching import ConceptData
from steerjax.models import Decoder, preset
from steerjax.steering import SteerSpec

FAKE_CPU_DEVICES = 16   # the largest mesh below
N_EXAMPLES, PROMPT, RESPONSE = 72, 32, 128
BATCH = {"lang": 12, "simpo": 6}
GEN_PROMPTS, GEN_PROMPT_LEN, NEW_TOKENS = 10, 32, 128
GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Plan:
  model: str
  layer: int
  mesh: tuple           # sizes of (data, fsdp, tensor, concept)
  hardware: str


PLANS = {
    "gemma2b-1": Plan("gemma-2-2b", 10, (1, 1, 1, 1), "1 chip: v5e (16 GB), H100 (80 GB)"),
    "gemma9b-fsdp8": Plan("gemma-2-9b", 20, (1, 8, 1, 1), "8 chips: v5e-8 (16 GB), 8xH100"),
    "gemma9b-tp8": Plan("gemma-2-9b", 20, (1, 1, 8, 1), "8 chips: v5e-8 (16 GB), 8xH100"),
    "qwen32b-fsdp8": Plan("qwen2.5-32b", 32, (1, 8, 1, 1), "8 chips: v5p-16 (95 GB), 8xH100"),
    "qwen32b-tp8": Plan("qwen2.5-32b", 32, (1, 1, 8, 1), "8 chips: v5p-16 (95 GB), 8xH100"),
    "qwen32b-fsdp4-tp4": Plan("qwen2.5-32b", 32, (1, 4, 4, 1),
                              "16 chips: v5e-16 (16 GB), v4-32 (32 GB)"),
}


def quiet(*args, **kwargs):
  pass


def per_device_bytes(tree, shardings) -> int:
  """Bytes one device holds of `tree` (shapes) laid out by `shardings`."""
  return sum(math.prod(s.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
             for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)))


def with_shardings(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def abstract_store(model, params, spec, step_cfg, run_cfg):
  """Shapes of the example store with the prefix cache, as `train.precompute` builds it."""
  neutral = [[3] * RESPONSE] * N_EXAMPLES if train.needs_neutral(step_cfg.objective) else None
  concept = ConceptData("c", [[1] * PROMPT] * N_EXAMPLES, [[2] * RESPONSE] * N_EXAMPLES, neutral)
  data, _ = train.prepare_data([concept], step_cfg.objective, model.cfg.pad_id)
  return jax.eval_shape(
      lambda p: train.precompute(model, p, spec, data, step_cfg, run_cfg, log=quiet), params)


def saved_for_backward(model, spec, step_cfg, shardings, state, params, store, rows) -> int:
  """Per-device bytes that the backward pass reads from the forward: jax.vjp's residuals
  (inputs excluded), laid out as the SPMD partitioner lays them out. Backend-neutral up to
  that layout, unlike XLA:CPU's temporaries."""
  def forward(sv, params, store, idx, group):
    return jax.vjp(lambda s: train.loss_fn(s, model, spec, step_cfg, 1, params, store, idx,
                                           group, None), sv)
  args = (state["sv"], params, store, rows, rows)
  jaxpr = jax.make_jaxpr(forward)(*args).jaxpr
  inputs = {id(v) for v in jaxpr.invars}
  sv_sh = {k: shardings[0]["sv"][k] for k in state["sv"]}
  compiled = jax.jit(forward, in_shardings=(sv_sh, *shardings[1:], shardings[3])).lower(
      *args).compile()
  outs = jax.tree.leaves(jax.eval_shape(forward, *args))
  total, seen = 0, set()
  for var, out, out_sh in list(zip(jaxpr.outvars, outs, jax.tree.leaves(
      compiled.output_shardings)))[1:]:  # [0] is the loss
    if type(var).__name__ == "Literal" or id(var) in inputs or id(var) in seen:
      continue
    seen.add(id(var))
    total += math.prod(out_sh.shard_shape(out.shape)) * jnp.dtype(out.dtype).itemsize
  return total


def train_row(model, mesh, params, params_sh, layer, objective):
  """Per-device bytes of one sharded train step."""
  batch, width = BATCH[objective], model.cfg.dim
  step_cfg = train.StepConfig(objective=objective, batch_size=batch)
  run_cfg = train.LoopConfig(prefix_cache="on", prefix_cache_max_bytes=1 << 40)
  spec, total = SteerSpec(layer, "f2+l2"), N_EXAMPLES // batch * step_cfg.epochs
  tx, _ = train.optimizer_for(width, step_cfg, run_cfg, total)
  state = jax.eval_shape(lambda: train.fresh_state(step_cfg, run_cfg, width, [0], total))
  store = abstract_store(model, params, spec, step_cfg, run_cfg)
  shardings = sharding.train_shardings(mesh, None, state, params_sh, store, groups=1, rows=batch)
  step = functools.partial(train.train_step, model=model, spec=spec, step=step_cfg, groups=1,
                           tx=tx)
  rows = jax.ShapeDtypeStruct((batch,), jnp.int32)
  mem = sharding.jit_train_step(step, mesh, shardings).lower(
      state, params, store, rows, rows).compile().memory_analysis()
  cache = {k: {"h": v["h"]} for k, v in store.items()}
  cache_sh = {k: {"h": v["h"]} for k, v in shardings[2].items()}
  return dict(params=per_device_bytes(params, params_sh),
              prefix_cache=per_device_bytes(cache, cache_sh),
              sv_state=per_device_bytes(state, shardings[0]),
              saved=saved_for_backward(model, spec, step_cfg, shardings, state, params, store,
                                       rows),
              activations=mem.temp_size_in_bytes, peak=memory.peak_bytes(mem))


def generation_row(model, mesh, params, params_sh, layer):
  """Per-device bytes of steered generation: prefill, then the decode loop."""
  spec = SteerSpec(layer, "f2+l2")
  replicated = NamedSharding(mesh, P())
  sv = {"factor": jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated),
        "direction": jax.ShapeDtypeStruct((model.cfg.dim,), jnp.float32, sharding=replicated)}
  batch = sharding.named(mesh, sharding.DEFAULT_RULES, ("batch", None))
  tokens = jax.ShapeDtypeStruct((GEN_PROMPTS, GEN_PROMPT_LEN), jnp.int32, sharding=batch)
  valid = jax.ShapeDtypeStruct(tokens.shape, jnp.bool_, sharding=batch)
  params = with_shardings(params, params_sh)
  prefill = generate.prefill.lower(model, spec, GEN_PROMPT_LEN + NEW_TOKENS, params, sv, None,
                                   tokens, valid).compile()
  logits, cache = prefill.out_info
  rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated)
  decode = generate.decode.lower(model, spec, NEW_TOKENS, 1.0, 1.0, tuple(model.cfg.stop_ids),
                                 False, params, sv, None, logits, cache, rng).compile()
  kv = {"k": cache["k"], "v": cache["v"]}
  prefill_mem, decode_mem = prefill.memory_analysis(), decode.memory_analysis()
  return dict(params=per_device_bytes(params, params_sh),
              kv_cache=per_device_bytes(kv, jax.tree.map(lambda x: x.sharding, kv)),
              prefill_activations=prefill_mem.temp_size_in_bytes,
              decode_activations=decode_mem.temp_size_in_bytes,
              peak=max(memory.peak_bytes(prefill_mem), memory.peak_bytes(decode_mem)))


def target_devices(target: str, n: int):
  """`n` devices to compile for: compile-only GPUs like the attached one, or CPU devices."""
  if target == "cpu":
    return jax.devices("cpu")[:n]
  from jax.experimental import topologies
  return topologies.get_topology_desc(platform="cuda", topology=f"1x1x{n}").devices


def plan_mesh(sizes, target: str):
  devices = np.array(target_devices(target, math.prod(sizes))).reshape(sizes)
  return Mesh(devices, sharding.AXES, axis_types=(AxisType.Auto,) * len(sizes))


def run_plan(plan: Plan, remat: bool, target: str, log=print):
  cfg = preset(plan.model)
  mesh = plan_mesh(plan.mesh, target)
  model = Decoder(cfg, jnp.bfloat16)
  params = nn.unbox(sharding.abstract_params(model))
  params_sh = sharding.param_shardings(model, mesh)
  rows = {}
  for objective in BATCH:
    for use_remat in (False, True) if remat else (False,):
      t0 = time.time()
      m = model.clone(remat=True) if use_remat else model
      rows[objective, use_remat] = train_row(m, mesh, params, params_sh, plan.layer, objective)
      log(f"  {plan.model} {mesh_name(plan.mesh)} {objective} remat={use_remat}: "
          f"{time.time() - t0:.0f}s {in_gib(rows[objective, use_remat])}", flush=True)
  t0 = time.time()
  rows["generate"] = generation_row(model, mesh, params, params_sh, plan.layer)
  log(f"  {plan.model} {mesh_name(plan.mesh)} generate: {time.time() - t0:.0f}s "
      f"{in_gib(rows['generate'])}", flush=True)
  return rows


def in_gib(row: dict) -> dict:
  return {k: round(v / GIB, 3) for k, v in row.items()}


def mesh_name(sizes) -> str:
  parts = [f"{a}={n}" for a, n in zip(sharding.AXES, sizes) if n > 1]
  return " x ".join(parts) or "1 device"


def gib(n) -> str:
  return f"{n / GIB:.2f}"


def _table(head: list, rows: list) -> list:
  return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
      "| " + " | ".join(r) + " |" for r in rows]


def tables(results, remat: bool) -> str:
  head = ["model (layer)", "mesh", "hardware", "objective (batch)", "params", "prefix cache",
          "SV + Adam", "saved for backward", "XLA temp", "XLA peak"]
  if remat:
    head += ["saved, remat", "XLA temp, remat", "XLA peak, remat"]
  rows = []
  for plan, plan_rows in results:
    for objective, batch in BATCH.items():
      r = plan_rows[objective, False]
      row = [f"{plan.model} (L{plan.layer})", mesh_name(plan.mesh), plan.hardware,
             f"{objective} ({batch})", gib(r["params"]), gib(r["prefix_cache"]),
             f"{r['sv_state'] / 2**10:.0f} KiB", gib(r["saved"]), gib(r["activations"]),
             gib(r["peak"])]
      if remat:
        rr = plan_rows[objective, True]
        row += [gib(rr["saved"]), gib(rr["activations"]), gib(rr["peak"])]
      rows.append(row)
  lines = ["Training step, GiB per device:", ""] + _table(head, rows)
  head = ["model", "mesh", "params", "KV cache", "prefill XLA temp", "decode XLA temp",
          "XLA peak"]
  rows = [[plan.model, mesh_name(plan.mesh), gib(r["params"]), gib(r["kv_cache"]),
           gib(r["prefill_activations"]), gib(r["decode_activations"]), gib(r["peak"])]
          for plan, r in ((p, rs["generate"]) for p, rs in results)]
  lines += ["", f"Generation ({GEN_PROMPTS} prompts, {NEW_TOKENS} new tokens), GiB per device:",
            ""] + _table(head, rows)
  return "\n".join(lines)


def main():
  # Fake CPU devices; must precede the first use of jax (the --target default below).
  jax.config.update("jax_num_cpu_devices", FAKE_CPU_DEVICES)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--plans", nargs="*", default=list(PLANS), choices=list(PLANS))
  parser.add_argument("--no-remat", dest="remat", action="store_false",
                      help="skip the train steps with per-block rematerialisation")
  parser.add_argument("--target", choices=("gpu", "cpu"),
                      default="gpu" if jax.default_backend() == "gpu" else "cpu")
  parser.add_argument("--out", default="", help="also write the tables to this markdown file")
  args = parser.parse_args()
  kind = jax.devices()[0].device_kind if args.target == "gpu" else "fake CPU"
  print(f"compiling for {kind} devices")
  results = [(PLANS[name], run_plan(PLANS[name], args.remat, args.target))
             for name in args.plans]
  text = f"Compiled for: {kind} devices.\n\n" + tables(results, args.remat)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
