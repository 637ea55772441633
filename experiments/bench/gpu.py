"""Accelerator benchmark: steerjax at Gemma-2-2B shape in bf16 on one GPU or TPU chip.

Random weights at the 'gemma-2-2b' preset (2.6B parameters, bf16), steering block 10.
Measures, on jax.devices()[0]:
  * train-step time and MFU for Lang / SimPO, PrOSV f2+l2 / FSSV, prefix cache on / off
    (MFU = counted matmul FLOPs of the step / time / the device's nominal dense bf16 peak,
    looked up by device kind or given with --peak-tflops);
  * generate() decode tokens/s, unsteered / PrOSV / FSSV;
  * compile time of each program and the device's peak memory (memory_stats).
Needs only jax, flax, optax and steerjax (no torch), so it runs unchanged on a TPU VM.
Sized to finish in under 5 minutes on one H100; `--smoke` runs a tiny model in seconds
(any backend, CPU included) to check that the script works.

  PYTHONPATH=. python -m experiments.bench.gpu [--out /tmp/bench_gpu.json]
  PYTHONPATH=. python -m experiments.bench.gpu --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench import common as bc
from steerjax import losses
from steerjax.data.batching import ConceptData
from steerjax.generate import generate
from steerjax.models import Decoder, preset
from steerjax.steering import SteerSpec, init_sv
from steerjax.train import (LoopConfig, StepConfig, fresh_state, optimizer_for, precompute,
                            prepare_data, train_step)

# Nominal dense bf16 peak per JAX device, TFLOP/s; the first matching substring wins.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4),
    ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10G", 70.0),
    ("A10", 125.0), ("TPU v6 lite", 918.0), ("TPU v6e", 918.0), ("TPU v5 lite", 197.0),
    ("TPU v5e", 197.0), ("TPU v5p", 459.0), ("TPU v5", 459.0), ("TPU v4", 275.0),
    ("TPU v3", 61.5), ("TPU v2", 22.5),
)
SV_POSITIONS = {"PrOSV": "f2+l2", "FSSV": "all"}
quiet = lambda *a, **k: None


def nominal_peak(device, override: float = 0.0):
  """(TFLOP/s, source) for the device: the override, the table, or (None, 'unknown')."""
  if override:
    return override, "--peak-tflops"
  kind = getattr(device, "device_kind", "")
  for key, tflops in PEAK_BF16_TFLOPS:
    if key.lower() in kind.lower():
      return tflops, f"table[{key}]"
  return None, "unknown (pass --peak-tflops)"


def smoke_config(cfg):
  """A tiny Gemma-2 with the same switches, for --smoke."""
  return cfg.replace(vocab_size=2048, dim=128, n_layers=4, n_heads=2, n_kv_heads=1,
                     head_dim=64, hidden_dim=512, query_scale=64, sliding_window=64,
                     sliding_layers=(0, 2), max_seq_len=512)


def step_flops(cfg, batch, seq, layer, cached, sequences, head_positions):
  """Counted matmul FLOPs of one train step (weights frozen: input gradients only), by the
  CPU benchmarks' count; the head runs at `head_positions` positions per sequence."""
  shape = dict(dim=cfg.dim, heads=cfg.n_heads, kv_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
               hidden=cfg.hidden_dim, vocab=cfg.vocab_size)
  after = cfg.n_layers - layer - 1
  return sequences * bc.step_flops(shape, batch, seq, after if cached else cfg.n_layers, after,
                                   head_positions)


def random_data(cfg, n, seq, seed=0):
  rng = np.random.default_rng(seed)
  bos = cfg.bos_id or 2
  prompts, responses, neutral = [], [], []
  for _ in range(n):
    p = int(rng.integers(16, 25))
    prompts.append([bos] + rng.integers(3, cfg.vocab_size, p - 1).tolist())
    responses.append(rng.integers(3, cfg.vocab_size, seq - p).tolist())
    neutral.append(rng.integers(3, cfg.vocab_size, seq - p).tolist())
  return ConceptData("bench", prompts, responses, neutral)


def random_params(model, seed: int):
  """N(0, 0.02) weights in the model's dtype. Shapes come from eval_shape and each leaf is
  drawn by one small jitted program per distinct shape: jitting the whole `model.init`
  of a 26-block model compiles for minutes on a GPU."""
  tokens = jnp.ones((1, 8), jnp.int32)
  shapes = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.key(0), tokens)["params"]))
  leaves, treedef = jax.tree.flatten(shapes)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  draw = jax.jit(lambda key, shape, dtype: (0.02 * jax.random.normal(key, shape, jnp.float32)
                                            ).astype(dtype), static_argnums=(1, 2))
  return treedef.unflatten([draw(k, tuple(leaf.shape), jnp.dtype(leaf.dtype))
                            for k, leaf in zip(keys, leaves)])


def peak_memory(device):
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if not stats:
    return None
  return {k: stats[k] for k in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit") if k in stats}


def timed_steps(fn, steps):
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), times


def bench_train(model, params, cfg, args, objective, sv_kind, cache, peak):
  spec = SteerSpec(args.layer, SV_POSITIONS[sv_kind])
  step_cfg = StepConfig(objective=objective, batch_size=args.batch, epochs=1)
  run_cfg = LoopConfig(prefix_cache="on" if cache else "off")
  data, _ = prepare_data([random_data(cfg, args.batch, args.seq)], objective, cfg.pad_id)
  t0 = time.perf_counter()
  arrays = jax.block_until_ready(precompute(model, params, spec, data, step_cfg, run_cfg,
                                            log=quiet))
  pre_s = time.perf_counter() - t0
  tx, _ = optimizer_for(cfg.dim, step_cfg, run_cfg, 1000)
  box = {"state": fresh_state(step_cfg, run_cfg, cfg.dim, [0], 1000)}
  idx = jnp.arange(args.batch, dtype=jnp.int32)
  group = jnp.zeros((args.batch,), jnp.int32)

  def step():
    box["state"], metrics = train_step(box["state"], model, spec, step_cfg, 1, tx, params,
                                       arrays, idx, group)
    return float(metrics["loss"])

  t0 = time.perf_counter()
  loss = step()
  first_s = time.perf_counter() - t0
  med, _ = timed_steps(step, args.steps)
  flops = step_flops(cfg, args.batch, args.seq, args.layer, cache,
                     losses.OBJECTIVES[objective].passes, data["pos"]["at"].shape[1])
  return {"objective": objective, "sv": sv_kind, "prefix_cache": cache, "step_ms": med * 1e3,
          "tflops": flops / med / 1e12, "mfu": (flops / med / 1e12 / peak) if peak else None,
          "compile_s": max(first_s - med, 0.0), "precompute_s": pre_s, "loss": loss}


def bench_decode(model, params, cfg, args, mode):
  rng = np.random.default_rng(5)
  bos = cfg.bos_id or 2
  prompts = [[bos] + rng.integers(3, cfg.vocab_size, int(rng.integers(15, 24))).tolist()
             for _ in range(args.decode_batch)]
  kw = {}
  if mode != "unsteered":
    kw = {"sv": init_sv(jax.random.key(1), cfg.dim, 4.0, 8.0),
          "spec": SteerSpec(args.layer, SV_POSITIONS[mode])}
  run = lambda: generate(model, params, prompts, max_new_tokens=args.new, stop_ids=(), **kw)
  t0 = time.perf_counter()
  run()
  first_s = time.perf_counter() - t0
  med, _ = timed_steps(run, args.decode_reps)
  tokens = args.decode_batch * args.new
  return {"mode": mode, "batch": args.decode_batch, "new_tokens": args.new,
          "tok_s": tokens / med, "call_s": med, "compile_s": max(first_s - med, 0.0)}


def table(rows, cols):
  fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
  cells = [[fmt(r.get(c)) for c in cols] for r in rows]
  w = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
  lines = ["  ".join(c.rjust(n) for c, n in zip(cols, w))]
  lines += ["  ".join(x.rjust(n) for x, n in zip(row, w)) for row in cells]
  return "\n".join(lines)


def parse():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="/tmp/bench_gpu.json")
  p.add_argument("--preset", default="gemma-2-2b")
  p.add_argument("--layer", type=int, default=10)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--batch", type=int, default=12)
  p.add_argument("--seq", type=int, default=160)
  p.add_argument("--steps", type=int, default=10, help="timed train steps per variant")
  p.add_argument("--train", nargs="+",
                 default=["lang:PrOSV:on", "lang:PrOSV:off", "lang:FSSV:on", "simpo:PrOSV:on"],
                 help="objective:SV:prefix-cache variants")
  p.add_argument("--decode", nargs="+", default=["unsteered", "PrOSV", "FSSV"])
  p.add_argument("--decode-batch", type=int, default=16)
  p.add_argument("--new", type=int, default=128)
  p.add_argument("--decode-reps", type=int, default=5)
  p.add_argument("--peak-tflops", type=float, default=0.0,
                 help="override the device's nominal dense bf16 TFLOP/s")
  p.add_argument("--smoke", action="store_true", help="tiny model, few steps: checks the script")
  args = p.parse_args()
  if args.smoke:
    args.steps, args.decode_reps, args.new, args.decode_batch = 2, 2, 8, 4
    args.layer = min(args.layer, 1)
  return args


def main():
  args = parse()
  device = jax.devices()[0]
  cfg = preset(args.preset)
  if args.smoke:
    cfg = smoke_config(cfg)
  dtype = jnp.dtype(args.dtype)
  model = Decoder(cfg, dtype=dtype)
  peak, peak_src = nominal_peak(device, args.peak_tflops)
  print(f"device: {device.device_kind} ({jax.default_backend()}, {jax.device_count()} device(s)); "
        f"jax {jax.__version__}; bf16 peak {peak} TFLOP/s from {peak_src}")
  t0 = time.perf_counter()
  params = jax.block_until_ready(random_params(model, seed=0))
  n_params = sum(x.size for x in jax.tree.leaves(params))
  print(f"model: {args.preset}{' (smoke)' if args.smoke else ''}, {n_params / 1e9:.3f}B params "
        f"in {args.dtype}, init {time.perf_counter() - t0:.1f}s; steering block {args.layer}")
  train_rows = []
  for variant in args.train:
    objective, sv_kind, cache = variant.split(":")
    row = bench_train(model, params, cfg, args, objective, sv_kind, cache == "on", peak)
    train_rows.append(row)
    print(table([row], TRAIN_COLS), flush=True)
  decode_rows = []
  for mode in args.decode:
    row = bench_decode(model, params, cfg, args, mode)
    decode_rows.append(row)
    print(table([row], DECODE_COLS), flush=True)
  memory = peak_memory(device)
  print("\ntrain steps (batch %d x %d tokens):\n%s" % (args.batch, args.seq,
                                                      table(train_rows, TRAIN_COLS)))
  print("\ndecode:\n" + table(decode_rows, DECODE_COLS))
  print(f"\npeak device memory: {memory}")
  payload = {"device": device.device_kind, "backend": jax.default_backend(),
             "jax": jax.__version__, "peak_tflops": peak, "peak_source": peak_src,
             "params": n_params, "config": vars(args), "train": train_rows,
             "decode": decode_rows, "memory": memory}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(payload, f, indent=1)
  print(f"wrote {args.out}")


TRAIN_COLS = ["objective", "sv", "prefix_cache", "step_ms", "tflops", "mfu", "compile_s",
              "precompute_s"]
DECODE_COLS = ["mode", "batch", "new_tokens", "tok_s", "call_s", "compile_s"]

if __name__ == "__main__":
  main()
