"""The `attack` job (paper Table 18, Fig. 6): steering under a concept-suppressing prompt.

  python -m steerjax.main --config=configs/axbench_gemma2_2b.py --workdir=runs/g2b_attack \
      --config.job=attack --config.attack.svs_from=runs/g2b_l10 \
      --config.attack.utility_from=runs/g2b_utility

Each concept's 10 test instructions are rewritten to demand that the concept be avoided
(the authors' released `suppression_prompt_blended.parquet`, else written by the judge with
our own request and stored); the model answers the rewritten instruction, the prompting
baseline as `eval.prompt_template` with the steering prompt and the rewritten instruction;
the judge rates against the original instruction, with the AxBench protocol. With
`attack.utility_from` (a utility job's workdir) it also writes `tradeoff.{md,png}`: accuracy
against the score under attack, one point per row.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Dict, List

import numpy as np

from steerjax import paths
from steerjax.data import released
from steerjax.data.benchmark import N_EVAL, concept_name
from steerjax.eval import judges, report
from steerjax.runtime import plans
from steerjax.runtime import rows as table_rows
from steerjax.runtime.session import open_session

SUPPRESSION_REQUEST = """\
Rewrite the instruction below so that, besides asking for what it asks, it tells the \
assistant to keep away from one concept: the answer must not mention or allude to it. \
Keep the original request intact and natural.

Concept: {concept}
Instruction: {instruction}

Write only the rewritten instruction."""


def plan(config) -> list:
  a = config.attack
  rows = table_rows.parse_rows(config, a.rows)
  n = a.num_concepts or config.data.num_concepts or 500
  prompt = plans.prompt_length(config)[0]
  out = [plans.method_cost(dataclasses.replace(r.method, name=r.name), n, 0, 0, N_EVAL,
                           config.eval.max_new_tokens, prompt_tokens=prompt) for r in rows]
  for row in out:
    row["svs"] = 0   # read from the axbench run, not trained
  return out


def attack_prompts(session, concepts, log=print) -> Dict[int, List[str]]:
  """{concept_id: the 10 rewritten instructions}: released ones, the rest written by the
  judge (stored, so asked once)."""
  cfg = session.config
  out = {}
  if cfg.attack.prompts == "released":
    table = released.frame("suppression", cfg.data.task, session.cache_root, cfg.data.released_repo)
    found = released.by_concept(table, concepts, log, "suppression prompts")
    for cid, rows in found.items():
      by_original = dict(zip(rows["original_prompt"], rows["steered_prompt"]))
      if all(x in by_original for x in session.bench.instructions[cid]):
        out[cid] = [by_original[x] for x in session.bench.instructions[cid]]
  todo = [(c, i, x) for c in concepts if c.concept_id not in out
          for i, x in enumerate(session.bench.instructions[c.concept_id])]
  kind, request = session.request("suppression_prompt", SUPPRESSION_REQUEST)
  texts = session.written(kind, [((c.name, x), request.format(concept=c.name, instruction=x))
                                 for c, _, x in todo])
  for (c, i, _), text in zip(todo, texts):
    out.setdefault(c.concept_id, [None] * N_EVAL)[i] = text
  return out


def run(config, workdir: str, log=print, bundle=None, judge=None) -> dict:
  """Every row under attack; returns {"rows": summaries}."""
  t0 = time.time()
  os.makedirs(workdir, exist_ok=True)
  a = config.attack
  rows = table_rows.configured_rows(config, "attack")
  with open_session(config, workdir, log, bundle, judge) as session:
    ctx = session.ctx
    concepts = session.bench.concepts[:a.num_concepts or None]
    session.bench = dataclasses.replace(session.bench, concepts=concepts)
    session.inputs = attack_prompts(session, concepts, log)

    def row_svs(r):
      return lambda: {concept_name(c): table_rows.load_sv(a.svs_from, r, c, ctx.model.cfg)
                      for c in concepts}
    records = session.evaluate_methods([(dataclasses.replace(r.method, name=r.name), row_svs(r))
                                        for r in rows])
    all_rows = []
    summary = [report.score(r.name, records[r.name], False, all_rows) for r in rows]
    extra = {"judge": session.judge.stats.as_dict(), "seconds": round(time.time() - t0, 1)}
  folder = report.results_folder(config, workdir)
  title = (f"suppression attack: {config.model.path}, layer {config.steer.layer}, "
           f"{len(concepts)} concept(s)")
  report.write(folder, title, summary, all_rows, records, extra=extra,
               prices=judges.prices(config))
  if a.utility_from:
    tradeoff(folder, summary, a.utility_from)
  return {"rows": summary, "results_dir": folder}


def tradeoff(folder: str, attack_summary: List[dict], utility_from: str):
  """tradeoff.md / .png: benchmark accuracy (mean of tinyMMLU and tinyGSM8K) against the
  steering score under attack, one point per row."""
  path = utility_from if utility_from.endswith(".json") else os.path.join(
      utility_from, "results", "utility.json")
  with open(path) as f:
    utility = json.load(f)
  points = []
  for s in attack_summary:
    u = utility.get(s["method"])
    if u is None:
      continue
    accuracy = np.mean([u[k] for k in ("mmlu_judge", "gsm8k") if k in u]
                       or [u[k] for k in ("mmlu_letter", "gsm8k") if k in u])
    points.append({"row": s["method"], "accuracy": float(accuracy),
                   "score_under_attack": s["overall"]})
  caption = ("The paper's reading (its Fig. 6): a prompt-only SV keeps the unsteered model's "
             "accuracy and stays robust to the suppressing prompt, so PrOSV points lie on a "
             "better accuracy-vs-robustness front than FSSVs at any factor scale, which trade "
             "one for the other.")
  paths.write_atomic(os.path.join(folder, "tradeoff.md"),
                     "# accuracy vs steering score under attack\n\n"
                     + report.rounded_table(points) + f"\n\n{caption}\n")
  report.scatter(os.path.join(folder, "tradeoff.png"), points, "accuracy", "score_under_attack",
                 "row", "accuracy (mean of tinyMMLU and tinyGSM8K)",
                 "overall steering score under attack (0..2)")
