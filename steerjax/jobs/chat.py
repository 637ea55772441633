"""The `chat` job: the chat concept benchmark (steerjax.data.chat) on a real instruct model.
Every method is trained on y_c the model wrote under the concept request, generates on
held-out AlpacaEval instructions, is rated by the judge (the offline one by default) and
gets two utility columns beside its score:

  reference_nll  NLL per token of AlpacaEval's reference answers after their instruction
                 (chat template), with each concept's SV on at the factor the method reports
  mmlu           MMLU 5-shot letter accuracy through lm-eval (SteerjaxLM) with the SVs of
                 the first `utility.mmlu_concepts` concepts, averaged; the prompting row
                 puts its request before each question

Resumable per concept like the axbench job (`methods/`). Writes `results.{md,json}`,
`summary.{csv,json}`, `per_concept.csv`, `generations.jsonl` and plots into the workdir.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from steerjax import methods, paths
from steerjax.data import chat as chat_data
from steerjax.data.benchmark import concept_name
from steerjax.eval import report, utility
from steerjax.jobs.axbench import evaluate_methods
from steerjax.jobs.utility import letter_accuracy
from steerjax.runtime import chat, nll, plans
from steerjax.runtime.session import open_session

SYSTEM_TOKENS = 32   # a chat template's default system turn, for the cost plan


def plan(config) -> list:
  d = config.data
  prompt = d.max_instruction_tokens + SYSTEM_TOKENS
  return [plans.method_cost(m, len(d.concepts), d.n_train, prompt + d.max_response_tokens,
                            d.n_eval, config.eval.max_new_tokens, judged=False,
                            prompt_tokens=prompt)
          for m in methods.of_config(config)]


def check(config):
  """Errors of a chat run's config, before the model loads."""
  if config.data.source != "chat":
    raise ValueError(f"job=chat reads the chat benchmark; data.source={config.data.source!r} "
                     "should be 'chat'")
  chat_data.concepts(config.data.concepts)
  for method in methods.of_config(config):
    if methods.needs_neutral(method) and method.neutral == "released":
      raise ValueError(f"config.method_overrides.{method.name}.neutral='released': the chat "
                       "benchmark has no released triples; use 'model' or 'judge'")


def _reference_batch(session) -> dict:
  u, tok = session.config.utility, session.ctx.tok
  pairs = chat.split(session.config, tok).utility
  return nll.packed(session.ctx, [tok.chat_prompt(x) for x, _ in pairs],
                    [tok.encode(y)[:u.reference_tokens] for _, y in pairs])


def _mmlu_file(session, workdir: str) -> str:
  """The MMLU items as a JSON-lines file for lm-eval; '' with utility.mmlu_items=0."""
  u, tok = session.config.utility, session.ctx.tok
  if not u.mmlu_items:
    return ""
  items = utility.mmlu_items(u.mmlu_items, u.mmlu_max_tokens, lambda s: len(tok.encode(s)),
                             session.config.data.seed, session.config.data_root or None)
  path = os.path.join(workdir, "items", "mmlu.jsonl")
  paths.write_atomic(path, "".join(json.dumps(item) + "\n" for item in items))
  return path


def _stored(where: str, make) -> dict:
  """The dict stored at `where`, else `make()`, stored there: a resumed run reads it back."""
  if os.path.exists(where):
    with open(where, encoding="utf-8") as f:
      return json.load(f)
  out = make()
  paths.write_atomic(where, json.dumps(out))
  return out


def utility_columns(session, method, rows, workdir: str, mmlu_file: str) -> dict:
  """{reference_nll, mmlu} of one method, stored under `methods/<method>/utility.json`."""
  u, concepts = session.config.utility, session.bench.concepts
  firsts = concepts[:u.mmlu_concepts or len(concepts)]

  def mmlu(runs):   # [(sv, steering prompt)] -> mean accuracy (None without MMLU items)
    return float(np.mean([letter_accuracy(session.ctx, mmlu_file, sv, method.spec, prompt)
                          for sv, prompt in runs])) if mmlu_file else None

  def make():
    if method.kind == "unsteered":
      return {"reference_nll": nll.mean_nll(session.ctx, _reference_batch(session)),
              "mmlu": mmlu([(None, "")])}
    if method.kind == "prompting":
      prompts = session.steering_prompts(firsts)
      return {"reference_nll": None, "mmlu": mmlu(
          [(None, chat_data.steering_sentence(prompts[c.concept_id])) for c in firsts])}
    svs = nll.reported_svs(session, method, rows)
    return {"reference_nll": nll.mean_nll(session.ctx, _reference_batch(session), svs,
                                          method.spec),
            "mmlu": mmlu([(svs[concept_name(c)], "") for c in firsts])}
  return _stored(os.path.join(workdir, "methods", method.name, "utility.json"), make)


def run(config, workdir: str, log=print, bundle=None, judge=None) -> list:
  """Every method of `config.methods`; returns the per-concept result rows."""
  check(config)
  t0 = time.time()
  all_methods = methods.of_config(config)
  with open_session(config, workdir, log, bundle, judge) as session:
    ctx = session.ctx
    log(f"chat: {len(all_methods)} methods x {len(session.bench.concepts)} concepts on "
        f"{config.model.path} (width {ctx.model.cfg.dim}, {ctx.model.cfg.n_layers} blocks, "
        f"layer {config.steer.layer}); seed {config.seed}")
    summary, rows, records, grids = evaluate_methods(session, all_methods, log)
    log("utility: reference answers' NLL and MMLU letter accuracy per method")
    mmlu_file = _mmlu_file(session, workdir)
    for s, method in zip(summary, all_methods):
      s.update(utility_columns(session, method, rows, workdir, mmlu_file))
      log(f"  {method.name}: reference NLL {s['reference_nll']}, MMLU {s['mmlu']}")
    base = utility_columns(session, methods.Method("unsteered", "unsteered"), rows, workdir,
                           mmlu_file)
  paths.write_atomic(os.path.join(workdir, "generations.jsonl"), "".join(
      json.dumps(g, ensure_ascii=False) + "\n" for gens in records.values() for g in gens))
  title = (f"chat concepts: {config.model.path}, layer {config.steer.layer}, concepts "
           f"{', '.join(config.data.concepts)}, seed {config.seed}")
  notes = (f"reference_nll = NLL per token of {config.utility.reference_answers} AlpacaEval "
           f"reference answers with the SVs on (unsteered {base['reference_nll']:.3f}); mmlu = "
           f"5-shot letter accuracy on {config.utility.mmlu_items} MMLU items with the SVs of "
           f"the first {config.utility.mmlu_concepts or 'all'} concept(s) on (unsteered "
           f"{base['mmlu']}).")
  markdown = report.write(workdir, title, summary, rows, records, grids,
                          {"seconds": round(time.time() - t0, 1)},
                          columns=report.SUMMARY_COLUMNS + ("reference_nll", "mmlu"),
                          extra_notes=notes)
  log("\n" + markdown)
  log(f"wrote {workdir}/results.json, results.md, generations.jsonl in "
      f"{time.time() - t0:.0f} s")
  return rows
