"""Steered decoding speed: steerjax `generate` vs `transformers` `model.generate` with a hook.

Same Gemma-2 architecture and the same fp32 weights in both frameworks; greedy decoding of
exactly `--new` tokens (steerjax: no stop ids; transformers: min_new_tokens = max_new_tokens)
from the same left-padded prompts. Modes: unsteered, PrOSV (f2+l2, prefill only) and FSSV
(all positions, every decode step). All nine timed variants (steerjax generate, steerjax
decode loop alone, transformers generate; three modes each) are interleaved in every round.

Reported: whole-call tokens/s (prefill + decode) for both frameworks, steerjax's decode loop
alone (the prefill done beforehand), ratios, the first-call compile time of each steerjax
mode, how many greedy tokens the two frameworks agree on, and XLA's FLOP and byte counts of
each mode's compiled decode loop relative to the unsteered one (timing noise on a shared
CPU is larger than the 2% / 5% budgets; the counts are not noisy).

  PYTHONPATH=. python -m experiments.bench.generate [--quick] [--out /tmp/bench_generate.json]
"""

from __future__ import annotations

import time

from experiments.bench import common as bc

if __name__ == "__main__":
  bc.setup_env()  # before torch loads

import jax  # noqa: E402
import numpy as np  # noqa: E402

from experiments.bench import torch_reference as tr  # noqa: E402
from steerjax.generate import decode, generate, left_pad, prefill  # noqa: E402
from steerjax.steering import SteerSpec, init_sv  # noqa: E402

MODES = {"unsteered": None, "PrOSV": "f2+l2", "FSSV": "all"}
LAYER = 3   # steered block (0-based)


def prompts_for(batch: int, vocab: int, seed: int = 3):
  """Prompts of 16..24 tokens starting with BOS (id 2)."""
  rng = np.random.default_rng(seed)
  return [[2] + rng.integers(3, vocab, int(rng.integers(15, 24))).tolist() for _ in range(batch)]


def jax_generate_fn(model, params, prompts, new, sv, positions):
  spec = None if positions is None else SteerSpec(LAYER, positions)
  kw = {} if spec is None else {"sv": sv, "spec": spec}
  return lambda: generate(model, params, prompts, max_new_tokens=new, stop_ids=(), **kw)


def jax_decode_fn(model, params, prompts, new, sv, positions):
  """steerjax's decode loop alone, from a prefill computed once here."""
  spec = None if positions is None else SteerSpec(LAYER, positions)
  sv = None if spec is None else sv
  tokens, valid = left_pad(prompts, model.cfg.pad_id)
  size = tokens.shape[1] + new
  logits, cache = prefill(model, spec, size, params, sv, None, tokens, valid)
  rng = jax.random.key(0)

  def run():
    out, _, n = decode(model, spec, new, 0.0, 1.0, (), False, params, sv, None, logits, cache, rng)
    return np.asarray(out)
  return run


def decode_cost(model, params, prompts, new, sv, positions) -> dict:
  """XLA's own FLOP and byte counts of steerjax's compiled decode loop for one mode: equal
  counts mean the loop does the same work, whatever the timing noise of a shared CPU."""
  spec = None if positions is None else SteerSpec(LAYER, positions)
  sv = None if spec is None else sv
  tokens, valid = left_pad(prompts, model.cfg.pad_id)
  logits, cache = prefill(model, spec, tokens.shape[1] + new, params, sv, None, tokens, valid)
  compiled = decode.lower(model, spec, new, 0.0, 1.0, (), False, params, sv, None, logits, cache,
                          jax.random.key(0)).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {"flops": float(cost.get("flops", -1)), "bytes": float(cost.get("bytes accessed", -1))}


def torch_generate_fn(hf, prompts, new, svt, positions):
  ids, mask = tr.left_pad(prompts)
  sv = None if positions is None else svt
  return lambda: tr.generate(hf, ids, mask, new, sv=sv, positions=positions or "all").numpy()


def agreement(a_rows, b_rows) -> float:
  """Mean number of leading tokens on which two greedy continuations agree."""
  lead = []
  for a, b in zip(a_rows, b_rows):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
      n += 1
    lead.append(n)
  return float(np.mean(lead))


def run(args):
  shape = bc.gemma2_shape(args.dim, args.layers, args.vocab)
  hf, model, params = bc.build_pair(shape, seed=args.dim)
  prompts = prompts_for(args.batch, args.vocab)
  sv = init_sv(jax.random.key(1), args.dim, beta=4.0, lam=8.0)
  svt = tr.SteeringVector(float(sv["factor"]), np.asarray(sv["direction"]))
  svt.active = False
  hook = tr.SteeringHook(hf, LAYER, svt)
  fns, compile_s, outputs = {}, {}, {}
  for mode, positions in MODES.items():
    g = jax_generate_fn(model, params, prompts, args.new, sv, positions)
    t0 = time.perf_counter()
    outputs[("jax", mode)] = g()
    compile_s[mode] = time.perf_counter() - t0
    fns[f"jax_{mode}"] = g
    fns[f"jaxdecode_{mode}"] = jax_decode_fn(model, params, prompts, args.new, sv, positions)
    t = torch_generate_fn(hf, prompts, args.new, svt, positions)
    outputs[("torch", mode)] = t().tolist()
    fns[f"torch_{mode}"] = t
  times = bc.interleaved(fns, args.reps, warmup=0, log=print)   # each already ran once
  hook.remove()
  cost = {mode: decode_cost(model, params, prompts, args.new, sv, positions)
          for mode, positions in MODES.items()} if args.cost else {}
  med = {k: bc.median(v) for k, v in times.items()}
  tokens = args.batch * args.new
  rows = []
  for mode in MODES:
    j, d, t = med[f"jax_{mode}"], med[f"jaxdecode_{mode}"], med[f"torch_{mode}"]
    rows.append({
        "dim": args.dim, "mode": mode, "jax_tok_s": tokens / j, "torch_tok_s": tokens / t,
        "speedup": t / j, "jax_decode_tok_s": tokens / d,
        "decode_vs_unsteered": d / med["jaxdecode_unsteered"] - 1.0,
        "generate_vs_unsteered": j / med["jax_unsteered"] - 1.0,
        "torch_vs_unsteered": t / med["torch_unsteered"] - 1.0,
        "jax_compile_s": max(compile_s[mode] - j, 0.0),
        "agree_tokens": agreement(outputs[("jax", mode)], outputs[("torch", mode)])})
    if cost:
      base = cost["unsteered"]
      rows[-1].update(decode_xla_flops=cost[mode]["flops"], decode_xla_bytes=cost[mode]["bytes"],
                      decode_flops_vs_unsteered=cost[mode]["flops"] / base["flops"] - 1.0,
                      decode_bytes_vs_unsteered=cost[mode]["bytes"] / base["bytes"] - 1.0)
  return rows, {k: v for k, v in times.items()}


COLUMNS = ["dim", "mode", "jax_tok_s", "torch_tok_s", "speedup", "jax_decode_tok_s",
           "decode_vs_unsteered", "generate_vs_unsteered", "torch_vs_unsteered",
           "jax_compile_s", "agree_tokens", "decode_flops_vs_unsteered",
           "decode_bytes_vs_unsteered"]


def main():
  p = bc.base_parser(__doc__, "/tmp/bench_generate.json")
  p.add_argument("--dims", type=int, nargs="+", default=[512])
  p.add_argument("--layers", type=int, default=8)
  p.add_argument("--vocab", type=int, default=bc.VOCAB)
  p.add_argument("--batch", type=int, default=10)
  p.add_argument("--new", type=int, default=128, help="new tokens per prompt")
  p.add_argument("--no-cost", dest="cost", action="store_false",
                 help="skip XLA's cost analysis of the decode loops (saves three compiles)")
  args = p.parse_args()
  if args.quick:
    args.dims = [256]
  threads = bc.set_threads()
  if args.max_load:
    bc.wait_for_quiet(args.max_load)
  info = bc.machine()
  print(f"machine: {info['cpu']}, {threads} threads for torch and XLA:CPU; load {info['loadavg_start']}")
  rows, raw = [], {}
  for dim in args.dims:
    args.dim = dim
    print(f"d={dim}: batch {args.batch}, {args.new} new tokens, steering block {LAYER}", flush=True)
    part, raw[dim] = run(args)
    for r in part:
      r["loadavg"] = bc.loadavg()
    rows += part
    print(bc.table(part, COLUMNS), flush=True)
  print("\n" + bc.table(rows, COLUMNS))
  print(f"\ntokens/s = batch x new tokens / median seconds of {args.reps} interleaved calls; "
        "speedup = transformers time / steerjax time; *_vs_unsteered = relative slowdown")
  bc.write_json(args.out, {"machine": info, "threads": threads,
                           "config": {k: v for k, v in vars(args).items() if k != "dim"},
                           "rows": rows, "times_s": raw, "loadavg_end": bc.loadavg()})


if __name__ == "__main__":
  main()
