"""The paper's claims at CPU scale: stories260K steered towards TinyStories concepts.

Studies (each resumable: finished runs are read back from OUT/runs/*.json):
  main      the main table (method.md section 6 analog): every demo method, every seed
  heatmap   beta x lr_factor grids of concept and overall score, FSSV and PrOSV, lam 1 and 8
            (the paper's Figure 3 analog; Lang, 6 epochs as in the paper's ablations)
  positions the position ablation of method.md section 2 (PrOSV Lang, joint training)
  utility   held-out TinyStories NLL with the SV on (utility) vs steering score when the
            opening also says the concept is absent (robustness), FSSV factor x1, x0.8, x0.5

  PYTHONPATH=. STEERJAX_DATA=../shared/assets python -m experiments.paper.tinystories_study \
      --study=main --seeds=42,43,44 --out=docs/tinystories
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import ml_collections
import numpy as np

from configs import demo as demo_config
from steerjax import methods
from steerjax.data import sources, tinystories
from steerjax.eval import scoring
from steerjax.eval.offline_judge import OfflineJudge
from steerjax.runtime import context
from steerjax.jobs import demo
from steerjax.runtime.session import Session

POSITIONS = ("all", "prompt", "f2", "l2", "f1+l1", "f4", "l4", "f2+l2", "f8", "l8", "f4+l4")
BETAS = (1.0, 2.0, 4.0, 8.0)
LR_FACTORS = (0.1, 1.0, 10.0, 20.0)   # the paper's grid at Gemma-2-2B's width 2304
TO_WIDTH_64 = (64 / 2304) ** 0.5      # muP rescaling of a factor learning rate to width 64
LAMS = (1.0, 8.0)
ROBUSTNESS_SUFFIX = "There was no {word} anywhere in this story."
FACTOR_SCALES = (1.0, 0.8, 0.5)
PROSV = dict(demo_config.METHODS["prosv_lang"])


# Every concept of steerjax.data.tinystories has at least this many training pairs in the
# local excerpt at these lengths, so all twelve train together in one stacked step.
N_TRAIN, BATCH, PREFIX_TOKENS = 12, 6, 96


def _concept_word(concept: str) -> str:
  """The shortest word of a concept's word set, e.g. 'dog' (for the robustness prompts)."""
  return min(tinystories.CONCEPTS[concept].words, key=lambda w: (len(w), w))


def _robust_opening(concept: str, text: str) -> str:
  return text + " " + ROBUSTNESS_SUFFIX.format(word=_concept_word(concept))


class Study:
  """Shared model, benchmark, judge and a results folder for one study."""

  def __init__(self, out: str, concepts, log=print, cached_only: bool = False):
    self.out, self.log, self.cached_only = out, log, cached_only
    self.config = demo_config.get_config()
    self.config.data.concepts = tuple(concepts)
    self.config.data.n_train = N_TRAIN
    self.config.data.prefix_tokens = PREFIX_TOKENS
    self.ctx = context.setup(self.config, log=lambda *a: None)
    self.bundle = self.ctx.bundle
    self.bench = sources.tinystories_benchmark(self.config, self.ctx.tok)
    self.judge = OfflineJudge(*self.bundle)
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)

  def method(self, key: str, overrides: dict, seed: int, epochs: int = 12):
    """(session, method) of one (method overrides, seed) run; close the session's store."""
    config = ml_collections.ConfigDict(self.config.to_dict())
    config.seed = seed
    config.train.epochs = epochs
    if "positions" in overrides:
      overrides = dict(overrides, batch_size=BATCH)
    else:   # run keys are not method names, so an untrained run says what it is
      overrides = dict(overrides, kind=overrides.get("kind", "unsteered"))
    config.method_overrides[key] = ml_collections.ConfigDict(overrides)
    session = Session(dataclasses.replace(self.ctx, config=config),
                      os.path.join(self.out, "work", key), self.judge, bench=self.bench)
    return session, methods.from_config(config, key)

  def svs(self, key: str, overrides: dict, seed: int, epochs: int = 12):
    """The SVs of a trained run (trained now or read back) and the method."""
    session, method = self.method(key, overrides, seed, epochs)
    svs = session.train(method)
    session.store.close()
    return svs, method

  def run(self, key: str, overrides: dict, seed: int, epochs: int = 12, robust: bool = False,
          factor_scale: float = 1.0, train_key: str = ""):
    """Result rows of one run, cached in OUT/runs/KEY.json. `robust` appends the 'no
    {concept}' sentence to every opening; `factor_scale` scales the learned factors of the
    SVs trained under `train_key` (default: this run's own)."""
    path = os.path.join(self.out, "runs", f"{key}.json")
    if os.path.exists(path):
      return json.load(open(path))["rows"]
    if self.cached_only:
      return None
    t0 = time.time()
    session, method = self.method(key, overrides, seed, epochs)
    svs = None
    if method.trained:
      svs, _ = self.svs(train_key or key, overrides, seed, epochs)
      if factor_scale != 1.0:
        svs = {c: dict(sv, factor=np.asarray(sv["factor"]) * factor_scale)
               for c, sv in svs.items()}
    if robust:
      session.inputs = {c.concept_id: [_robust_opening(c.name, x)
                                       for x in self.bench.instructions[c.concept_id]]
                        for c in self.bench.concepts}
    gens = session.evaluate(method, svs)
    session.store.close()
    rows = scoring.score_method(key, gens, grid=method.grid is not None)
    with open(path, "w") as f:
      json.dump({"overrides": overrides, "seed": seed, "rows": rows,
                 "samples": gens[:3]}, f, indent=1)
    self.log(f"  {key}: overall {np.mean([r['overall'] for r in rows]):.3f} "
             f"concept {np.mean([r['concept_score'] for r in rows]):.3f} "
             f"fluency {np.mean([r['fluency_score'] for r in rows]):.3f} ({time.time() - t0:.0f} s)")
    return rows


def _mean(rows, key):
  return float(np.mean([r[key] for r in rows]))


def _seed_mean(per_seed, key) -> float:
  return float(np.mean([_mean(r, key) for r in per_seed])) if per_seed else float("nan")


def _summarise(results: dict) -> list:
  """{label: [rows of seed 1, rows of seed 2, ...]} -> table rows with mean +- std over seeds."""
  table = []
  for label, per_seed in results.items():
    row = {"method": label}
    for key in ("concept_score", "instruction_score", "fluency_score", "overall"):
      values = [_mean(rows, key) for rows in per_seed]
      row[key.replace("_score", "")] = f"{np.mean(values):.3f} +- {np.std(values):.3f}"
    row["seeds"] = len(per_seed)
    table.append(row)
  return table


def study_main(study: Study, seeds):
  results = {}
  for name in demo_config.METHODS:
    over = dict(demo_config.METHODS[name])
    results[name] = [study.run(f"main_{name}_s{s}", over, s) for s in seeds]
  return _summarise(results)


def study_positions(study: Study, seeds):
  results = {}
  for pos in POSITIONS:
    over = dict(PROSV, positions=pos)
    results[pos] = [study.run(f"pos_{pos.replace('+', '_')}_s{s}", over, s, epochs=6)
                    for s in seeds]
  return _summarise(results)


def study_heatmap(study: Study, seeds):
  cells = []
  for positions in ("all", "f2+l2"):
    for lam in LAMS:
      for beta in BETAS:
        for lr in LR_FACTORS:
          over = dict(PROSV, positions=positions, beta=beta, lam=lam,
                      lr_factor=lr * TO_WIDTH_64)
          tag = f"heat_{'fssv' if positions == 'all' else 'prosv'}_lam{lam:g}_b{beta:g}_lr{lr:g}"
          tag = tag.replace(".", "p")
          per_seed = [study.run(f"{tag}_s{s}", over, s, epochs=6) for s in seeds]
          per_seed = [r for r in per_seed if r is not None]   # --cached_only skips missing runs
          cells.append({"sv": "FSSV" if positions == "all" else "PrOSV", "lam": lam,
                        "beta": beta, "lr_factor": lr, "seeds": len(per_seed),
                        "concept": _seed_mean(per_seed, "concept_score"),
                        "overall": _seed_mean(per_seed, "overall")})
  _plot_heatmaps(cells, os.path.join(study.out, "heatmap.png"))
  return cells


def _plot_heatmaps(cells, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  panels = [(sv, lam, key) for sv in ("FSSV", "PrOSV") for lam in LAMS
            for key in ("concept", "overall")]
  fig, axes = plt.subplots(2, 4, figsize=(14, 6.5))
  for ax, (sv, lam, key) in zip(axes.ravel(), panels):
    grid = np.zeros((len(BETAS), len(LR_FACTORS)))
    for c in cells:
      if c["sv"] == sv and c["lam"] == lam:
        grid[BETAS.index(c["beta"]), LR_FACTORS.index(c["lr_factor"])] = c[key]
    ax.imshow(grid, vmin=0, vmax=2 if key == "concept" else 1.2, cmap="viridis", origin="lower")
    for i in range(len(BETAS)):
      for j in range(len(LR_FACTORS)):
        ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xticks(range(len(LR_FACTORS)), [f"{x:g}" for x in LR_FACTORS])
    ax.set_yticks(range(len(BETAS)), [f"{x:g}" for x in BETAS])
    ax.set_xlabel("lr_factor (at ref width 2304)")
    ax.set_ylabel("beta")
    ax.set_title(f"{sv}, lam={lam:g}: {key}", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def heldout_nll(study: Study, svs, spec) -> float:
  return demo.heldout_nll(study.ctx, svs, spec)


def study_utility(study: Study, seeds):
  rows = []
  base = heldout_nll(study, None, None)
  for s in seeds:
    robust = study.run(f"robust_unsteered_s{s}", {}, s, robust=True)
    rows.append({"method": "unsteered", "seed": s, "scale": 1.0, "heldout_nll": base,
                 "robust_concept": _mean(robust, "concept_score"),
                 "robust_overall": _mean(robust, "overall")})
  for name in ("prosv_lang", "prosv_simpo", "fssv_lang", "fssv_simpo"):
    over = dict(demo_config.METHODS[name])
    scales = FACTOR_SCALES if name.startswith("fssv") else (1.0,)
    for s in seeds:
      trained = f"main_{name}_s{s}"
      study.run(trained, over, s)      # trains (or reuses) the SVs
      svs, method = study.svs(trained, over, s)
      for scale in scales:
        scaled = {c: dict(sv, factor=np.asarray(sv["factor"]) * scale) for c, sv in svs.items()}
        robust = study.run(f"robust_{name}_x{scale:g}_s{s}".replace(".", "p"), over, s,
                           robust=True, factor_scale=scale, train_key=trained)
        rows.append({"method": name, "seed": s, "scale": scale,
                     "heldout_nll": heldout_nll(study, scaled, method.spec),
                     "robust_concept": _mean(robust, "concept_score"),
                     "robust_overall": _mean(robust, "overall")})
  _plot_utility(rows, os.path.join(study.out, "utility_robustness.png"))
  return rows


def _plot_utility(rows, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5.5, 4))
  labels = sorted({(r["method"], r["scale"]) for r in rows})
  for method, scale in labels:
    mine = [r for r in rows if r["method"] == method and r["scale"] == scale]
    x = np.mean([r["heldout_nll"] for r in mine])
    y = np.mean([r["robust_concept"] for r in mine])
    ax.scatter(x, y, label=f"{method} x{scale:g}")
  ax.set_xlabel("held-out NLL with the SV on (lower = more utility kept)")
  ax.set_ylabel("concept score under 'no {concept}' openings")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


STUDIES = {"main": study_main, "positions": study_positions, "heatmap": study_heatmap,
           "utility": study_utility}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--study", choices=sorted(STUDIES), required=True)
  parser.add_argument("--seeds", default="42,43,44")
  parser.add_argument("--concepts", default=",".join(tinystories.CONCEPTS))
  parser.add_argument("--out", default="docs/tinystories")
  parser.add_argument("--cached_only", action="store_true",
                      help="summarise the finished runs only (heatmap cells may be missing)")
  args = parser.parse_args()
  seeds = [int(s) for s in args.seeds.split(",")]
  study = Study(args.out, args.concepts.split(","), cached_only=args.cached_only)
  t0 = time.time()
  result = STUDIES[args.study](study, seeds)
  with open(os.path.join(args.out, f"{args.study}.json"), "w") as f:
    json.dump(result, f, indent=1)
  table = scoring.results_table(result)
  with open(os.path.join(args.out, f"{args.study}.md"), "w") as f:
    command = " ".join(["python -m experiments.paper.tinystories_study"] + sys.argv[1:])
    f.write(f"`{command}` ({time.time() - t0:.0f} s)\n\n{table}\n")
  print(table)


if __name__ == "__main__":
  main()
