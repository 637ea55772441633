"""Whole-column benchmark: one Table 2 row (Lang, 12 epochs) for 500 Gemma-2-2B concepts,
timed at C concepts per train step and projected to the full column.

Random `gemma-2-2b` weights in bf16 (steering block 10, the prefix cache on, the
vocabulary-chunked loss), random tokens of the real shapes (72 examples of ~20 prompt + 128
response tokens per concept, batch 12 per concept). For each C in `--concepts`: the stacked
train step's median time, MFU (counted matmul FLOPs / time / the device's nominal dense bf16
peak), SVs per hour, the device's peak memory, decode tokens/s of 128-token answers at
batch 10 x C (C concepts' SVs at once, PrOSV), and the projected wall time of a 500-concept
column (train + 5,000 answers), next to the paper PoC's about 12 hours (one SV at a time).
`--auto` also reports the C that `steerjax.memory` picks from the device's memory. It checks
that the SVs of C concepts trained stacked equal those trained one at a time (bf16 model:
to bf16 rounding). `--smoke` runs a tiny model on any backend in seconds.

  PYTHONPATH=. python -m experiments.bench.column [--concepts 1 4 16 64] [--out FILE]
  PYTHONPATH=. python -m experiments.bench.column --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench import gpu
from steerjax import losses, memory
from steerjax.generate import generate
from steerjax.models import Decoder, preset
from steerjax.steering import SteerSpec, init_sv
from steerjax.train import (LoopConfig, StepConfig, fresh_state, optimizer_for, precompute,
                            prepare_data, train_concepts, train_step)

PAPER_POC_HOURS = 12.0          # ~1.5 min per Lang SV x 500 (paper's proof of concept)
COLUMN, ANSWERS_PER_CONCEPT, EXAMPLES, EPOCHS = 500, 10, 72, 12
quiet = lambda *a, **k: None


def concepts_data(cfg, count: int, examples: int, seq: int):
  out = []
  for c in range(count):
    d = gpu.random_data(cfg, examples, seq, seed=c)
    d.name = f"c{c}"
    out.append(d)
  return out


def bench_train(model, params, cfg, args, C, concepts, peak):
  spec = SteerSpec(args.layer, "f2+l2")
  step_cfg = StepConfig(objective="lang", batch_size=args.batch, epochs=EPOCHS)
  run_cfg = LoopConfig(prefix_cache="on", prefix_cache_max_bytes=1 << 40)
  data, n = prepare_data(concepts[:C], "lang", cfg.pad_id)
  arrays = jax.block_until_ready(precompute(model, params, spec, data, step_cfg, run_cfg,
                                            log=quiet))
  steps_per_sv = n // args.batch * EPOCHS
  tx, _ = optimizer_for(cfg.dim, step_cfg, run_cfg, steps_per_sv)
  box = {"state": fresh_state(step_cfg, run_cfg, cfg.dim, range(C), steps_per_sv)}
  group = jnp.asarray(np.repeat(np.arange(C), args.batch), jnp.int32)
  idx = jnp.asarray(np.repeat(np.arange(C) * n, args.batch)
                    + np.tile(np.arange(args.batch), C), jnp.int32)

  def step():
    box["state"], metrics = train_step(box["state"], model, spec, step_cfg, C, tx, params,
                                       arrays, idx, group)
    return float(metrics["loss"])

  t0 = time.perf_counter()
  step()
  compile_s = time.perf_counter() - t0
  med, _ = gpu.timed_steps(step, args.steps)
  flops = gpu.step_flops(cfg, C * args.batch, data["pos"]["tokens"].shape[1], args.layer, True,
                         losses.OBJECTIVES["lang"].passes, data["pos"]["at"].shape[1])
  return {"C": C, "step_ms": med * 1e3, "compile_s": max(compile_s - med, 0.0),
          "tflops": flops / med / 1e12, "mfu": flops / med / 1e12 / peak if peak else None,
          "svs_per_hour": 3600.0 * C / (steps_per_sv * med), "steps_per_sv": steps_per_sv,
          "train_column_h": COLUMN / C * steps_per_sv * med / 3600.0}


def bench_decode(model, params, cfg, args, C):
  rng = np.random.default_rng(7)
  bos = cfg.bos_id or 2
  B = ANSWERS_PER_CONCEPT * C
  prompts = [[bos] + rng.integers(3, cfg.vocab_size, 20).tolist() for _ in range(B)]
  sv = init_sv(jax.random.key(3), cfg.dim, 4.0, 8.0, concepts=C)
  ids = np.repeat(np.arange(C), ANSWERS_PER_CONCEPT)
  run = lambda: generate(model, params, prompts, max_new_tokens=args.new, stop_ids=(), sv=sv,
                         spec=SteerSpec(args.layer, "f2+l2"), concept_ids=ids)
  run()
  med, _ = gpu.timed_steps(run, args.decode_reps)
  return {"decode_batch": B, "decode_tok_s": B * args.new / med,
          "generate_column_h": COLUMN / C * med / 3600.0}


def check_stacked_equals_alone(model, params, cfg, args, concepts, C, workdir):
  """Largest relative difference of the SVs of C concepts trained stacked vs alone."""
  spec = SteerSpec(args.layer, "f2+l2")
  step_cfg = StepConfig(objective="lang", batch_size=args.batch, epochs=1)
  run_cfg = LoopConfig(max_steps=args.check_steps, log_every=1000, checkpoint_every=1000)
  together = train_concepts(model, params, spec, concepts[:C], range(C), step_cfg, run_cfg,
                            os.path.join(workdir, "stacked"), log=quiet)
  worst = 0.0
  for k in range(C):
    alone = train_concepts(model, params, spec, [concepts[k]], [k], step_cfg, run_cfg,
                           os.path.join(workdir, f"alone{k}"), log=quiet)
    a, b = together["direction"][k], alone["direction"][0]
    worst = max(worst, float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)))
  return worst


def parse():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="/tmp/bench_column.json")
  p.add_argument("--preset", default="gemma-2-2b")
  p.add_argument("--layer", type=int, default=10)
  p.add_argument("--concepts", type=int, nargs="+", default=[1, 4, 16, 64])
  p.add_argument("--batch", type=int, default=12)
  p.add_argument("--seq", type=int, default=148, help="tokens per example (~20 + 128)")
  p.add_argument("--steps", type=int, default=5, help="timed steps per C")
  p.add_argument("--new", type=int, default=128)
  p.add_argument("--decode-reps", type=int, default=2)
  p.add_argument("--check", type=int, default=16, help="C of the stacked-vs-alone check (0: off)")
  p.add_argument("--check-steps", type=int, default=3)
  p.add_argument("--auto", action="store_true", help="also report steerjax.memory's choice")
  p.add_argument("--peak-tflops", type=float, default=0.0)
  p.add_argument("--smoke", action="store_true")
  return p.parse_args()


def main():
  args = parse()
  cfg = preset(args.preset)
  if args.smoke:
    cfg = gpu.smoke_config(cfg)
    args.layer, args.concepts, args.steps, args.new = 1, [1, 2], 1, 8
    args.decode_reps, args.check, args.seq = 1, 2, 48
  device = jax.devices()[0]
  peak, peak_source = gpu.nominal_peak(device, args.peak_tflops)
  model = Decoder(cfg, jnp.bfloat16, vocab_chunk=min(32768, cfg.vocab_size))
  params = gpu.random_params(model, 0)
  concepts = concepts_data(cfg, max(args.concepts + [args.check]), EXAMPLES if not args.smoke
                           else 24, args.seq)
  rows = []
  for C in args.concepts:
    row = bench_train(model, params, cfg, args, C, concepts, peak)
    row.update(bench_decode(model, params, cfg, args, C))
    row["column_h"] = row["train_column_h"] + row["generate_column_h"]
    row["vs_paper_poc"] = PAPER_POC_HOURS / row["column_h"]
    row["peak_memory"] = gpu.peak_memory(device)
    rows.append(row)
    print(gpu.table([row], ["C", "step_ms", "mfu", "svs_per_hour", "decode_tok_s", "column_h",
                            "vs_paper_poc"]), flush=True)
  result = {"device": str(device), "device_kind": getattr(device, "device_kind", ""),
            "peak_tflops": peak, "peak_source": peak_source, "jax": jax.__version__,
            "date": time.strftime("%Y-%m-%d"), "preset": args.preset, "rows": rows}
  if args.auto:
    step_cfg = StepConfig(objective="lang", batch_size=args.batch, epochs=EPOCHS)
    result["auto_concepts_per_step"] = memory.pick_concepts_per_step(
        model, params, SteerSpec(args.layer, "f2+l2"), step_cfg, LoopConfig(prefix_cache="on"),
        concepts, most=max(args.concepts))
  if args.check:
    import tempfile
    with tempfile.TemporaryDirectory() as d:
      result["stacked_vs_alone_rel_diff"] = check_stacked_equals_alone(
          model, params, cfg, args, concepts, args.check, d)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  print(gpu.table(rows, ["C", "step_ms", "compile_s", "tflops", "mfu", "svs_per_hour",
                         "decode_batch", "decode_tok_s", "train_column_h", "generate_column_h",
                         "column_h", "vs_paper_poc"]))
  print(f"stacked vs alone (C={args.check}): max relative SV difference "
        f"{result.get('stacked_vs_alone_rel_diff')}; wrote {args.out}")


if __name__ == "__main__":
  main()
