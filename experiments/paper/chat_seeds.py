"""The chat benchmark over seeds: one markdown table from several chat job workdirs (one per
seed), mean and standard deviation over seeds per method, the per-concept concept score, and
sample generations.

  PYTHONPATH=. python -m experiments.paper.chat_seeds runs/chat_seed42 runs/chat_seed43 \\
      runs/chat_seed44
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

COLUMNS = ("overall", "concept", "instruction", "fluency", "reference_nll", "mmlu")


def load(workdir: str):
  with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
    summary = json.load(f)
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    rows = json.load(f)
  return summary, rows


def cell(values) -> str:
  values = [v for v in values if v is not None]
  if not values:
    return "-"
  return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def table(runs) -> list:
  methods = [s["method"] for s in runs[0][0]["methods"]]
  lines = ["| method | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
  for name in methods:
    per_seed = [{s["method"]: s for s in summary["methods"]}[name] for summary, _ in runs]
    lines.append(f"| {name} | " + " | ".join(cell([s.get(k) for s in per_seed])
                                             for k in COLUMNS) + " |")
  return lines


def concept_table(runs) -> list:
  """Per method and concept: the concept rating's mean over seeds (factor: learned or picked)."""
  concepts = list(dict.fromkeys(r["concept"] for r in runs[0][1]))
  methods = list(dict.fromkeys(r["method"] for r in runs[0][1]))
  lines = ["| method | " + " | ".join(f"{c}: concept" for c in concepts)
           + " | " + " | ".join(f"{c}: factor" for c in concepts) + " |",
           "|---" * (2 * len(concepts) + 1) + "|"]
  for name in methods:
    pick = lambda c, key: [r[key] for _, rows in runs for r in rows
                           if r["method"] == name and r["concept"] == c]
    factors = [cell(pick(c, "factor")) if pick(c, "factor")[0] is not None else "-"
               for c in concepts]
    lines.append(f"| {name} | " + " | ".join(cell(pick(c, "concept_score")) for c in concepts)
                 + " | " + " | ".join(factors) + " |")
  return lines


def samples(workdir: str, instruction_id: int = 5, chars: int = 240) -> list:
  """Per concept, its test instruction `instruction_id` and one generation per method (a
  grid method's at its picked factor)."""
  _, rows = load(workdir)
  picked = {(r["method"], r["concept"]): r["factor"] for r in rows}
  by_concept = {}
  with open(os.path.join(workdir, "generations.jsonl"), encoding="utf-8") as f:
    for line in f:
      g = json.loads(line)
      factor = picked.get((g["method"], g["concept"]))
      if g["instruction_id"] == instruction_id and g["factor"] in (None, factor):
        by_concept.setdefault(g["concept"], []).append(g)
  clip = lambda text: (" ".join(text.split())[:chars]
                       + (" ..." if len(" ".join(text.split())) > chars else ""))
  lines = []
  for concept, gens in by_concept.items():
    lines += ["", f"{concept}: *{clip(gens[0]['instruction'])}*", ""]
    lines += [f"- **{g['method']}**: {clip(g['continuation'])}" for g in gens]
  return lines


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("workdirs", nargs="+")
  args = parser.parse_args(argv)
  runs = [load(w) for w in args.workdirs]
  out = [f"{len(runs)} seed(s): mean ± std over seeds", ""] + table(runs) + [
      "", "Concept rating per concept (mean ± std over seeds) and the factor each reports:", ""
  ] + concept_table(runs) + ["", f"Samples ({args.workdirs[0]}, test instruction 5):"]
  out += samples(args.workdirs[0])
  sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
  main()
