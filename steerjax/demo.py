"""The `demo` job: train every method, generate on held-out openings, judge, report.

Jointly trained SVs are scored on all eval prompts (ids 0..9) with no selection; methods
with a factor grid pick the factor with the best mean on ids 0..4 and report ids 5..9, as
in AxBench. Writes `results.json`, `generations.jsonl`, `results.md` and PNG plots.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from steerjax import experiment
from steerjax.data import concepts as concept_data
from steerjax.data import tinystories
from steerjax.eval import scoring
from steerjax.eval.offline_judge import OfflineJudge
from steerjax.generate import generate
from steerjax.steering import SteerSpec

RATINGS = ("concept_score", "instruction_score", "fluency_score")
_OPTION_KEYS = ("objective", "factor_mode", "beta", "lam", "lr_factor", "lr_direction",
                "batch_size", "fixed_factor", "ref_width", "epochs")


def method_setup(config, name):
  """(spec, TrainOptions, factor grid or None) of a trained method; None for untrained ones."""
  over = config.method_overrides[name]
  if "positions" not in over:
    return None
  spec = dataclasses.replace(experiment.steer_spec(config), positions=over.positions)
  opts = experiment.train_options(config, **{k: over[k] for k in _OPTION_KEYS if k in over})
  grid = tuple(float(g) for g in over.grid) if "grid" in over else None
  return spec, opts, grid


def _sv_rows(svs, names, grid):
  """Stacked SV with one row per (concept, factor); grid None keeps the learned factor."""
  factors, directions, index = [], [], {}
  for name in names:
    for g in (grid or (None,)):
      index[(name, g)] = len(factors)
      factors.append(float(np.asarray(svs[name]["factor"])) if g is None else g)
      directions.append(np.asarray(svs[name]["direction"]))
  return {"factor": jnp.asarray(factors, jnp.float32),
          "direction": jnp.asarray(np.stack(directions), jnp.float32)}, index


def _generate_all(model, params, config, prompts, rng, sv=None, spec=None, concept_ids=None,
                  batch=64):
  outs = []
  for i in range(0, len(prompts), batch):
    rng, key = jax.random.split(rng)
    chunk = prompts[i:i + batch]
    ids = None if concept_ids is None else concept_ids[i:i + batch]
    outs += generate(model, params, chunk, max_new_tokens=config.eval.max_new_tokens,
                     temperature=config.eval.temperature, top_p=config.eval.top_p, rng=key,
                     sv=sv, spec=spec, concept_ids=ids)
  return outs


def generations_for(name, config, bundle, bench, svs, rng, opening_suffix: str = ""):
  """[{concept, instruction_id, factor, prompt, continuation}] of one method. A non-empty
  `opening_suffix` is appended to every eval opening (the robustness prompts)."""
  model, params, tok = bundle
  names = list(config.data.concepts)
  setup = method_setup(config, name)
  jobs = []   # (concept, instruction id, factor, prompt ids, sv row)

  ask = bool(config.method_overrides[name].get("prompt", False))

  def opening(c, i):
    text = bench[c]["eval_text"][i]
    if opening_suffix:
      text = text + " " + opening_suffix.format(word=_concept_word(c))
    if ask:
      text = config.eval.prompt_template.format(
          opening=text, description=tinystories.CONCEPTS[c].description)
    return text, (tok.encode(text, bos=True) if opening_suffix or ask
                  else bench[c]["eval"][i])

  prompts = {(c, i): opening(c, i) for c in names for i in range(len(bench[c]["eval"]))}
  if setup is None:
    for c in names:
      for i in range(len(bench[c]["eval"])):
        jobs.append((c, i, None, prompts[(c, i)][1], None))
    outs = _generate_all(model, params, config, [j[3] for j in jobs], rng)
  else:
    spec, _, grid = setup
    sv, index = _sv_rows(svs, names, grid)
    for c in names:
      for g in (grid or (None,)):
        for i in range(len(bench[c]["eval"])):
          jobs.append((c, i, g, prompts[(c, i)][1], index[(c, g)]))
    outs = _generate_all(model, params, config, [j[3] for j in jobs], rng, sv=sv, spec=spec,
                         concept_ids=np.asarray([j[4] for j in jobs], np.int32))
  # The judge rates relevance to the story opening itself, not to added instructions.
  return [{"method": name, "concept": c, "instruction_id": i, "factor": g,
           "prompt": bench[c]["eval_text"][i], "model_input": prompts[(c, i)][0],
           "continuation": tok.decode(out)}
          for (c, i, g, _, _), out in zip(jobs, outs)]


def _concept_word(concept: str) -> str:
  """The shortest word of a concept's word set, e.g. 'dog' (for the robustness prompts)."""
  return min(tinystories.CONCEPTS[concept].words, key=lambda w: (len(w), w))


def score_method(name, gens, grid: bool):
  """Per-concept result rows (means of the three ratings and of the harmonic mean)."""
  records = [dict(g, concept_id=g["concept"]) for g in gens]
  if grid:
    chosen = scoring.select_factor(records)
    keep = [r for r in records if r["factor"] == chosen[r["concept"]] and r["instruction_id"] >= 5]
  else:
    chosen, keep = {}, records
  rows = []
  for concept in dict.fromkeys(r["concept"] for r in records):
    mine = [r for r in keep if r["concept"] == concept]
    row = {"concept": concept, "method": name, "n": len(mine),
           "factor": chosen.get(concept)}
    for k in RATINGS:
      row[k] = float(np.mean([r[k] for r in mine]))
    row["overall"] = float(np.mean([scoring.record_score(r) for r in mine]))
    rows.append(row)
  return rows


def _plot(rows, methods, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  keys = ("overall",) + RATINGS
  fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(methods), 3.6))
  width = 0.8 / len(keys)
  for j, key in enumerate(keys):
    means = [np.mean([r[key] for r in rows if r["method"] == m]) for m in methods]
    ax.bar(np.arange(len(methods)) + j * width, means, width, label=key.replace("_score", ""))
  ax.set_xticks(np.arange(len(methods)) + 0.4 - width / 2)
  ax.set_xticklabels(methods, rotation=30, ha="right", fontsize=8)
  ax.set_ylim(0, 2)
  ax.set_ylabel("mean rating (0..2)")
  ax.legend(fontsize=7, ncol=4)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run_method(name, config, workdir, bundle, bench, judge, rng, log=print,
               opening_suffix: str = "", factor_scale: float = 1.0):
  """Train (if needed), generate, judge and score one method: (result rows, generations)."""
  if name not in config.method_overrides:
    raise ValueError(f"config.methods names {name!r}; known methods: "
                     f"{sorted(config.method_overrides)}")
  setup = method_setup(config, name)
  svs, learned = None, {}
  if setup is not None:
    spec, opts, _ = setup
    log(f"training {name} ({spec.positions}, {opts.objective}, factor {opts.factor_mode})")
    svs = experiment.train(config, os.path.join(workdir, "methods", name), bundle,
                           opts=opts, spec=spec, log=log, tag=f"{name} ")
    learned = {c: float(np.asarray(sv["factor"])) for c, sv in svs.items()}
    if factor_scale != 1.0:
      svs = {c: dict(sv, factor=np.asarray(sv["factor"]) * factor_scale) for c, sv in svs.items()}
  log(f"generating and judging {name}")
  gens = generations_for(name, config, bundle, bench, svs, rng, opening_suffix)
  items = [{"concept": g["concept"], "instruction": g["prompt"],
            "continuation": g["continuation"]} for g in gens]
  for g, r in zip(gens, judge.rate(items)):
    g.update({key: int(r[key]) for key in RATINGS})
  rows = score_method(name, gens, grid=setup is not None and setup[2] is not None)
  for row in rows:
    if row["factor"] is None and row["concept"] in learned:
      row["factor"] = learned[row["concept"]]
  return rows, gens


def run(config, workdir: str, log=print):
  t0 = time.time()
  os.makedirs(workdir, exist_ok=True)
  bundle = experiment.load_model(config)
  model, params, tok = bundle
  bench = concept_data.benchmark(config, tok)
  log(f"demo: {len(config.methods)} methods x {len(config.data.concepts)} concepts on "
      f"{config.model.path} (width {model.cfg.dim}, layer {config.steer.layer})")
  judge = OfflineJudge(model, params, tok)
  rng = jax.random.PRNGKey(config.seed)
  rows, samples = [], {}
  gen_path = os.path.join(workdir, "generations.jsonl")
  open(gen_path, "w").close()
  for k, name in enumerate(config.methods):
    log(f"[{k + 1}/{len(config.methods)}] {name}")
    method_rows, gens = run_method(name, config, workdir, bundle, bench, judge,
                                   jax.random.fold_in(rng, k), log)
    with open(gen_path, "a") as f:
      for g in gens:
        f.write(json.dumps(g) + "\n")
    rows += method_rows
    samples[name] = gens[:config.eval.samples_shown]

  table = summary_table(rows, list(config.methods))
  per_concept = scoring.results_table(
      [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows])
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(rows, f, indent=1)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(table + "\n\n" + per_concept + "\n")
  _plot(rows, list(config.methods), os.path.join(workdir, "scores.png"))
  log("\nsample generations (first eval prompt of the first concept):")
  for name, gens in samples.items():
    for g in gens:
      log(f"  {name} [{g['concept']}, factor {g['factor']}]: {g['prompt']} >>> "
          f"{g['continuation'][:300]!r}")
  log("\n" + table)
  log(f"\nwrote {workdir}/results.json, results.md, generations.jsonl, scores.png "
      f"in {time.time() - t0:.0f} s")
  return rows


def summary_table(rows, methods):
  """Markdown table: mean of each score over concepts, per method."""
  out = []
  for m in methods:
    mine = [r for r in rows if r["method"] == m]
    agg = scoring.aggregate([r["overall"] for r in mine])
    out.append({"method": m, **{k.replace("_score", ""): round(float(np.mean([r[k] for r in mine])), 3)
                                for k in RATINGS},
                "overall": round(agg["mean"], 3), "concept std": round(agg["std"], 3)})
  return scoring.results_table(out)
