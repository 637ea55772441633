"""Concept-batched training throughput: SVs per hour for C concepts trained in one stacked run.

stories260K (llama2.c, width 64, 5 blocks) steered at block `--layer`; each concept has 72
synthetic examples (prompt ~20 tokens with BOS + a 64-token response, TinyStories-like
lengths), batch 12 per concept, `--epochs` epochs, Lang, PrOSV f2+l2. One call of
`train_concepts` per run (data packing, prefix cache, all steps, the final SVs back on the
host); the first run of each C also compiles and is reported separately. Runs of all C are
interleaved in every round.

  PYTHONPATH=. python -m experiments.bench.concepts [--quick] [--out /tmp/bench_concepts.json]
"""

from __future__ import annotations

import os
import shutil
import tempfile

from experiments.bench import common as bc
from steerjax.models import load
from steerjax.steering import SteerSpec
from steerjax.train import LoopConfig, StepConfig, train_concepts

STORIES = os.path.join("stories260K", "stories260K.bin")
EXAMPLES = 72
quiet = lambda *a, **k: None


def make_concepts(count: int, vocab: int, response_len: int):
  return [bc.concept_data(f"concept{i}", EXAMPLES, vocab, seed=100 + i, bos=1,
                          response_len=response_len)
          for i in range(count)]


def runner(model, params, spec, concepts, step_cfg, run_cfg, root):
  """A callable that trains all `concepts` together from scratch in a fresh workdir."""
  def run():
    workdir = tempfile.mkdtemp(dir=root)
    try:
      return train_concepts(model, params, spec, concepts, list(range(len(concepts))), step_cfg,
                            run_cfg, workdir, log=quiet)
    finally:
      shutil.rmtree(workdir, ignore_errors=True)
  return run


def main():
  p = bc.base_parser(__doc__, "/tmp/bench_concepts.json")
  p.add_argument("--concepts", type=int, nargs="+", default=[1, 4, 16, 64])
  p.add_argument("--epochs", type=int, default=2)
  p.add_argument("--layer", type=int, default=2)
  p.add_argument("--response", type=int, default=64, help="response tokens per example")
  p.add_argument("--objective", default="lang")
  p.add_argument("--prefix-cache", default="on")
  args = p.parse_args()
  if args.quick:
    args.concepts, args.epochs = [1, 4, 16], 1
  bc.setup_env()
  threads = bc.set_threads()
  if args.max_load:
    bc.wait_for_quiet(args.max_load)
  info = bc.machine()
  print(f"machine: {info['cpu']}, {threads} threads for XLA:CPU; load {info['loadavg_start']}")
  model, params = load(os.path.join(os.environ["STEERJAX_DATA"], STORIES))
  cfg = model.cfg
  spec = SteerSpec(args.layer, "f2+l2")
  step_cfg = StepConfig(objective=args.objective, batch_size=bc.BATCH, epochs=args.epochs)
  run_cfg = LoopConfig(prefix_cache=args.prefix_cache, log_every=10**6, checkpoint_every=10**6)
  steps = (EXAMPLES // bc.BATCH) * args.epochs
  root = tempfile.mkdtemp(prefix="bench_concepts_")
  fns, first = {}, {}
  for c in args.concepts:
    fn = runner(model, params, spec, make_concepts(c, cfg.vocab_size, args.response), step_cfg,
                run_cfg, root)
    first[c] = bc.time_once(fn)
    fns[c] = fn
  times = bc.interleaved({f"C={c}": fns[c] for c in args.concepts}, args.reps, warmup=0,
                         log=print)
  shutil.rmtree(root, ignore_errors=True)
  rows = []
  base = None
  for c in args.concepts:
    med = bc.median(times[f"C={c}"])
    per_hour = c / med * 3600
    base = base or per_hour
    rows.append({"concepts": c, "run_s": med, "step_ms": med / steps * 1e3,
                 "svs_per_hour": per_hour, "vs_C1": per_hour / base,
                 "compile_s": max(first[c] - med, 0.0)})
  cols = ["concepts", "run_s", "step_ms", "svs_per_hour", "vs_C1", "compile_s"]
  print("\n" + bc.table(rows, cols))
  print(f"\n{EXAMPLES} examples/concept, batch {bc.BATCH}/concept, {args.epochs} epochs = {steps} "
        f"steps; medians of {args.reps} interleaved runs (compile excluded: first run - median)")
  bc.write_json(args.out, {"machine": info, "threads": threads, "config": vars(args),
                           "steps": steps, "rows": rows, "times_s": times,
                           "loadavg_end": bc.loadavg()})


if __name__ == "__main__":
  main()
