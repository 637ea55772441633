"""The AxBench steering protocol: train -> generate -> judge -> score, resumable per concept.

Per method and concept, 10 AlpacaEval instructions (AxBench's draw) are answered by the
steered model (temperature 1.0, 128 new tokens) and rated by an LLM judge on concept,
instruction and fluency. Factor-grid methods generate at every factor, pick per concept the
factor with the best mean on ids 0..4 and report ids 5..9; jointly trained SVs and prompting
report all 10. Outputs, under `workdir`:

  methods/<method>/train/          SVs (svs/*.safetensors), checkpoints, metrics
  methods/<method>/generations/    one JSON-lines file per concept (the resume unit)
  methods/<method>/judged/         the same records with the three ratings
  results/                         results.md, summary.{csv,json}, per_concept.csv, *.png
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import zlib
from typing import Callable, Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from steerjax import experiment
from steerjax.data import axbench as data
from steerjax.eval import scoring
from steerjax.eval.judge import LocalJudge, OpenAIJudge, request_key
from steerjax.generate import generate
from steerjax.models import load, load_tokenizer
from steerjax.train import needs_neutral

RATINGS = ("concept_score", "instruction_score", "fluency_score")
UNTRAINED = ("prompting", "unsteered")
END_OF_TURN = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>")
_OPTION_KEYS = {"objective": "objective", "factor_mode": "factor_mode", "beta": "beta",
                "lam": "lam", "init": "direction_init", "lr_factor": "lr_factor",
                "lr_direction": "lr_direction", "batch_size": "batch_size", "epochs": "epochs",
                "fixed_factor": "fixed_factor", "factor_set": "factor_set"}

STEERING_PROMPT_REQUEST = """\
Write a short instruction for an AI assistant, two or three sentences and under 100 words, \
that makes it bring the following concept into every answer it gives while still answering \
the user's question: {concept}

Write only the instruction itself, without quotes or any introduction."""


# ------------------------------------------------------------------------------ methods

@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  kind: str                     # trained | prompting | unsteered
  spec: object = None           # SteerSpec of a trained method
  opts: object = None           # TrainOptions of a trained method
  grid: Optional[tuple] = None  # factors searched at inference (None: learned factor)
  neutral: str = "judge"        # where SimPO's y comes from

  @property
  def trained(self) -> bool:
    return self.kind == "trained"


def method_setup(config, name: str) -> Method:
  """A method from `config.method_overrides[name]` over the shared config groups."""
  if name not in config.method_overrides:
    raise ValueError(f"config.methods names {name!r}; known methods: "
                     f"{sorted(config.method_overrides)}")
  over = config.method_overrides[name]
  neutral = over.get("neutral", config.data.neutral)
  if "positions" not in over:
    kind = over.get("kind", name)
    if kind not in UNTRAINED:
      raise ValueError(f"method {name!r} has no positions (so it is untrained) and kind={kind!r};"
                       f" untrained kinds are {UNTRAINED}")
    return Method(name, kind, neutral=neutral)
  spec = dataclasses.replace(experiment.steer_spec(config), positions=over.positions)
  fields = {ours: over[key] for key, ours in _OPTION_KEYS.items() if key in over}
  if "factor_set" in fields:
    fields["factor_set"] = tuple(fields["factor_set"])
  opts = experiment.train_options(config, **fields)
  grid = tuple(float(g) for g in over.grid) if "grid" in over else None
  if grid is None and opts.factor_mode != "joint":
    raise ValueError(f"method {name!r}: factor_mode={opts.factor_mode!r} needs a factor grid")
  return Method(name, "trained", spec, opts, grid, neutral)


# ------------------------------------------------------------------------------ judges

def judge_name(judge) -> str:
  return getattr(judge, "model", None) or getattr(judge, "name", "judge")


def ask_writer(judge, prompts: List[str]) -> List[str]:
  """Free-form replies of the judge's model, through its cache, retries and counters.
  Raises when a request failed (uncached, so a rerun asks again); an empty reply is kept."""
  requests = [judge._request(p) for p in prompts]
  keys = [request_key(r) for r in requests]
  replies = judge.replies(dict(zip(keys, requests)))
  if any(replies[k] is None for k in keys):
    raise RuntimeError("some requests to the judge model failed after all retries; rerun to "
                       "ask them again (replies that did arrive are cached)")
  return [replies[k].strip() for k in keys]


def stop_ids(model, tok) -> tuple:
  """The model's stop ids plus the tokenizer's EOS and end-of-turn token, if it has one."""
  ids = set(model.cfg.stop_ids) | ({tok.eos_id} if tok.eos_id is not None else set())
  if tok.kind == "hf":
    for marker in END_OF_TURN:
      found = tok.encode(marker)
      if len(found) == 1 and found[0] != getattr(tok._tok, "unk_token_id", None):
        ids.add(found[0])
  return tuple(sorted(ids))


def generate_ids(bundle, prompts, *, max_new_tokens: int, batch_size: int, rng=None,
                 temperature: float = 0.0, top_p: float = 1.0, sv=None, spec=None,
                 rows=None) -> List[list]:
  """Continuations of many prompts in fixed-size batches, shortest prompts first (less
  padding); `rows[i]` picks prompt i's row of a stacked `sv`."""
  model, params, tok = bundle
  stops = stop_ids(model, tok)
  order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
  size = max(1, min(batch_size, len(prompts)))
  rng = jax.random.PRNGKey(0) if rng is None else rng
  out = [None] * len(prompts)
  for start in range(0, len(order), size):
    idx = order[start:start + size]
    idx_padded = idx + [idx[-1]] * (size - len(idx))   # one compiled shape for every batch
    rng, key = jax.random.split(rng)
    ids = None if rows is None else np.asarray([rows[i] for i in idx_padded], np.int32)
    got = generate(model, params, [prompts[i] for i in idx_padded],
                   max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                   rng=key, sv=sv, spec=spec, concept_ids=ids, stop_ids=stops)
    for i, g in zip(idx, got):
      out[i] = g
  return out


def local_chat(bundle, max_new_tokens: int, batch_size: int) -> Callable[[List[str]], List[str]]:
  """`chat(prompts) -> replies` of a steerjax instruct model, greedy, under its chat template."""
  def chat(prompts):
    ids = generate_ids(bundle, [bundle[2].chat_prompt(p) for p in prompts],
                       max_new_tokens=max_new_tokens, batch_size=batch_size)
    return [bundle[2].decode(x) for x in ids]
  return chat


def make_judge(config, bundle):
  """OpenAIJudge or LocalJudge from `config.judge`; its cache under the run's cache dir."""
  j = config.judge
  cache = j.cache_dir or os.path.join(cache_root(config), "judge")
  if j.kind == "openai":
    return OpenAIJudge(base_url=j.base_url, model=j.model, api_key_env=j.api_key_env,
                       temperature=j.temperature, max_tokens=j.max_tokens,
                       concurrency=j.concurrency, max_retries=j.max_retries,
                       timeout_s=j.timeout_s, cache_dir=cache)
  if j.kind == "local":
    judge_bundle, path = bundle, j.local_path or config.model.path
    if path != config.model.path:
      root = config.data_root or None
      judge_bundle = load(path, experiment.DTYPES[j.local_dtype], data_root=root) + (
          load_tokenizer(path, data_root=root),)
    return LocalJudge(local_chat(judge_bundle, j.local_max_new_tokens, j.local_batch_size),
                      name=f"{path}|greedy|{j.local_max_new_tokens}",
                      batch_size=j.local_batch_size, cache_dir=cache)
  raise ValueError(f"config.judge.kind={j.kind!r}; use 'openai' or 'local'")


def cache_root(config) -> str:
  return config.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "steerjax")


# ------------------------------------------------------------------------------ training

class Run:
  """State shared by the methods of one run: model, benchmark, judge, text store."""

  def __init__(self, config, workdir: str, bundle, judge, log=print):
    self.config, self.workdir, self.bundle = config, workdir, bundle
    self.judge, self.log = judge, log
    d = config.data
    self.bench = data.load_benchmark(d.suite, d.task, d.first_concept, d.num_concepts,
                                     d.n_train, config.data_root or None)
    self.store = data.TextStore(os.path.join(cache_root(config), "axbench_texts.jsonl"))
    self.model_key = f"{config.model.path}|{bundle[0].cfg.fingerprint()}"
    self._train_data = {}

  def training_data(self, method: Method):
    """ConceptData of every concept, with neutral responses when the objective needs them."""
    source = method.neutral if needs_neutral(method.opts.objective) else None
    if source not in self._train_data:
      d = self.config.data
      neutral = None
      if source is not None:
        name = self.model_key if source == "model" else judge_name(self.judge)
        make_ids = lambda prompts: generate_ids(
            self.bundle, prompts, max_new_tokens=d.neutral_max_tokens,
            batch_size=self.config.eval.batch_size)
        neutral = lambda items: data.neutral_responses(
            self.store, source, name, items, self.bundle[2], d.neutral_max_tokens, make_ids,
            lambda requests: ask_writer(self.judge, requests))
        self.log(f"neutral responses ({source}): {len(self.bench.concepts)} concept(s)")
      self._train_data[source] = data.training_data(self.bench, self.bundle[2],
                                                    d.max_response_tokens, neutral)
    return self._train_data[source]

  def train(self, method: Method):
    concepts = self.training_data(method)
    return experiment.train(
        self.config, os.path.join(self.workdir, "methods", method.name, "train"), self.bundle,
        concepts=concepts, opts=method.opts, spec=method.spec, log=self.log,
        tag=f"{method.name} ", concept_ids=[c.concept_id for c in self.bench.concepts])

  def steering_prompts(self, concepts) -> Dict[int, str]:
    """One steering prompt per concept, written by the judge model and stored."""
    name = judge_name(self.judge)
    keys = {c.concept_id: self.store.key("steering_prompt", name, c.name) for c in concepts}
    found = {cid: self.store.get(k) for cid, k in keys.items()}
    todo = [c for c in concepts if found[c.concept_id] is None]
    if todo:
      texts = ask_writer(self.judge, [STEERING_PROMPT_REQUEST.format(concept=c.name)
                                      for c in todo])
      for c, text in zip(todo, texts):
        text = text.strip().strip('"').strip()
        self.store.put(keys[c.concept_id], text)
        found[c.concept_id] = text
    return found


# ------------------------------------------------------------------------------ generation

def _write_jsonl(path: str, records: List[dict]):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  os.replace(path + ".tmp", path)   # a killed run never leaves half a concept behind


def _read_jsonl(path: str) -> List[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _stacked_sv(method: Method, concepts, svs, capacity: int):
  """(stacked SV with one row per (concept, factor), {(concept_id, factor): row}).

  Zero rows fill it up to `capacity`, so a short last chunk reuses the compiled programs."""
  factors, directions, index = [], [], {}
  for c in concepts:
    trained = svs[data.concept_name(c)]
    for g in (method.grid or (None,)):
      index[(c.concept_id, g)] = len(factors)
      factors.append(float(np.asarray(trained["factor"])) if g is None else g)
      directions.append(np.asarray(trained["direction"], np.float32))
  fill = max(0, capacity - len(factors))
  factors += [0.0] * fill
  directions += [np.zeros_like(directions[0])] * fill
  return {"factor": jnp.asarray(factors, jnp.float32),
          "direction": jnp.asarray(np.stack(directions), jnp.float32)}, index


def _generations(run: Run, method: Method, concepts, svs, rng) -> Dict[int, List[dict]]:
  """{concept_id: records without ratings} for `concepts`, generated in one batched pass."""
  cfg, tok = run.config, run.bundle[2]
  steering = run.steering_prompts(concepts) if method.kind == "prompting" else {}
  records, prompts = [], []
  for c in concepts:
    for g in (method.grid or (None,)):
      for i, x in enumerate(run.bench.instructions[c.concept_id]):
        r = {"method": method.name, "concept_id": c.concept_id, "concept": c.name,
             "instruction_id": i, "instruction": x, "factor": g}
        text = x
        if method.kind == "prompting":
          r["steering_prompt"] = steering[c.concept_id]
          text = cfg.eval.prompt_template.format(prompt=r["steering_prompt"], instruction=x)
        if method.trained and g is None:
          r["learned_factor"] = float(np.asarray(svs[data.concept_name(c)]["factor"]))
        records.append(r)
        prompts.append(tok.chat_prompt(text))
  sv, rows = None, None
  if method.trained:
    capacity = max(1, cfg.eval.concepts_per_chunk) * len(method.grid or (None,))
    sv, index = _stacked_sv(method, concepts, svs, capacity)
    rows = [index[(r["concept_id"], r["factor"])] for r in records]
  outs = generate_ids(run.bundle, prompts, max_new_tokens=cfg.eval.max_new_tokens,
                      batch_size=cfg.eval.batch_size, rng=rng, temperature=cfg.eval.temperature,
                      top_p=cfg.eval.top_p, sv=sv, spec=method.spec if method.trained else None,
                      rows=rows)
  by_concept = {c.concept_id: [] for c in concepts}
  for r, out in zip(records, outs):
    r.update(continuation=tok.decode(out), new_tokens=len(out))
    by_concept[r["concept_id"]].append(r)
  return by_concept


def _path(run: Run, method: Method, stage: str, concept) -> str:
  return os.path.join(run.workdir, "methods", method.name, stage,
                      f"{data.concept_name(concept)}.jsonl")


def needs_generation(run: Run, method: Method) -> bool:
  return any(not os.path.exists(_path(run, method, "generations", c))
             for c in run.bench.concepts)


def evaluate(run: Run, method: Method, svs) -> List[dict]:
  """Judged records of every concept; concepts already judged on disk are read back."""
  cfg = run.config
  gen_path = lambda c: _path(run, method, "generations", c)
  judged_path = lambda c: _path(run, method, "judged", c)
  records = []
  todo = [c for c in run.bench.concepts if not os.path.exists(judged_path(c))]
  for c in run.bench.concepts:
    if os.path.exists(judged_path(c)):
      records += _read_jsonl(judged_path(c))
  if len(todo) < len(run.bench.concepts):
    run.log(f"{method.name}: {len(run.bench.concepts) - len(todo)} concept(s) already judged")
  per_chunk = max(1, cfg.eval.concepts_per_chunk)
  base = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), zlib.crc32(method.name.encode()))
  for start in range(0, len(todo), per_chunk):
    chunk = todo[start:start + per_chunk]
    missing = [c for c in chunk if not os.path.exists(gen_path(c))]
    if missing:
      made = _generations(run, method, missing, svs,
                          jax.random.fold_in(base, missing[0].concept_id))
      for c in missing:
        _write_jsonl(gen_path(c), made[c.concept_id])
    gens = [r for c in chunk for r in _read_jsonl(gen_path(c))]
    failures = run.judge.stats.failures
    ratings = run.judge.rate([{"concept": g["concept"], "instruction": g["instruction"],
                               "continuation": g["continuation"]} for g in gens])
    for g, r in zip(gens, ratings):
      g.update({k: int(r[k]) for k in RATINGS}, judge_ok=bool(r["ok"]))
    if run.judge.stats.failures > failures:
      run.log(f"{method.name}: judge requests failed for concepts "
              f"{[c.concept_id for c in chunk]}; their zeros count now, rerun to ask again")
    else:
      for c in chunk:
        _write_jsonl(judged_path(c), [g for g in gens if g["concept_id"] == c.concept_id])
    records += gens
    run.log(f"{method.name}: judged {start + len(chunk)}/{len(todo)} concept(s)")
  return records


# ------------------------------------------------------------------------------ scoring

def score(method: Method, records: List[dict]) -> List[dict]:
  """Per-concept rows: the reported score and the mean of each rating over the same records."""
  if method.grid is not None:
    chosen = scoring.select_factor(records)
    overall = scoring.score_grid(records)
    keep = [r for r in records if r["factor"] == chosen[r["concept_id"]]
            and r["instruction_id"] in scoring.EVAL_IDS]
  else:
    chosen, overall, keep = {}, scoring.score_joint(records), records
  rows = []
  for cid in sorted(overall):
    mine = [r for r in keep if r["concept_id"] == cid]
    factor = chosen.get(cid, mine[0].get("learned_factor"))
    rows.append({"method": method.name, "concept_id": cid, "concept": mine[0]["concept"],
                 "factor": factor, "n": len(mine),
                 **{k: float(np.mean([r[k] for r in mine])) for k in RATINGS},
                 "overall": overall[cid]})
  return rows


def summarize(method: Method, rows: List[dict], records: List[dict]) -> dict:
  agg = scoring.aggregate({r["concept_id"]: r["overall"] for r in rows})
  return {"method": method.name, "concepts": agg["n"], "overall": agg["mean"],
          "ci_low": agg["ci_low"], "ci_high": agg["ci_high"], "concept_std": agg["std"],
          **{k.replace("_score", ""): float(np.mean([r[k] for r in rows])) for k in RATINGS},
          "generations": len(records), "judge_calls": 3 * len(records)}


# ------------------------------------------------------------------------------ reporting

SUMMARY_COLUMNS = ("method", "concepts", "overall", "ci_low", "ci_high", "concept_std", "concept",
                   "instruction", "fluency", "generations", "judge_calls")


def _csv(path: str, rows: List[dict], columns):
  import csv
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


def write_results(folder: str, config, summary, rows, records, grids, extra: dict) -> str:
  """results.md, summary.csv/json, per_concept.csv and plots; returns the markdown."""
  os.makedirs(folder, exist_ok=True)
  shown = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in s.items()}
           for s in summary]
  d = config.data
  head = (f"AxBench {d.suite} {d.task}: {config.model.path}, layer {config.steer.layer}, "
          f"concepts {d.first_concept}..{d.first_concept + summary[0]['concepts'] - 1}")
  table = scoring.results_table(shown, SUMMARY_COLUMNS)
  notes = ("overall = mean over concepts of the per-concept score (harmonic mean of the three "
           "ratings, 0..2); ci = bootstrap 95% over concepts; grid methods: factor picked on "
           "instruction ids 0..4, scored on 5..9; other methods: all 10 ids.")
  markdown = f"# {head}\n\n{table}\n\n{notes}\n\njudge: {json.dumps(extra['judge'])}\n"
  with open(os.path.join(folder, "results.md"), "w", encoding="utf-8") as f:
    f.write(markdown)
  _csv(os.path.join(folder, "summary.csv"), summary, SUMMARY_COLUMNS)
  _csv(os.path.join(folder, "per_concept.csv"), rows,
       ("method", "concept_id", "concept", "factor", "n") + RATINGS + ("overall",))
  with open(os.path.join(folder, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(dict(extra, title=head, methods=summary), f, indent=1)
  _plots(folder, summary, rows, records, grids)
  return markdown


# ------------------------------------------------------------------------------ the job

def run(config, workdir: str, log=print, bundle=None, judge=None) -> dict:
  """Every method of `config.methods` on the configured concepts; returns summary.json's dict."""
  t0 = time.time()
  os.makedirs(workdir, exist_ok=True)
  methods = [method_setup(config, name) for name in config.methods]
  bundle = bundle or experiment.load_model(config)
  own_judge, state = judge is None, None
  judge = judge or make_judge(config, bundle)
  try:
    state = Run(config, workdir, bundle, judge, log)
    log(f"axbench: {len(methods)} method(s) x {len(state.bench.concepts)} concept(s) on "
        f"{config.model.path} (width {bundle[0].cfg.dim}, layer {config.steer.layer}); "
        f"judge {judge!r}")
    summary, rows, records, grids = [], [], {}, {}
    for k, method in enumerate(methods):
      log(f"[{k + 1}/{len(methods)}] {method.name}")
      svs = state.train(method) if method.trained and needs_generation(state, method) else None
      records[method.name] = evaluate(state, method, svs)
      method_rows = score(method, records[method.name])
      rows += method_rows
      summary.append(summarize(method, method_rows, records[method.name]))
      if method.grid is not None:
        grids[method.name] = method.grid
    extra = {"judge": judge.stats.as_dict(),
             "text_store": {"hits": state.store.hits, "misses": state.store.misses},
             "seconds": round(time.time() - t0, 1)}
    folder = config.results_dir or os.path.join(workdir, "results")
    markdown = write_results(folder, config, summary, rows, records, grids, extra)
  finally:
    if state is not None:
      state.store.close()
    if own_judge:
      judge.close()
  log("\n" + markdown)
  log(f"wrote {folder} in {time.time() - t0:.0f} s")
  return dict(extra, methods=summary, results_dir=folder)


# ------------------------------------------------------------------------------ cost

# Sequences each training example is run through per step (and back-propagated).
PASSES = {"lang": 1, "simpo": 2, "reps": 4}


def cost_plan(config, prompt_tokens: int = 20) -> List[dict]:
  """Expected work per method without loading anything: SVs, steps, sequences, tokens,
  generations and judge calls. Token counts assume `prompt_tokens` per prompt and full
  `max_response_tokens` responses (an upper bound)."""
  d = config.data
  n = d.num_concepts or 500
  per_seq = prompt_tokens + d.max_response_tokens
  out, neutral = [], set()
  for name in config.methods:
    m = method_setup(config, name)
    if m.trained and needs_neutral(m.opts.objective):
      neutral.add(m.neutral)
    row = {"method": name, "svs": 0, "steps_per_sv": 0, "train_sequences": 0, "train_tokens": 0}
    if m.trained:
      steps = (d.n_train // m.opts.batch_size) * m.opts.epochs
      seqs = steps * m.opts.batch_size * PASSES[m.opts.objective]
      row.update(svs=n, steps_per_sv=steps, train_sequences=n * seqs,
                 train_tokens=n * seqs * per_seq)
    gens = n * data.N_EVAL * len(m.grid or (None,))
    row.update(generations=gens, new_tokens=gens * config.eval.max_new_tokens,
               judge_calls=3 * gens + (n if m.kind == "prompting" else 0))
    out.append(row)
  for source in sorted(neutral):
    count = n * d.n_train
    by_model = source == "model"
    out.append({"method": f"neutral y ({source})", "generations": count if by_model else 0,
                "new_tokens": count * d.neutral_max_tokens if by_model else 0,
                "judge_calls": 0 if by_model else count})
  return out
