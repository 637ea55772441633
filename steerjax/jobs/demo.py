"""The `demo` job: the AxBench protocol on TinyStories concepts with the offline judge, plus
a utility column: train every method, generate on held-out story openings, judge, report.

Jointly trained SVs are scored on all eval prompts (ids 0..9) with no selection; methods
with a factor grid pick the factor with the best mean on ids 0..4 and report ids 5..9, as
in AxBench. Resumable per concept like the axbench job (`methods/`). Writes
`results.json`, `results.md`, `summary.{csv,json}`, `per_concept.csv`, `generations.jsonl`
and PNG plots into the workdir.
"""

from __future__ import annotations

import json
import os
import time

from steerjax import methods, paths
from steerjax.data import sources, tinystories
from steerjax.eval import report
from steerjax.jobs.axbench import evaluate_methods
from steerjax.runtime import nll, plans
from steerjax.runtime.session import open_session


def plan(config) -> list:
  d = config.data
  return [plans.method_cost(m, len(d.concepts), d.n_train,
                            d.prefix_tokens + d.continuation_tokens, d.n_eval,
                            config.eval.max_new_tokens, judged=False,
                            prompt_tokens=d.prefix_tokens)
          for m in methods.of_config(config)]


def _heldout_batch(ctx, n_stories: int, tokens: int) -> dict:
  """The packed held-out continuations: stories no concept trains or evaluates on; made
  once per job."""
  entries = sources.tinystories_entries(ctx.config, ctx.tok)
  used = {i for e in entries.values() for i in e["train_stories"] + e["eval_stories"]}
  key = ("heldout", tuple(sorted(used)), n_stories, tokens)
  if key in ctx.memo:
    return ctx.memo[key]
  stories = tinystories.load_stories(ctx.config.data_root or None)
  held = [s for i, s in enumerate(stories) if i not in used and s.isascii()][:n_stories]
  prompts, continuations = [], []
  for story in held:
    opening = tinystories.story_opening(story, ctx.tok)
    if opening is not None:
      prompts.append(opening["x_ids"])
      continuations.append(ctx.tok.encode(story[len(opening["x_text"]):])[:tokens])
  ctx.memo[key] = nll.packed(ctx, prompts, continuations)
  return ctx.memo[key]


def heldout_nll(ctx, svs=None, spec=None, n_stories: int = 64, tokens: int = 64) -> float:
  """Utility: mean per-token NLL of held-out story continuations with each concept's SV on,
  averaged over the SVs; `svs=None` gives the unsteered model."""
  return nll.mean_nll(ctx, _heldout_batch(ctx, n_stories, tokens), svs, spec)


def _utility(session, method, rows, unsteered: float):
  """Held-out NLL with the method's SVs on at the factors it reports (learned or picked)."""
  if not method.trained:
    return unsteered if method.kind == "unsteered" else None
  return heldout_nll(session.ctx, nll.reported_svs(session, method, rows), method.spec)


def run(config, workdir: str, log=print, bundle=None, judge=None) -> list:
  """Every method of `config.methods`; returns the per-concept result rows."""
  t0 = time.time()
  all_methods = methods.of_config(config)
  with open_session(config, workdir, log, bundle, judge) as session:
    ctx = session.ctx
    log(f"demo: {len(all_methods)} methods x {len(config.data.concepts)} concepts on "
        f"{config.model.path} (width {ctx.model.cfg.dim}, layer {config.steer.layer})")
    summary, rows, records, grids = evaluate_methods(session, all_methods, log)
    unsteered = heldout_nll(ctx)
    for s, method in zip(summary, all_methods):
      s["heldout_nll"] = _utility(session, method, rows, unsteered)
  paths.write_atomic(os.path.join(workdir, "generations.jsonl"), "".join(
      json.dumps(g) + "\n" for gens in records.values() for g in gens))
  title = (f"demo: {config.model.path}, layer {config.steer.layer}, concepts "
           f"{', '.join(config.data.concepts)}")
  notes = (f"heldout_nll = utility: NLL per token of held-out story continuations with the "
           f"SVs on (unsteered {unsteered:.3f}; lower keeps more of the model).")
  markdown = report.write(workdir, title, summary, rows, records, grids,
                          {"seconds": round(time.time() - t0, 1)},
                          columns=report.SUMMARY_COLUMNS + ("heldout_nll",), extra_notes=notes)
  report.scatter(os.path.join(workdir, "utility.png"),
                 [s for s in summary if s["heldout_nll"] is not None], "heldout_nll", "overall",
                 "method", "held-out NLL per token with the SV on (lower = more utility kept)",
                 "overall steering score (0..2)")
  log("\nsample generations (first eval prompt of the first concept):")
  for name, gens in records.items():
    for g in gens[:config.eval.samples_shown]:
      log(f"  {name} [{g['concept']}, factor {g['factor']}]: {g['instruction']} >>> "
          f"{g['continuation'][:300]!r}")
  log("\n" + markdown)
  log(f"wrote {workdir}/results.json, results.md, generations.jsonl, scores.png, utility.png "
      f"in {time.time() - t0:.0f} s")
  return rows
