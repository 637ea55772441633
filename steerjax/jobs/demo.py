"""The `demo` job: train every method on TinyStories concepts, generate on held-out story
openings, judge offline, report.

Jointly trained SVs are scored on all eval prompts (ids 0..9) with no selection; methods
with a factor grid pick the factor with the best mean on ids 0..4 and report ids 5..9, as
in AxBench. Writes `results.json`, `results.md`, `summary.{csv,json}`, `per_concept.csv`,
`generations.jsonl` and PNG plots into the workdir.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable, Optional

import jax
import numpy as np

from steerjax import methods
from steerjax.data import sources, tinystories
from steerjax.eval import report, scoring
from steerjax.eval.offline_judge import OfflineJudge
from steerjax.generate import generate_many
from steerjax.jobs import common, sampling

GENERATION_BATCH = 64


def plan(config) -> list:
  d = config.data
  return [common.method_cost(m, len(d.concepts), d.n_train,
                             d.prefix_tokens + d.continuation_tokens, d.n_eval,
                             config.eval.max_new_tokens) for m in methods.of_config(config)]


def train_method(ctx, method, workdir: str) -> dict:
  """{concept: SV} of a trained method (trained now, or read back from `workdir`)."""
  concepts, _ = sources.training_concepts(ctx.config, ctx.tok)
  ctx.log(f"data: {len(concepts)} concept(s) x {len(concepts[0].prompts)} training pairs "
          f"({ctx.config.data.source}{', with neutral responses' if methods.needs_neutral(method) else ''})")
  if methods.needs_neutral(method):
    concepts = common.with_model_neutral(ctx, concepts)
  return common.train_svs(ctx, method, concepts, workdir, tag=f"{method.name} ")


def generations(ctx, method, bench, svs, rng,
                rewrite: Optional[Callable[[str, str], str]] = None) -> list:
  """[{method, concept_id, concept, instruction_id, factor, prompt, model_input,
  continuation}] of one method over every concept's eval openings. `rewrite(concept,
  opening) -> text` changes what the model is given (the judge still rates against the
  opening itself)."""
  config, tok = ctx.config, ctx.tok
  names = list(config.data.concepts)

  def model_input(c, i):
    text = bench[c]["eval_text"][i]
    if rewrite is not None:
      text = rewrite(c, text)
    if method.kind == "prompting":
      text = config.eval.prompt_template.format(
          opening=text, description=tinystories.CONCEPTS[c].description)
    changed = rewrite is not None or method.kind == "prompting"
    return text, (tok.encode(text, bos=True) if changed else bench[c]["eval"][i])

  records, prompts = [], []
  for k, c in enumerate(names):
    for g in (method.grid or (None,)):
      for i in range(len(bench[c]["eval"])):
        text, ids = model_input(c, i)
        r = {"method": method.name, "concept_id": k, "concept": c, "instruction_id": i,
             "factor": g, "prompt": bench[c]["eval_text"][i], "model_input": text}
        if method.trained and g is None:
          r["learned_factor"] = float(np.asarray(svs[c]["factor"]))
        records.append(r)
        prompts.append(ids)
  sv, rows = None, None
  if method.trained:
    sv, index = common.stacked_sv(names, svs, method.grid)
    rows = [index[(r["concept"], r["factor"])] for r in records]
  options = dict(dict(top_p=config.eval.top_p), **sampling.for_config(config))
  outs = generate_many(ctx.model, ctx.params, prompts, max_new_tokens=config.eval.max_new_tokens,
                       batch_size=GENERATION_BATCH, rng=rng, concept_ids=rows,
                       temperature=config.eval.temperature, sv=sv,
                       spec=method.spec if method.trained else None, **options)
  for r, out in zip(records, outs):
    r["continuation"] = tok.decode(out)
  return records


def judge_records(judge, records: list) -> list:
  """`records` with the judge's three ratings added (the judge reads `prompt` as the
  instruction)."""
  items = [{"concept": r["concept"], "instruction": r["prompt"],
            "continuation": r["continuation"]} for r in records]
  for r, rating in zip(records, judge.rate(items)):
    r.update({key: int(rating[key]) for key in scoring.RATINGS})
  return records


def run(config, workdir: str, log=print, bundle=None) -> list:
  """Every method of `config.methods`; returns the per-concept result rows."""
  t0 = time.time()
  os.makedirs(workdir, exist_ok=True)
  all_methods = methods.of_config(config)
  ctx = common.setup(config, log, bundle)
  bench = sources.tinystories_benchmark(config, ctx.tok)
  log(f"demo: {len(all_methods)} methods x {len(config.data.concepts)} concepts on "
      f"{config.model.path} (width {ctx.model.cfg.dim}, layer {config.steer.layer})")
  judge = OfflineJudge(ctx.model, ctx.params, ctx.tok)
  rng = jax.random.PRNGKey(config.seed)
  rows, summary, records, grids = [], [], {}, {}
  gen_path = os.path.join(workdir, "generations.jsonl")
  open(gen_path, "w").close()
  for k, method in enumerate(all_methods):
    log(f"[{k + 1}/{len(all_methods)}] {method.name}")
    svs = None
    if method.trained:
      log(f"training {method.name} ({method.spec.positions}, {method.step.objective}, "
          f"factor {method.step.factor_mode})")
      svs = train_method(ctx, method, os.path.join(workdir, "methods", method.name))
    log(f"generating and judging {method.name}")
    gens = judge_records(judge, generations(ctx, method, bench, svs,
                                            jax.random.fold_in(rng, k)))
    with open(gen_path, "a") as f:
      for g in gens:
        f.write(json.dumps(g) + "\n")
    method_rows = scoring.score_method(method.name, gens, grid=method.grid is not None)
    rows += method_rows
    summary.append(scoring.summarize(method.name, method_rows, gens, method.grid is not None))
    records[method.name] = gens
    if method.grid is not None:
      grids[method.name] = method.grid
  title = (f"demo: {config.model.path}, layer {config.steer.layer}, concepts "
           f"{', '.join(config.data.concepts)}")
  markdown = report.write(workdir, title, summary, rows, records, grids,
                          {"seconds": round(time.time() - t0, 1)})
  log("\nsample generations (first eval prompt of the first concept):")
  for name, gens in records.items():
    for g in gens[:config.eval.samples_shown]:
      log(f"  {name} [{g['concept']}, factor {g['factor']}]: {g['prompt']} >>> "
          f"{g['continuation'][:300]!r}")
  log("\n" + markdown)
  log(f"wrote {workdir}/results.json, results.md, generations.jsonl, scores.png "
      f"in {time.time() - t0:.0f} s")
  return rows
