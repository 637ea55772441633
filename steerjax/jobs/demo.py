"""The `demo` job: train every method on TinyStories concepts, generate on held-out story
openings, judge offline, report.

Jointly trained SVs are scored on all eval prompts (ids 0..9) with no selection; methods
with a factor grid pick the factor with the best mean on ids 0..4 and report ids 5..9, as
in AxBench. Writes `results.json`, `results.md`, `summary.{csv,json}`, `per_concept.csv`,
`generations.jsonl` and PNG plots into the workdir.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from steerjax import losses, methods
from steerjax.data import sources, tinystories
from steerjax.eval import report, scoring
from steerjax.eval.offline_judge import OfflineJudge
from steerjax.data.batching import pack
from steerjax.generate import generate_many
from steerjax.jobs import common, sampling
from steerjax.steering import positions_mask, steer

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


@functools.partial(jax.jit, static_argnames=("model", "spec"))
def _mean_nll(model, spec, params, sv, tokens, valid, prompt, response):
  if sv is None:
    logits = model.apply({"params": params}, tokens, valid_BT=valid)
  else:
    mask = positions_mask(spec.positions, prompt, valid)
    logits = steer(model.apply, spec)({"params": params}, sv, tokens, mask, valid_BT=valid)
  lp, n = losses.response_logprobs(logits, tokens, response)
  return -jnp.sum(lp) / jnp.sum(n)


def _heldout_batch(ctx, bench, n_stories: int, tokens: int) -> dict:
  """The packed held-out continuations: stories no concept trains or evaluates on; made
  once per job."""
  used = {i for e in bench.values() for i in e["train_stories"] + e["eval_stories"]}
  key = ("heldout", tuple(sorted(used)), n_stories, tokens)
  if key not in ctx.memo:
    stories = tinystories.load_stories(ctx.config.data_root or None)
    held = [s for i, s in enumerate(stories) if i not in used and s.isascii()][:n_stories]
    prompts, continuations = [], []
    for story in held:
      opening = tinystories.story_opening(story, ctx.tok)
      if opening is not None:
        prompts.append(opening["x_ids"])
        continuations.append(ctx.tok.encode(story[len(opening["x_text"]):])[:tokens])
    packed = pack(prompts, continuations, ctx.model.cfg.pad_id)
    ctx.memo[key] = {k: jnp.asarray(packed[k]) for k in ("tokens", "valid", "prompt", "response")}
  return ctx.memo[key]


def heldout_nll(ctx, bench, svs=None, spec=None, n_stories: int = 64, tokens: int = 64) -> float:
  """Utility: mean per-token NLL of held-out story continuations with each concept's SV on,
  averaged over the SVs; `svs=None` gives the unsteered model."""
  seq = _heldout_batch(ctx, bench, n_stories, tokens)
  nll = lambda sv: float(_mean_nll(ctx.model, spec if sv is not None else None, ctx.params,
                                   sv, **seq))
  if svs is None:
    return nll(None)
  return float(np.mean([nll({k: jnp.asarray(v) for k, v in sv.items()})
                        for sv in svs.values()]))


def _utility(ctx, bench, method, svs, rows, unsteered: float):
  """Held-out NLL with the method's SVs on at the factors it reports (learned or picked)."""
  if not method.trained:
    return unsteered if method.kind == "unsteered" else None
  factor = {r["concept"]: r["factor"] for r in rows}
  return heldout_nll(ctx, bench, {c: dict(sv, factor=np.float32(factor[c]))
                                  for c, sv in svs.items()}, method.spec)


def _plot_utility(summary, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for s in summary:
    if s.get("heldout_nll") is not None:
      ax.scatter(s["heldout_nll"], s["overall"])
      ax.annotate(s["method"], (s["heldout_nll"], s["overall"]), fontsize=7)
  ax.set_xlabel("held-out NLL per token with the SV on (lower = more utility kept)")
  ax.set_ylabel("overall steering score (0..2)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def judge_records(judge, records: list) -> list:
  """`records` with the judge's three ratings added (the judge reads `prompt` as the
  instruction)."""
  items = [{"concept": r["concept"], "instruction": r["prompt"],
            "continuation": r["continuation"]} for r in records]
  for r, rating in zip(records, judge.rate(items)):
    r.update({key: scoring.rating_value(rating[key]) for key in scoring.RATINGS})
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
  unsteered_nll = heldout_nll(ctx, bench)
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
    summary.append(dict(scoring.summarize(method.name, method_rows, gens, method.grid is not None),
                        heldout_nll=_utility(ctx, bench, method, svs, method_rows,
                                             unsteered_nll)))
    records[method.name] = gens
    if method.grid is not None:
      grids[method.name] = method.grid
  title = (f"demo: {config.model.path}, layer {config.steer.layer}, concepts "
           f"{', '.join(config.data.concepts)}")
  notes = (f"heldout_nll = utility: NLL per token of held-out story continuations with the "
           f"SVs on (unsteered {unsteered_nll:.3f}; lower keeps more of the model).")
  markdown = report.write(workdir, title, summary, rows, records, grids,
                          {"seconds": round(time.time() - t0, 1)},
                          columns=report.SUMMARY_COLUMNS + ("heldout_nll",), extra_notes=notes)
  _plot_utility(summary, os.path.join(workdir, "utility.png"))
  log("\nsample generations (first eval prompt of the first concept):")
  for name, gens in records.items():
    for g in gens[:config.eval.samples_shown]:
      log(f"  {name} [{g['concept']}, factor {g['factor']}]: {g['prompt']} >>> "
          f"{g['continuation'][:300]!r}")
  log("\n" + markdown)
  log(f"wrote {workdir}/results.json, results.md, generations.jsonl, scores.png, utility.png "
      f"in {time.time() - t0:.0f} s")
  return rows
