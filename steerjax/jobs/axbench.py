"""The `axbench` job (paper Table 2): train -> generate -> judge -> score, resumable per concept.

  python -m steerjax.main --config=configs/axbench_gemma2_2b.py --workdir=runs/g2b_l10

Per method and concept, 10 AlpacaEval instructions (AxBench's draw) are answered by the
steered model (temperature 1.0, 128 new tokens) and rated by an LLM judge on concept,
instruction and fluency. Factor-grid methods generate at every factor, pick per concept the
factor with the best mean on ids 0..4 and report ids 5..9; jointly trained SVs and prompting
report all 10. Outputs under `workdir`: `methods/` (see steerjax.runtime.session) and
`results/` (results.md, results.json, summary.{csv,json}, per_concept.csv, *.png).
"""

from __future__ import annotations

import time
from typing import List

from steerjax import methods
from steerjax.data.benchmark import N_EVAL
from steerjax.eval import judges, report
from steerjax.runtime import plans
from steerjax.runtime.session import open_session


def plan(config) -> List[dict]:
  """Expected work per method without loading anything. Token counts assume prompts of
  `plans.prompt_length` and full `max_response_tokens` responses (an upper bound)."""
  d = config.data
  prompt_tokens = plans.prompt_length(config)[0]
  n = d.num_concepts or 500
  rows, neutral = [], set()
  for m in methods.of_config(config):
    if methods.needs_neutral(m):
      neutral.add(m.neutral)
    row = plans.method_cost(m, n, d.n_train, prompt_tokens + d.max_response_tokens, N_EVAL,
                            config.eval.max_new_tokens, prompt_tokens=prompt_tokens)
    if m.kind == "prompting" and config.eval.steering_prompts == "released":
      row["judge_calls"] -= n    # the steering prompts are read, not written
    rows.append(row)
  for source in sorted(neutral):   # released: none, unless the file lacks concepts
    count = n * d.n_train
    rows.append({"method": f"neutral y ({source})",
                 "generations": count if source == "model" else 0,
                 "prompt_tokens": count * prompt_tokens if source == "model" else 0,
                 "new_tokens": count * d.model_neutral_tokens if source == "model" else 0,
                 "judge_calls": count if source == "judge" else 0})
  return rows


def evaluate_methods(session, all_methods, log=print):
  """Train (where needed), generate, judge and score every method, the judge rating one
  chunk while the next is made; returns (summary rows, per-concept rows, {method: records},
  {method: grid})."""
  def trainer(k, method):
    def train():
      log(f"[{k + 1}/{len(all_methods)}] training {method.name}")
      return session.train(method)
    return train
  records = session.evaluate_methods([(m, trainer(k, m)) for k, m in enumerate(all_methods)])
  summary, rows = [], []
  for method in all_methods:
    summary.append(report.score(method.name, records[method.name], method.grid is not None,
                                rows))
  grids = {m.name: m.grid for m in all_methods if m.grid is not None}
  return summary, rows, records, grids


def run(config, workdir: str, log=print, bundle=None, judge=None) -> dict:
  """Every method of `config.methods` on the configured concepts; returns summary.json's dict."""
  t0 = time.time()
  all_methods = methods.of_config(config)
  with open_session(config, workdir, log, bundle, judge) as session:
    ctx, judge = session.ctx, session.judge
    log(f"axbench: {len(all_methods)} method(s) x {len(session.bench.concepts)} concept(s) on "
        f"{config.model.path} (width {ctx.model.cfg.dim}, layer {config.steer.layer}); "
        f"judge {judge!r}")
    summary, rows, records, grids = evaluate_methods(session, all_methods, log)
    extra = {"judge": judge.stats.as_dict(),
             "text_store": {"hits": session.store.hits, "misses": session.store.misses},
             "seconds": round(time.time() - t0, 1)}
    d = config.data
    title = (f"AxBench {d.suite} {d.task}: {config.model.path}, layer {config.steer.layer}, "
             f"concepts {d.first_concept}..{d.first_concept + summary[0]['concepts'] - 1}")
    folder = report.results_folder(config, workdir)
    markdown = report.write(folder, title, summary, rows, records, grids, extra,
                            prices=judges.prices(config))
  log("\n" + markdown)
  log(f"wrote {folder} in {time.time() - t0:.0f} s")
  return dict(extra, methods=summary, results_dir=folder)
