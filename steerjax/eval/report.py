"""One report writer for every job: results.md, results.json, summary.{csv,json},
per_concept.csv and PNG plots of the scores."""

from __future__ import annotations

import csv
import json
import os
from typing import Dict, List, Optional

import numpy as np

from steerjax import paths
from steerjax.eval import judge_cost, scoring
from steerjax.eval.scoring import RATINGS

PER_CONCEPT_COLUMNS = ("method", "concept_id", "concept", "factor", "n") + RATINGS + ("overall",)
SUMMARY_COLUMNS = ("method", "concepts", "overall", "ci_low", "ci_high", "concept_std", "oracle",
                   "split_mean", "split_std", "concept",
                   "instruction", "fluency", "generations", "judge_calls")


def _csv(path: str, rows: List[dict], columns):
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)


def _plots(folder: str, summary: List[dict], rows: List[dict], records: Dict[str, List[dict]],
           grids: Dict[str, tuple]):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = [s["method"] for s in summary]
  x = np.arange(len(names))
  fig, ax = plt.subplots(figsize=(1.5 + 1.1 * len(names), 3.8))
  keys = ("overall", "concept", "instruction", "fluency")
  width = 0.8 / len(keys)
  for j, key in enumerate(keys):
    means = [s[key] for s in summary]
    err = None
    if key == "overall":
      err = [[s["overall"] - s["ci_low"] for s in summary], [s["ci_high"] - s["overall"]
                                                              for s in summary]]
    ax.bar(x + j * width, means, width, yerr=err, capsize=2, label=key)
  ax.set_xticks(x + 0.4 - width / 2)
  ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
  ax.set_ylim(0, 2)
  ax.set_ylabel("mean over concepts (0..2); overall with 95% CI")
  ax.legend(fontsize=7, ncol=4)
  fig.tight_layout()
  fig.savefig(os.path.join(folder, "scores.png"), dpi=120)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(1.5 + 1.1 * len(names), 3.8))
  ax.boxplot([[r["overall"] for r in rows if r["method"] == m] for m in names])
  ax.set_xticks(x + 1)
  ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
  ax.set_ylabel("per-concept overall score")
  fig.tight_layout()
  fig.savefig(os.path.join(folder, "per_concept.png"), dpi=120)
  plt.close(fig)

  if grids:
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, grid in grids.items():
      for ids, style in ((scoring.SELECTION_IDS, "-"), (scoring.EVAL_IDS, ":")):
        means = [np.mean([scoring.record_score(r) for r in records[name]
                          if r["factor"] == g and r["instruction_id"] in ids]) for g in grid]
        ax.plot(grid, means, style, marker=".", label=f"{name} ids {ids[0]}..{ids[-1]}")
    ax.set_xscale("log")
    ax.set_xlabel("factor")
    ax.set_ylabel("mean score over concepts")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "factor_grid.png"), dpi=120)
    plt.close(fig)


def write(folder: str, title: str, summary: List[dict], rows: List[dict],
          records: Dict[str, List[dict]], grids: Optional[Dict[str, tuple]] = None,
          extra: Optional[dict] = None, columns=SUMMARY_COLUMNS, extra_notes: str = "",
          prices: Optional[judge_cost.Prices] = None) -> str:
  """Write the report of one run into `folder`; returns the markdown of results.md.

  `summary`: one `scoring.summarize` dict per method (`columns` of them shown); `rows`: the
  per-concept rows of `scoring.score_method`; `records`: each method's judged generations;
  `grids`: the factor grid of each grid method; `extra`: run facts (judge stats, timings)
  kept in summary.json; `extra_notes`: a sentence more under the table; `prices`: the
  judge's, for the cost line."""
  os.makedirs(folder, exist_ok=True)
  extra = dict(extra or {})
  markdown = (f"# {title}\n\n{summary_table(summary, columns)}\n\n{NOTES}"
              + (f" {extra_notes}" if extra_notes else "") + "\n")
  if "judge" in extra:
    markdown += f"\n{judge_cost.usage_line(extra['judge'], prices or judge_cost.Prices())}\n"
  markdown += f"\nPer concept:\n\n{rounded_table(rows, PER_CONCEPT_COLUMNS)}\n"
  paths.write_atomic(os.path.join(folder, "results.md"), markdown)
  _csv(os.path.join(folder, "summary.csv"), summary, columns)
  _csv(os.path.join(folder, "per_concept.csv"), rows, PER_CONCEPT_COLUMNS)
  with open(os.path.join(folder, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(dict(extra, title=title, methods=summary), f, indent=1)
  with open(os.path.join(folder, "results.json"), "w", encoding="utf-8") as f:
    json.dump(rows, f, indent=1)
  _plots(folder, summary, rows, records, grids or {})
  return markdown


NOTES = ("overall = mean over concepts of the per-concept score (harmonic mean of the three "
         "ratings, 0..2); ci = bootstrap 95% over concepts; grid methods: factor picked on "
         "instruction ids 0..4, scored on 5..9; other methods: all ids; oracle = factor picked "
         "on all ids and scored on them; split = mean and std over 10 random 5/5 halvings "
         "(pick on one half, score the other).")


def rounded_table(rows: List[dict], columns=None) -> str:
  """A markdown table of `rows` with floats rounded to 3 places."""
  return scoring.results_table(
      [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
      columns)


def summary_table(summary: List[dict], columns=SUMMARY_COLUMNS) -> str:
  """The markdown table of the summary rows, as results.md shows it."""
  return rounded_table(summary, columns)


def score(name: str, records: List[dict], grid: bool, rows: List[dict]) -> dict:
  """A method's summary from its judged records; its per-concept rows are appended to
  `rows`."""
  method_rows = scoring.score_method(name, records, grid=grid)
  rows += method_rows
  return scoring.summarize(name, method_rows, records, grid=grid)


def results_folder(config, workdir: str) -> str:
  """`config.results_dir`, or `<workdir>/results`."""
  return config.results_dir or os.path.join(workdir, "results")


def scatter(path: str, points: List[dict], x: str, y: str, label: str, xlabel: str,
            ylabel: str):
  """A labelled scatter plot of `points` ({x, y, label} keys) as a PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5.5, 4.2))
  for p in points:
    ax.scatter(p[x], p[y])
    ax.annotate(p[label], (p[x], p[y]), fontsize=7)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
