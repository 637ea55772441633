"""Train-step speed: steerjax (prefix cache on and off) vs the PyTorch reference.

Same Gemma-2 architecture and the SAME fp32 weights in both frameworks (a random
transformers checkpoint read back by steerjax's HF loader); 8 blocks, widths 256..1024,
head_dim 128, MLP 4x, vocab 32768; batch 12 x 160 tokens (prompt ~20 + response ~140);
steering the output of block `--layer` (3: blocks 0..3 are the prefix the cache skips).
For each width, objective (Lang, SimPO) and SV (PrOSV f2+l2; FSSV `all` at --fssv-widths,
since its step does the same work) it times one optimizer step of three variants, torch,
steerjax without and with the prefix cache, interleaved in every round, and reports
medians, ratios, compile time of steerjax's first step and achieved matmul FLOP/s as a
share of the machine's fp32 matmul peak (measured here with jnp.dot and torch.mm). The
first-step losses of the two frameworks are compared: they must agree to fp32 rounding.

  PYTHONPATH=. python -m experiments.bench.train [--quick] [--out /tmp/bench_train.json]
"""

from __future__ import annotations

import dataclasses
import time

from experiments.bench import common as bc

if __name__ == "__main__":
  bc.setup_env()  # before torch loads

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from experiments.bench import torch_reference as tr  # noqa: E402
from steerjax import losses  # noqa: E402
from steerjax.steering import SteerSpec  # noqa: E402
from steerjax.train import (LoopConfig, StepConfig, fresh_state, optimizer_for,  # noqa: E402
                            precompute, prepare_data, train_step)

POSITIONS = {"PrOSV": "f2+l2", "FSSV": "all"}
BETA, LAM = {"PrOSV": 4.0, "FSSV": 2.0}, {"PrOSV": 8.0, "FSSV": 1.0}
LR = {"PrOSV": (10.0, 0.04), "FSSV": (1.0, 0.04)}
quiet = lambda *a, **k: None


class JaxStepper:
  """steerjax's jitted train step on one fixed batch, with or without the prefix cache."""

  def __init__(self, model, params, spec, step_cfg, run_cfg, data, batch):
    self.args = dict(model=model, spec=spec, step=step_cfg, groups=1, params=params)
    self.tx, _ = optimizer_for(model.cfg.dim, step_cfg, run_cfg, 1000)
    self.state = fresh_state(step_cfg, run_cfg, model.cfg.dim, [0], 1000)
    self.sv0 = {k: np.array(v) for k, v in self.state["sv"].items()}
    t0 = time.perf_counter()
    self.arrays = precompute(model, params, spec, data, step_cfg, run_cfg, log=quiet)
    jax.block_until_ready(self.arrays)
    self.precompute_s = time.perf_counter() - t0
    self.idx = jnp.arange(batch, dtype=jnp.int32)
    self.group = jnp.zeros((batch,), jnp.int32)

  def __call__(self) -> float:
    self.state, metrics = train_step(self.state, tx=self.tx, data=self.arrays, idx=self.idx,
                                     group=self.group, **self.args)
    return float(metrics["loss"])


def torch_batch(data, trainer, objective):
  batch = {name: tr.to_torch(seq) for name, seq in data.items()}
  if objective == "simpo":
    for name in ("pos", "neg"):
      batch[name]["ref"] = trainer.reference_logprobs(batch[name])
  return batch


def bench_case(hf, model, params, shape, layer, objective, sv_kind, args):
  """Time one (objective, SV kind) case; returns a result row."""
  positions = POSITIONS[sv_kind]
  spec = SteerSpec(layer, positions)
  lr_f, lr_d = LR[sv_kind]
  step_cfg = StepConfig(objective=objective, batch_size=args.batch, epochs=1)
  run_cfg = LoopConfig(beta=BETA[sv_kind], lam=LAM[sv_kind], lr_factor=lr_f, lr_direction=lr_d)
  concept = bc.concept_data("bench", args.batch, shape["vocab"], seed=1, seq_len=args.seq)
  data, _ = prepare_data([concept], objective, model.cfg.pad_id)
  steppers, compile_s = {}, {}
  for name, cache in (("jax_cache", "on"), ("jax_nocache", "off")):
    stepper = JaxStepper(model, params, spec, step_cfg,
                         dataclasses.replace(run_cfg, prefix_cache=cache), data, args.batch)
    t0 = time.perf_counter()
    first_loss = stepper()
    compile_s[name] = time.perf_counter() - t0
    steppers[name] = (stepper, first_loss)
  sv0 = steppers["jax_cache"][0].sv0
  trainer = tr.TorchTrainer(hf, layer, positions, objective, float(sv0["factor"][0]),
                            sv0["direction"][0], lr_f, lr_d, total_steps=1000)
  batch = torch_batch(data, trainer, objective)
  torch_first = trainer.step(batch)
  fns = {"torch": lambda: trainer.step(batch),
         "jax_cache": steppers["jax_cache"][0], "jax_nocache": steppers["jax_nocache"][0]}
  times = bc.interleaved(fns, args.reps, warmup=0)   # every variant already ran a step
  trainer.close()
  med = {k: bc.median(v) for k, v in times.items()}
  for name in compile_s:   # the first call also ran one step
    compile_s[name] = max(compile_s[name] - med[name], 0.0)
  seq = data["pos"]["tokens"].shape[1]
  n_seq = losses.OBJECTIVES[objective].passes
  L = shape["layers"]
  window = data["pos"]["at"].shape[1]   # steerjax's head runs at the response window only
  full = n_seq * bc.step_flops(shape, args.batch, seq, L, L - layer - 1)
  nocache = n_seq * bc.step_flops(shape, args.batch, seq, L, L - layer - 1, window)
  cached = n_seq * bc.step_flops(shape, args.batch, seq, L - layer - 1, L - layer - 1, window)
  jax_loss = steppers["jax_nocache"][1]
  return {
      "width": shape["dim"], "objective": objective, "sv": sv_kind, "positions": positions,
      "torch_ms": med["torch"] * 1e3, "jax_nocache_ms": med["jax_nocache"] * 1e3,
      "jax_cache_ms": med["jax_cache"] * 1e3,
      "speedup_nocache": med["torch"] / med["jax_nocache"],
      "speedup_cache": med["torch"] / med["jax_cache"],
      "torch_gflops": full / med["torch"] / 1e9,
      "jax_nocache_gflops": nocache / med["jax_nocache"] / 1e9,
      "jax_cache_gflops": cached / med["jax_cache"] / 1e9,
      "step_gflop_full": full / 1e9, "step_gflop_nocache": nocache / 1e9,
      "step_gflop_cached": cached / 1e9,
      "compile_cache_s": compile_s["jax_cache"], "compile_nocache_s": compile_s["jax_nocache"],
      "precompute_cache_s": steppers["jax_cache"][0].precompute_s,
      "first_loss_torch": torch_first, "first_loss_jax": jax_loss,
      "first_loss_rel_diff": abs(torch_first - jax_loss) / max(abs(torch_first), 1e-12),
      "times_s": {k: v for k, v in times.items()},
  }


def main():
  p = bc.base_parser(__doc__, "/tmp/bench_train.json")
  p.add_argument("--widths", type=int, nargs="+", default=[256, 512, 768, 1024])
  p.add_argument("--layers", type=int, default=8)
  p.add_argument("--layer", type=int, default=3, help="steered block (0-based)")
  p.add_argument("--vocab", type=int, default=bc.VOCAB)
  p.add_argument("--batch", type=int, default=bc.BATCH)
  p.add_argument("--seq", type=int, default=bc.SEQ_LEN)
  p.add_argument("--objectives", nargs="+", default=["lang", "simpo"])
  p.add_argument("--svs", nargs="+", default=["PrOSV", "FSSV"])
  p.add_argument("--fssv-widths", type=int, nargs="+", default=[256, 512],
                 help="widths at which FSSV is timed too (its step costs what PrOSV's does)")
  args = p.parse_args()
  if args.quick:
    args.widths, args.objectives, args.svs = [256], ["lang"], ["PrOSV", "FSSV"]
  threads = bc.set_threads()
  if args.max_load:
    bc.wait_for_quiet(args.max_load)
  info = bc.machine()
  print(f"machine: {info['cpu']}, {threads} threads for torch and XLA:CPU; load {info['loadavg_start']}")
  peak = bc.matmul_peak()
  print(f"fp32 matmul peak (2048^3): jax {peak['jax']:.0f} GFLOP/s, torch {peak['torch']:.0f} GFLOP/s")
  rows = []
  for width in args.widths:
    shape = bc.gemma2_shape(width, args.layers, args.vocab)
    hf, model, params = bc.build_pair(shape, seed=width)
    for objective in args.objectives:
      for sv_kind in args.svs:
        if sv_kind == "FSSV" and width not in args.fssv_widths:
          continue
        print(f"d={width} {objective} {sv_kind} ...", flush=True)
        row = bench_case(hf, model, params, shape, args.layer, objective, sv_kind, args)
        row["peak_gflops"] = peak["peak_gflops"]
        for k in ("torch", "jax_nocache", "jax_cache"):
          row[f"{k}_pct_peak"] = 100 * row[f"{k}_gflops"] / peak["peak_gflops"]
        row["loadavg"] = bc.loadavg()
        rows.append(row)
        print(bc.table([row], COLUMNS, "{:.3g}"), flush=True)
        bc.write_json(args.out, {"machine": info, "threads": threads, "matmul_peak": peak,
                                 "config": vars(args), "rows": rows, "loadavg_end": bc.loadavg()})
    del hf, model, params
  print("\n" + bc.table(rows, COLUMNS))
  print(f"\nms/step medians of {args.reps} interleaved runs; speedup = torch / steerjax; "
        f"%peak = counted matmul FLOPs (forward + input-gradient backward of the blocks that "
        f"run, and the head) / time / the measured fp32 matmul peak "
        f"({peak['peak_gflops']:.0f} GFLOP/s)")


COLUMNS = ["width", "objective", "sv", "torch_ms", "jax_nocache_ms", "jax_cache_ms",
           "speedup_nocache", "speedup_cache", "torch_pct_peak", "jax_nocache_pct_peak",
           "jax_cache_pct_peak", "compile_nocache_s", "compile_cache_s", "first_loss_rel_diff"]

if __name__ == "__main__":
  main()
