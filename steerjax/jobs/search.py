"""The `search` job (paper Tables 9-10, App. G): the hyperparameter grid of one jointly
trained method on development concepts, scored by the overall AxBench score.

  python -m steerjax.main --config=configs/axbench_gemma2_2b.py --workdir=runs/search_g2b \
      --config.job=search --config.search.method=prosv_lang

Grid points that share a compiled step (same batch size and epochs) train together, stacked
as rows of one SV batch with their own init sizes and rates; each point is then generated,
judged and scored like an AxBench method on the development concepts (`search.concepts`:
`hp_tuning`, the paper's 3, from the authors' released data; or `config`, the configured
AxBench range). Writes `search.md`, `search.json` and `best_config.py`, a config whose
method takes the best point's values, which the axbench job runs as it is.

`search.positions` sweeps where the SV acts (paper Table 1); `search.seeds` repeats the
grid per seed and reports each point's mean and spread over them (paper Fig. 3, Table 1);
`search.heatmap` names two axes whose grid of mean scores is drawn to `heatmap.png`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
from typing import List

import ml_collections

from steerjax import methods, paths
from steerjax.data import released, sources
from steerjax.data.benchmark import N_EVAL
from steerjax.eval import report
from steerjax.runtime import plans, training
from steerjax.runtime.session import open_session

# config.search fields: the method keys the grid sweeps
AXES = ("beta", "lr_factor", "lam", "lr_direction", "epochs", "batch_size", "positions")
SCORES = ("overall", "concept", "instruction", "fluency")
COLUMNS = ("point", "overall", "ci_low", "ci_high", "concept", "instruction", "fluency") + AXES
SEED_COLUMNS = ("point", "seeds", "overall", "overall_std", "concept", "concept_std",
                "instruction", "fluency") + AXES


def _base(config):
  m = methods.from_config(config, config.search.method)
  if not m.trained or m.grid is not None:
    raise ValueError(f"search.method={config.search.method!r}: the search tunes a jointly "
                     "trained method (one without a factor grid)")
  return m


def grid(config) -> List[dict]:
  """Every grid point: {method key: value}; an empty axis keeps the method's own value."""
  over = dict(config.method_overrides[config.search.method])
  axes = [tuple(config.search[k]) or (methods.value(config, over, k),) for k in AXES]
  return [dict(zip(AXES, values)) for values in itertools.product(*axes)]


def _point_name(k: int) -> str:
  return f"{k:03d}"


def _concept_count(config) -> int:
  return 3 if config.search.concepts == "hp_tuning" else (config.data.num_concepts or 500)


def seeds(config) -> tuple:
  """The training seeds: `search.seeds`, or () for config.seed alone."""
  return tuple(int(s) for s in config.search.seeds)


def plan(config) -> list:
  _base(config)
  _check_heatmap(config)
  d, n = config.data, _concept_count(config)
  prompt, rows = plans.prompt_length(config)[0], []
  repeats = max(1, len(seeds(config)))
  for k, point in enumerate(grid(config)):
    m = methods.from_config(_with_point(config, point), config.search.method)
    row = plans.method_cost(dataclasses.replace(m, name=_point_name(k)), n * repeats,
                            d.n_train, prompt + d.max_response_tokens, N_EVAL,
                            config.eval.max_new_tokens, prompt_tokens=prompt)
    rows.append(dict(row, svs=n * repeats))
  return rows


def _check_heatmap(config):
  axes = tuple(config.search.heatmap)
  if axes and (len(axes) != 2 or not set(axes) <= set(AXES)):
    raise ValueError(f"search.heatmap={axes}: name two of {AXES} (rows, columns), or ()")
  if config.search.heatmap_score not in SCORES:
    raise ValueError(f"search.heatmap_score={config.search.heatmap_score!r}; use one of {SCORES}")


def _with_point(config, point: dict, seed=None):
  config = ml_collections.ConfigDict(config.to_dict())
  config.method_overrides[config.search.method].update(point)
  if seed is not None:
    config.seed = seed
  return config


def _benchmark(config):
  d, s = config.data, config.search
  if s.concepts == "hp_tuning":
    return released.hp_tuning_benchmark(d.n_train, paths.cache_root(config.cache_dir), d.released_repo,
                                        config.data_root or None)
  if s.concepts == "config":
    return sources.axbench_benchmark(config)
  raise ValueError(f"search.concepts={s.concepts!r}; use 'hp_tuning' or 'config'")


def _train_shape(session, points, workdir: str, seed=None):
  """Train every (point, concept) row of one batch size, epoch count and positions, stacked
  `train.concepts_per_step` rows to a step, each row with its point's init and rates;
  returns {point index: {concept name: SV}}. Finished rows are read back."""
  ms = {k: methods.from_config(_with_point(session.config, p, seed), session.config.search.method)
        for k, p in points}
  concepts = session.training_data(ms[points[0][0]])
  ids = [c.concept_id for c in session.bench.concepts]
  rows = [(k, c, c_id) for k, _ in points for c, c_id in zip(concepts, ids)]
  row_name = lambda k, c: f"{_point_name(k)}_{c.name}"
  svs = training.train_svs(session.ctx, ms[points[0][0]],
                         [dataclasses.replace(c, name=row_name(k, c)) for k, c, _ in rows],
                         workdir, concept_ids=[i for *_, i in rows], tag="search ",
                         row_methods=[ms[k] for k, _, _ in rows])
  return {k: {c.name: svs[row_name(k, c)] for c in concepts} for k, _ in points}


def run(config, workdir: str, log=print, bundle=None, judge=None) -> dict:
  """Train, judge and score every grid point; returns {"best", "points"}."""
  t0 = time.time()
  os.makedirs(workdir, exist_ok=True)
  base = _base(config)
  _check_heatmap(config)
  points = grid(config)
  contrast = "hp_contrast" if config.search.concepts == "hp_tuning" else "contrast"
  with open_session(config, workdir, log, bundle, judge, bench=_benchmark(config),
                    contrast=contrast) as session:
    log(f"search: {len(points)} point(s) of {base.name} on {len(session.bench.concepts)} "
        f"concept(s) ({config.search.concepts})")
    shapes = {}
    for k, p in enumerate(points):
      shapes.setdefault((p["batch_size"], p["epochs"], p["positions"]), []).append((k, p))
    table = []
    for seed in seeds(config) or (None,):
      top = workdir if seed is None else os.path.join(workdir, f"seed_{seed}")
      svs = {}
      for (batch, epochs, positions), members in shapes.items():
        # positions change the compiled step; the folder keeps the old name when one is searched
        name = f"b{batch}_e{epochs}" + (f"_{positions}" if len(config.search.positions) > 1
                                        else "")
        svs.update(_train_shape(session, members, os.path.join(top, "shapes", name), seed))
      for k, p in enumerate(points):
        name = f"point_{_point_name(k)}" + ("" if seed is None else f"_s{seed}")
        m = dataclasses.replace(methods.from_config(_with_point(config, p, seed), base.name),
                                name=name)
        records = session.evaluate(m, svs[k])
        s = report.score(m.name, records, False, [])
        table.append(dict(p, point=_point_name(k), overall=s["overall"], ci_low=s["ci_low"],
                          ci_high=s["ci_high"], concept=s["concept"],
                          instruction=s["instruction"], fluency=s["fluency"],
                          **({} if seed is None else {"seed": seed})))
  if seeds(config):
    table = over_seeds(table)
  best = max(table, key=lambda r: r["overall"])   # ties: the first point in grid order
  write(workdir, config, table, best, time.time() - t0)
  log(f"best of {len(table)}: point {best['point']} overall {best['overall']:.3f} "
      f"({', '.join(f'{k}={best[k]}' for k in AXES)}); wrote {workdir}/best_config.py")
  return {"best": best, "points": table}


def over_seeds(table: List[dict]) -> List[dict]:
  """One row per point: its scores' mean and standard deviation over the seeds, and the
  seeds' rows under `per_seed`."""
  import numpy as np
  out = {}
  for row in table:
    out.setdefault(row["point"], []).append(row)
  merged = []
  for point, rows in out.items():
    row = {k: rows[0][k] for k in AXES + ("point",)}
    for key in SCORES:
      values = [r[key] for r in rows]
      row[key], row[key + "_std"] = float(np.mean(values)), float(np.std(values))
    row.update(seeds=len(rows), per_seed=rows)
    merged.append(row)
  return merged


def heatmap(path: str, table: List[dict], axes: tuple, score: str, title: str):
  """The mean `score` over a grid of two axes (rows, columns), one cell per value pair."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  rows, cols = (sorted({r[a] for r in table}) for a in axes)
  grid_ = np.full((len(rows), len(cols)), np.nan)
  for r in table:
    grid_[rows.index(r[axes[0]]), cols.index(r[axes[1]])] = r[score]
  fig, ax = plt.subplots(figsize=(1.2 * len(cols) + 2, 1.0 * len(rows) + 1.5))
  image = ax.imshow(grid_, cmap="viridis")
  for i in range(len(rows)):
    for j in range(len(cols)):
      if not np.isnan(grid_[i, j]):
        ax.text(j, i, f"{grid_[i, j]:.2f}", ha="center", va="center", color="w")
  ax.set_xticks(range(len(cols)), [str(c) for c in cols])
  ax.set_yticks(range(len(rows)), [str(r) for r in rows])
  ax.set_xlabel(axes[1])
  ax.set_ylabel(axes[0])
  ax.set_title(title)
  fig.colorbar(image, ax=ax, label=score)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write(workdir: str, config, table: List[dict], best: dict, seconds: float):
  """search.md / search.json, heatmap.png (with `search.heatmap`), and best_config.py: the
  run's config with the searched method at the best point, ready for the axbench job."""
  ranked = sorted(table, key=lambda r: -r["overall"])
  columns = SEED_COLUMNS if "seeds" in table[0] else COLUMNS
  title = (f"search: {config.search.method} on {config.model.path}, layer {config.steer.layer} "
           f"({config.search.concepts} concepts"
           + (f", seeds {list(seeds(config))}" if seeds(config) else "") + ")")
  paths.write_atomic(os.path.join(workdir, "search.md"),
                     f"# {title}, {seconds:.0f} s\n\n{report.rounded_table(ranked, columns)}\n")
  if config.search.heatmap:
    heatmap(os.path.join(workdir, "heatmap.png"), table, tuple(config.search.heatmap),
            config.search.heatmap_score, f"{config.search.heatmap_score} score")
  with open(os.path.join(workdir, "search.json"), "w", encoding="utf-8") as f:
    json.dump({"best": best, "points": table}, f, indent=1)
  final = _with_point(config, {k: best[k] for k in AXES})
  final.job, final.methods = "axbench", (config.search.method,)
  payload = json.dumps(final.to_dict(), indent=1, default=_plain)
  with open(os.path.join(workdir, "best_config.py"), "w", encoding="utf-8") as f:
    f.write(f'"""{config.search.method} at the best point of the search in this folder '
            f'(overall {best["overall"]:.3f}):\n  ' + ", ".join(f"{k}={best[k]}" for k in AXES)
            + "\n\n  python -m steerjax.main --config=best_config.py --workdir=...\n"
            '"""\n\nimport json\n\nimport ml_collections\n\nCONFIG = json.loads(r"""\n'
            + payload + '\n""")\n\n\ndef get_config(arg=None):\n'
            "  return ml_collections.ConfigDict(_tuples(CONFIG))\n\n\n"
            "def _tuples(x):\n"
            "  if isinstance(x, dict):\n"
            "    return {k: _tuples(v) for k, v in x.items()}\n"
            "  return tuple(_tuples(v) for v in x) if isinstance(x, list) else x\n")


def _plain(x):
  return x.tolist() if hasattr(x, "tolist") else str(x)

