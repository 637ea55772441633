"""Time to train one whole SV: steerjax (prefix cache on / off) vs the PyTorch reference.

A Gemma-2-like model whose blocks up to the steered one are ~40% of the model (10 blocks,
steering block 3, so blocks 0..3 run once per example with the prefix cache), the same fp32
weights in both frameworks; 72 examples (prompt ~20 + response ~140 tokens), batch 12,
12 epochs = 72 steps, Lang and SimPO, PrOSV f2+l2 with the paper's Gemma-2-2B settings.

steerjax's time is one `train_concepts` call: packing, unsteered reference log-probs (SimPO),
the prefix cache when on, every step, the SV back on the host. The reference's time is its
reference log-probs (SimPO) and every step, batches in the same order. Each steerjax variant
runs once first to compile (reported separately as first run - median); the three variants
are interleaved in every round. The final SVs of the two frameworks are compared.

  PYTHONPATH=. python -m experiments.bench.whole_sv [--quick] [--out /tmp/bench_whole_sv.json]
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time

from experiments.bench import common as bc

if __name__ == "__main__":
  bc.setup_env()  # before torch loads

import numpy as np  # noqa: E402
import torch  # noqa: E402

from experiments.bench import torch_reference as tr  # noqa: E402
from steerjax.data.batching import batch_indices  # noqa: E402
from steerjax.steering import SteerSpec  # noqa: E402
from steerjax.train import (LoopConfig, StepConfig, initial_sv, prepare_data,  # noqa: E402
                            train_concepts)

EXAMPLES = 72
# Table 11, Gemma-2-2B PrOSV: beta, lam, lr_factor, lr_direction.
SETTINGS = {"lang": (4.0, 8.0, 10.0, 0.04), "simpo": (4.0, 8.0, 20.0, 0.04)}
quiet = lambda *a, **k: None


def options(objective: str, epochs: int, cache: str):
  """(StepConfig, LoopConfig) of one benchmark run."""
  beta, lam, lr_f, lr_d = SETTINGS[objective]
  step_cfg = StepConfig(objective=objective, batch_size=bc.BATCH, epochs=epochs)
  run_cfg = LoopConfig(beta=beta, lam=lam, lr_factor=lr_f, lr_direction=lr_d, prefix_cache=cache,
                      log_every=10**6, checkpoint_every=10**6)
  return step_cfg, run_cfg


def jax_run(model, params, spec, concept, step_cfg, run_cfg, root):
  def run():
    workdir = tempfile.mkdtemp(dir=root)
    try:
      return train_concepts(model, params, spec, [concept], [0], step_cfg, run_cfg, workdir,
                            log=quiet)
    finally:
      shutil.rmtree(workdir, ignore_errors=True)
  return run


def torch_run(hf, layer, positions, data, step_cfg, run_cfg, sv0, max_steps=0):
  """A callable that trains one SV with the reference, from `sv0`, and returns it."""
  seqs = {name: tr.to_torch(seq) for name, seq in data.items()}
  per_epoch = EXAMPLES // step_cfg.batch_size
  total = per_epoch * step_cfg.epochs

  def run():
    trainer = tr.TorchTrainer(hf, layer, positions, step_cfg.objective, float(sv0["factor"][0]),
                              sv0["direction"][0], run_cfg.lr_factor, run_cfg.lr_direction,
                              total, step_cfg.clip_direction)
    try:
      batches = {name: dict(seq) for name, seq in seqs.items()}
      if step_cfg.objective == "simpo":
        for name in ("pos", "neg"):
          batches[name]["ref"] = trainer.reference_logprobs(seqs[name])
      for step in range(max_steps or total):
        idx = torch.as_tensor(batch_indices(EXAMPLES, step_cfg.batch_size, run_cfg.seed, step))
        trainer.step({name: {k: v[idx] for k, v in seq.items()} for name, seq in batches.items()})
      return {"factor": trainer.sv.factor.detach().numpy()[None],
              "direction": trainer.sv.direction.detach().numpy()[None]}
    finally:
      trainer.close()
  return run


def compare(a, b) -> dict:
  """How close two trained SVs are: factor relative difference and direction cosine."""
  fa, fb = float(a["factor"][0]), float(b["factor"][0])
  va, vb = np.asarray(a["direction"][0]), np.asarray(b["direction"][0])
  cos = float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))
  return {"factor_rel_diff": abs(fa - fb) / abs(fb), "direction_cosine": cos,
          "norm_rel_diff": abs(np.linalg.norm(va) - np.linalg.norm(vb)) / np.linalg.norm(vb)}


def bench_objective(hf, model, params, shape, objective, args):
  spec = SteerSpec(args.layer, "f2+l2")
  concept = bc.concept_data("whole", EXAMPLES, shape["vocab"], seed=7)
  step_cfg, run_cfg = options(objective, args.epochs, "on")
  data, _ = prepare_data([concept], objective, model.cfg.pad_id)
  sv0 = {k: np.asarray(v) for k, v in initial_sv(step_cfg, run_cfg, shape["dim"], [0]).items()}
  root = tempfile.mkdtemp(prefix="bench_whole_sv_")
  fns = {"torch": torch_run(hf, args.layer, spec.positions, data, step_cfg, run_cfg, sv0)}
  first, outputs = {}, {}
  for name, cache in (("jax_cache", "on"), ("jax_nocache", "off")):
    fns[name] = jax_run(model, params, spec, concept, step_cfg,
                        dataclasses.replace(run_cfg, prefix_cache=cache), root)
    t0 = time.perf_counter()
    outputs[name] = fns[name]()
    first[name] = time.perf_counter() - t0
  torch_run(hf, args.layer, spec.positions, data, step_cfg, run_cfg, sv0, max_steps=1)()  # warm-up
  outputs["torch"] = None
  times = bc.interleaved(fns, args.reps, warmup=0, log=print)
  outputs["torch"] = fns["torch"]()
  shutil.rmtree(root, ignore_errors=True)
  med = {k: bc.median(v) for k, v in times.items()}
  steps = (EXAMPLES // bc.BATCH) * args.epochs
  row = {"objective": objective, "dim": shape["dim"], "steps": steps,
         "torch_s": med["torch"], "jax_cache_s": med["jax_cache"],
         "jax_nocache_s": med["jax_nocache"],
         "speedup_cache": med["torch"] / med["jax_cache"],
         "speedup_nocache": med["torch"] / med["jax_nocache"],
         "cache_gain": med["jax_nocache"] / med["jax_cache"],
         "compile_cache_s": max(first["jax_cache"] - med["jax_cache"], 0.0),
         "compile_nocache_s": max(first["jax_nocache"] - med["jax_nocache"], 0.0),
         "times_s": times}
  row.update({f"sv_{k}": v for k, v in compare(outputs["jax_cache"], outputs["torch"]).items()})
  return row


COLUMNS = ["objective", "dim", "steps", "torch_s", "jax_cache_s", "jax_nocache_s", "speedup_cache",
           "speedup_nocache", "cache_gain", "compile_cache_s", "compile_nocache_s",
           "sv_factor_rel_diff", "sv_direction_cosine"]


def main():
  p = bc.base_parser(__doc__, "/tmp/bench_whole_sv.json")
  p.add_argument("--dim", type=int, default=128)
  p.add_argument("--layers", type=int, default=10)
  p.add_argument("--layer", type=int, default=3)
  p.add_argument("--vocab", type=int, default=4096)
  p.add_argument("--head-dim", type=int, default=64)
  p.add_argument("--epochs", type=int, default=12)
  p.add_argument("--objectives", nargs="+", default=["lang", "simpo"])
  args = p.parse_args()
  if args.quick:
    args.epochs, args.objectives = 2, ["lang"]
  threads = bc.set_threads()
  if args.max_load:
    bc.wait_for_quiet(args.max_load)
  info = bc.machine()
  print(f"machine: {info['cpu']}, {threads} threads for torch and XLA:CPU; load {info['loadavg_start']}")
  shape = bc.gemma2_shape(args.dim, args.layers, args.vocab, head_dim=args.head_dim)
  print(f"model: Gemma-2 layout, {shape}; steering block {args.layer} "
        f"({args.layer + 1}/{args.layers} blocks before and at the site)")
  hf, model, params = bc.build_pair(shape, seed=11)
  rows = []
  for objective in args.objectives:
    print(f"{objective} ...", flush=True)
    row = bench_objective(hf, model, params, shape, objective, args)
    row["loadavg"] = bc.loadavg()
    rows.append(row)
    print(bc.table([row], COLUMNS), flush=True)
  print("\n" + bc.table(rows, COLUMNS))
  print(f"\nseconds per whole SV ({EXAMPLES} examples, batch {bc.BATCH}, {args.epochs} epochs), "
        f"medians of {args.reps} interleaved runs; compile excluded and shown separately")
  bc.write_json(args.out, {"machine": info, "threads": threads, "shape": shape,
                           "config": vars(args), "rows": rows, "loadavg_end": bc.loadavg()})


if __name__ == "__main__":
  main()
