"""The `utility` job (paper Table 3 / 16, and Table 17's long-context steering score): what
steering costs the model on tinyMMLU and tinyGSM8K, per row (unsteered, prompting, SVs of an
axbench run at factor scales), averaged over concepts.

  python -m steerjax.main --config=configs/axbench_gemma2_2b.py --workdir=runs/g2b_utility \
      --config.job=utility --config.utility.svs_from=runs/g2b_l10

5-shot as multi-turn chat, greedy, 128 (MMLU) / 512 (GSM8K) new tokens; GSM8K scored by
the final number, MMLU by the judge on the generated answer and by the answer letter's
log-likelihood through lm-eval (steerjax.eval.utility). Resumable per (row, concept, task).
"""

from __future__ import annotations

import json
import os
import time
from typing import Dict, List

import numpy as np

from steerjax import paths
from steerjax.eval import report, scoring, utility
from steerjax.eval.templates import parse_rating
from steerjax.runtime import plans
from steerjax.runtime import rows as table_rows
from steerjax.runtime.session import open_session

TASKS = ("tinymmlu", "tinygsm8k")
PAPER_CONCEPTS = 10   # Table 16 averages the first 10 concepts (the authors' --max_concepts)
# --plan's estimates: a 5-shot prompt's text in tokens, and its chat turns (each pays the
# template's tokens); lm-eval scores each of MMLU's four answer letters as one sequence.
MMLU_PROMPT_TOKENS, GSM8K_PROMPT_TOKENS, SHOT_TURNS = 600, 1000, 6
MMLU_CHOICES = 4
COLUMNS = ("row", "concepts", "mmlu_judge", "mmlu_letter", "gsm8k", "gsm8k_flexible",
           "gsm8k_strict", "long_context")


def _concepts(config, bench):
  return bench.concepts[:config.utility.num_concepts or None]


def plan(config) -> list:
  """Per row: greedy answers to both tasks, lm-eval's four letter passes per tinyMMLU item,
  the judge's MMLU grades and long-context ratings. The unsteered row answers once but its
  GSM8K answers are rated against every concept."""
  u = config.utility
  rows = table_rows.parse_rows(config, u.rows)
  n = u.num_concepts or config.data.num_concepts or 500
  items = u.limit or 100
  template = plans.prompt_length(config)[0] - plans.INSTRUCTION_TOKENS
  mmlu_prompt = MMLU_PROMPT_TOKENS + SHOT_TURNS * template
  gsm8k_prompt = GSM8K_PROMPT_TOKENS + SHOT_TURNS * template
  out = []
  for r in rows:
    count = 1 if r.method.kind == "unsteered" else n
    judge = count * items * (1 if u.mmlu_judge else 0)
    judge += n * items * 3 if u.long_context_score else 0
    if r.method.kind == "prompting" and config.eval.steering_prompts == "judge":
      judge += n    # the steering prompts, written once per concept
    out.append({"method": r.name, "generations": count * items * len(TASKS),
                "prompt_tokens": count * items * (mmlu_prompt + gsm8k_prompt),
                "new_tokens": count * items * (u.mmlu_tokens + u.gsm8k_tokens),
                "scored_sequences": count * items * MMLU_CHOICES,
                "scored_tokens": count * items * MMLU_CHOICES * (MMLU_PROMPT_TOKENS + 1),
                "judge_calls": judge})
  return out


def _items(config, workdir: str) -> Dict[str, list]:
  """Test items per task, and a local JSON-lines copy for lm-eval's loader."""
  u, out = config.utility, {}
  for task in TASKS:
    items = utility.load_items(task, u[task], config.data_root or None)
    shots = []
    if task == "tinygsm8k" and "input_formatted" not in items[0]:
      shots, items = items[:5], items[5:]    # plain GSM8K rows: the first five are the shots
    items = items[:u.limit] if u.limit else items
    path = os.path.join(workdir, "items", f"{task}.jsonl")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
      for item in items:
        f.write(json.dumps({k: (v.tolist() if hasattr(v, "tolist") else v)
                            for k, v in item.items()}) + "\n")
    out[task] = (items, shots, path)
  return out


def letter_accuracy(ctx, path: str, sv=None, spec=None, steering_prompt: str = "") -> float:
  """lm-eval's multiple-choice letter accuracy on the items of `path` (tinyMMLU's schema),
  with one SV (or none) on."""
  from lm_eval import simple_evaluate
  from lm_eval.tasks import TaskManager
  from steerjax.eval.lm_eval_model import SteerjaxLM
  lm = SteerjaxLM(bundle=ctx.bundle, batch_size=ctx.config.eval.batch_size, sv_tree=sv,
                  spec=spec if sv is not None else None)
  out = simple_evaluate(model=lm, tasks=[utility.mmlu_task(path, steering_prompt)],
                        task_manager=TaskManager(), verbosity="ERROR")
  return float(out["results"]["steerjax_tinymmlu"]["acc,none"])


def evaluate_one(session, row, concepts, sv, items: Dict, steering_prompt: str) -> dict:
  """All scores of one row for one concept (or, unsteered, for all `concepts` at once: its
  answers are the same, their steering score is averaged over the concepts)."""
  ctx, u = session.ctx, session.config.utility
  spec = row.method.spec if sv is not None else None
  out = {}
  for task in TASKS:
    task_items, shots, path = items[task]
    prompts = [ctx.tok.chat_ids(utility.chat(task, item, steering_prompt, shots))
               for item in task_items]
    budget = u.mmlu_tokens if task == "tinymmlu" else u.gsm8k_tokens
    # greedy as transformers decodes it: the generation config's repetition penalty applies
    # (1.05 on Qwen2.5), its sampling warpers do not
    penalty = session.sampling.get("repetition_penalty", 1.0)
    ids = session.generate(prompts, max_new_tokens=budget, temperature=0.0, sv=sv, spec=spec,
                           repetition_penalty=penalty, concept_ids=None)
    texts = [ctx.tok.decode(x) for x in ids]
    out[f"{task}_responses"] = texts
    if task == "tinygsm8k":
      out["gsm8k"] = float(np.mean(utility.gsm8k_correct(texts, task_items, "paper")))
      out["gsm8k_flexible"] = float(np.mean(utility.gsm8k_correct(texts, task_items,
                                                                  "flexible")))
      out["gsm8k_strict"] = float(np.mean(utility.gsm8k_correct(texts, task_items, "strict")))
      if u.long_context_score:
        ratings = session.judge.rate([{"concept": c.name, "instruction": item["question"],
                                   "continuation": t} for c in concepts
                                  for item, t in zip(task_items, texts)])
        out["long_context"] = float(np.mean([scoring.record_score(r) for r in ratings]))
    else:
      if u.mmlu_judge:
        verdicts = session.judge.ask(utility.mmlu_judge_requests(task_items, texts))
        out["mmlu_judge"] = float(np.mean([parse_rating(v) == (1, True) for v in verdicts]))
      out["mmlu_letter"] = letter_accuracy(ctx, path, sv, spec, steering_prompt)
  return out


def run(config, workdir: str, log=print, bundle=None, judge=None) -> dict:
  """Every row over its concepts; returns {row: summary}."""
  t0 = time.time()
  os.makedirs(workdir, exist_ok=True)
  u = config.utility
  rows = table_rows.configured_rows(config, "utility")
  with open_session(config, workdir, log, bundle, judge) as session:
    ctx = session.ctx
    concepts = _concepts(config, session.bench)
    items = _items(config, workdir)
    log(f"utility: {len(rows)} row(s) x {len(concepts)} concept(s), "
        f"{len(items['tinymmlu'][0])} tinyMMLU and {len(items['tinygsm8k'][0])} tinyGSM8K items")
    prompts = (session.steering_prompts(concepts)
               if any(r.method.kind == "prompting" for r in rows) else {})
    summary = {}
    for r in rows:
      per_concept = []
      for c in ([None] if r.method.kind == "unsteered" else concepts):
        path = os.path.join(workdir, "rows", r.name, f"{'all' if c is None else c.concept_id}.json")
        if os.path.exists(path):
          with open(path) as f:
            per_concept.append(json.load(f))
          continue
        sv = table_rows.load_sv(u.svs_from, r, c, ctx.model.cfg) if r.needs_svs else None
        prompt = prompts[c.concept_id] if r.method.kind == "prompting" else ""
        result = evaluate_one(session, r, concepts if c is None else [c], sv, items, prompt)
        paths.write_atomic(path, json.dumps(result))
        per_concept.append(result)
        log(f"utility {r.name} concept {'-' if c is None else c.concept_id}: " + ", ".join(
            f"{k} {v:.3f}" for k, v in result.items() if isinstance(v, float)))
      summary[r.name] = _summarise(r.name, per_concept)
  write(report.results_folder(config, workdir), config, summary, time.time() - t0)
  return summary


def _summarise(name: str, per_concept: List[dict]) -> dict:
  """Means and stds over the concepts; over more than the paper's 10, also the means over
  the first 10 (`first10`)."""
  out = {"row": name, "concepts": len(per_concept)}
  for key in COLUMNS[2:]:
    values = [r[key] for r in per_concept if key in r]
    if values:
      out[key] = float(np.mean(values))
      out[key + "_std"] = float(np.std(values))
  if len(per_concept) > PAPER_CONCEPTS:
    out["first10"] = _summarise(name, per_concept[:PAPER_CONCEPTS])
  return out


def write(folder: str, config, summary: Dict[str, dict], seconds: float):
  paths.write_atomic(os.path.join(folder, "utility.json"), json.dumps(summary, indent=1))
  paths.write_atomic(
      os.path.join(folder, "utility.md"),
      f"# utility: {config.model.path}, layer {config.steer.layer} ({seconds:.0f} s)\n\n"
      + report.rounded_table(list(summary.values()), COLUMNS) + _first10(summary)
      + "\n\nAccuracy (0..1) on "
      "tinyMMLU (judge on the generated answer; answer letter's log-likelihood) and tinyGSM8K "
      "(any number equal to the answer, the paper's rule; flexible = lm-eval's last number; "
      "strict '#### n'), mean over concepts; long_context = the steering score (0..2) of the "
      "GSM8K answers (paper Table 17).\n")


def _first10(summary: Dict[str, dict]) -> str:
  firsts = [s["first10"] for s in summary.values() if "first10" in s]
  if not firsts:
    return ""
  return ("\n\nThe first 10 concepts (the paper's Table 16 set):\n\n"
          + report.rounded_table(firsts, COLUMNS))
