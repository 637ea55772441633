"""The `axbench` job (paper Table 2): train -> generate -> judge -> score, resumable per concept.

  python -m steerjax.main --config=configs/axbench_gemma2_2b.py --workdir=runs/g2b_l10

Per method and concept, 10 AlpacaEval instructions (AxBench's draw) are answered by the
steered model (temperature 1.0, 128 new tokens) and rated by an LLM judge on concept,
instruction and fluency. Factor-grid methods generate at every factor, pick per concept the
factor with the best mean on ids 0..4 and report ids 5..9; jointly trained SVs and prompting
report all 10. Outputs, under `workdir`:

  methods/<method>/train/          SVs (svs/*.safetensors), checkpoints, metrics
  methods/<method>/generations/    one JSON-lines file per concept (the resume unit)
  methods/<method>/judged/         the same records with the three ratings
  results/                         results.md, results.json, summary.{csv,json},
                                   per_concept.csv, *.png
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
import zlib
from typing import Dict, List

import jax
import numpy as np

from steerjax import methods
from steerjax.data import axbench as data
from steerjax.data import released, sources
from steerjax.eval import report, scoring
from steerjax.generate import generate_many
from steerjax.jobs import common, sampling
from steerjax.jobs.judges import cache_root, make_judge
from steerjax.store import TextStore

STEERING_PROMPT_REQUEST = """\
Write a short instruction for an AI assistant, two or three sentences and under 100 words, \
that makes it bring the following concept into every answer it gives while still answering \
the user's question: {concept}

Write only the instruction itself, without quotes or any introduction."""


def plan(config, prompt_tokens: int = 20) -> List[dict]:
  """Expected work per method without loading anything. Token counts assume
  `prompt_tokens` per prompt and full `max_response_tokens` responses (an upper bound)."""
  d = config.data
  n = d.num_concepts or 500
  rows, neutral = [], set()
  for m in methods.of_config(config):
    if methods.needs_neutral(m):
      neutral.add(m.neutral)
    row = common.method_cost(m, n, d.n_train, prompt_tokens + d.max_response_tokens,
                             data.N_EVAL, config.eval.max_new_tokens)
    if m.kind == "prompting" and config.eval.steering_prompts == "released":
      row["judge_calls"] -= n    # the steering prompts are read, not written
    rows.append(row)
  for source in sorted(neutral):   # released: none, unless the file lacks concepts
    count = n * d.n_train
    rows.append({"method": f"neutral y ({source})",
                 "generations": count if source == "model" else 0,
                 "new_tokens": count * d.neutral_max_tokens if source == "model" else 0,
                 "judge_calls": count if source == "judge" else 0})
  return rows


def _write_jsonl(path: str, records: List[dict]):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  os.replace(path + ".tmp", path)   # a killed run never leaves half a concept behind


def _read_jsonl(path: str) -> List[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


class Run:
  """What the methods of one run share: context, benchmark, judge, text store."""

  def __init__(self, ctx, workdir: str, judge, bench=None, contrast: str = "contrast",
               inputs=None):
    self.ctx, self.config, self.workdir, self.judge = ctx, ctx.config, workdir, judge
    self.bench = bench or sources.axbench_benchmark(self.config)
    self.contrast = contrast   # the released file of SimPO triples for these concepts
    # {concept_id: [model input per instruction]}: what the model is asked instead of the
    # instruction the judge rates against (the suppression attack)
    self.inputs = inputs or {}
    self.store = TextStore(os.path.join(cache_root(self.config), "axbench_texts.jsonl"))
    self.model_key = f"{self.config.model.path}|{ctx.model.cfg.fingerprint()}"
    self.stops = common.stop_ids(ctx.model, ctx.tok)
    self.sampling = sampling.for_config(self.config)
    self._train_data = {}

  def generate(self, prompts, **kwargs):
    return generate_many(self.ctx.model, self.ctx.params, prompts,
                         batch_size=self.config.eval.batch_size, sort_by_length=True,
                         fixed_batch=True, stop_ids=self.stops, **kwargs)

  def _neutral(self, source: str):
    """`items -> neutral y ids` made by the target model or written by the judge, stored."""
    d = self.config.data
    name = self.model_key if source == "model" else self.judge.name
    make_ids = lambda prompts: self.generate(prompts, max_new_tokens=d.neutral_max_tokens)
    return lambda items: data.neutral_responses(self.store, source, name, items, self.ctx.tok,
                                                d.neutral_max_tokens, make_ids, self.judge.ask)

  def training_data(self, method):
    """ConceptData of every concept, with neutral responses when the objective needs them:
    the authors' released triples (`released`; the judge writes those the file lacks), or
    made here by the model or the judge."""
    source = method.neutral if methods.needs_neutral(method) else None
    if source in self._train_data:
      return self._train_data[source]
    d, tok, concepts = self.config.data, self.ctx.tok, self.bench.concepts
    self.ctx.log(f"training data, neutral y from {source}: {len(concepts)} concept(s)"
                 if source else f"training data: {len(concepts)} concept(s)")
    if source == "released":
      table = released.frame(self.contrast, d.task, cache_root(self.config), d.released_repo)
      found = released.by_concept(table, concepts, self.ctx.log, "contrast data")
      rest = [c for c in concepts if c.concept_id not in found]
      made = {}
      if rest:
        sub = dataclasses.replace(self.bench, concepts=rest)
        made = {x.name: x for x in data.training_data(sub, tok, d.max_response_tokens,
                                                      self._neutral("judge"))}
      out = [data.contrast_training_data(c, found[c.concept_id], tok, d.n_train,
                                         d.max_response_tokens, d.neutral_max_tokens)
             if c.concept_id in found else made[data.concept_name(c)] for c in concepts]
    else:
      out = data.training_data(self.bench, tok, d.max_response_tokens,
                               self._neutral(source) if source else None)
    self._train_data[source] = out
    return out

  def train(self, method):
    return common.train_svs(self.ctx, method, self.training_data(method),
                            os.path.join(self.workdir, "methods", method.name, "train"),
                            concept_ids=[c.concept_id for c in self.bench.concepts],
                            tag=f"{method.name} ")

  def steering_prompts(self, concepts) -> Dict[int, str]:
    """One steering prompt per concept: the authors' released one (`eval.steering_prompts
    = released`), else written by the judge model and stored."""
    found = {}
    if self.config.eval.steering_prompts == "released":
      table = released.frame("steering_prompts", self.config.data.task, cache_root(self.config),
                             self.config.data.released_repo)
      rows = released.by_concept(table, concepts, self.ctx.log, "steering prompts")
      found = {cid: str(r["steering_prompt"].iloc[0]) for cid, r in rows.items()}
      concepts = [c for c in concepts if c.concept_id not in found]
    texts = self.written("steering_prompt", [
        ((c.name,), STEERING_PROMPT_REQUEST.format(concept=c.name)) for c in concepts])
    found.update({c.concept_id: text for c, text in zip(concepts, texts)})
    return found

  def written(self, kind: str, items) -> List[str]:
    """Texts the judge writes for `items` [(key parts, request)], stored under its name so
    each is asked once; quotes around a reply are dropped."""
    keys = [self.store.key(kind, self.judge.name, *parts) for parts, _ in items]

    def write(todo):
      self.ctx.log(f"the judge writes {len(todo)} {kind.replace('_', ' ')}(s)")
      return [t.strip().strip('"').strip() for t in self.judge.ask([items[i][1] for i in todo])]
    return self.store.fetch(keys, write)

  def path(self, method, stage: str, concept) -> str:
    return os.path.join(self.workdir, "methods", method.name, stage,
                        f"{data.concept_name(concept)}.jsonl")


def generations(run: Run, method, concepts, svs, rng) -> Dict[int, List[dict]]:
  """{concept_id: records without ratings} for `concepts`, generated in one batched pass."""
  cfg, tok = run.config, run.ctx.tok
  steering = run.steering_prompts(concepts) if method.kind == "prompting" else {}
  records, prompts = [], []
  for c in concepts:
    for g in (method.grid or (None,)):
      for i, x in enumerate(run.bench.instructions[c.concept_id]):
        r = {"method": method.name, "concept_id": c.concept_id, "concept": c.name,
             "instruction_id": i, "instruction": x, "factor": g}
        text = x
        if c.concept_id in run.inputs:
          text = r["model_input"] = run.inputs[c.concept_id][i]
        if method.kind == "prompting":
          r["steering_prompt"] = steering[c.concept_id]
          text = cfg.eval.prompt_template.format(prompt=r["steering_prompt"], instruction=text)
        if method.trained and g is None:
          r["learned_factor"] = float(np.asarray(svs[data.concept_name(c)]["factor"]))
        records.append(r)
        prompts.append(tok.chat_prompt(text))
  sv, rows = None, None
  if method.trained:
    capacity = max(1, cfg.eval.concepts_per_chunk) * len(method.grid or (None,))
    names = {c.concept_id: data.concept_name(c) for c in concepts}
    sv, index = common.stacked_sv(list(names.values()), svs, method.grid, capacity)
    rows = [index[(names[r["concept_id"]], r["factor"])] for r in records]
  options = dict(dict(top_p=cfg.eval.top_p), **run.sampling)
  outs = run.generate(prompts, max_new_tokens=cfg.eval.max_new_tokens, rng=rng,
                      concept_ids=rows, temperature=cfg.eval.temperature,
                      sv=sv, spec=method.spec if method.trained else None, **options)
  by_concept = {c.concept_id: [] for c in concepts}
  for r, out in zip(records, outs):
    r.update(continuation=tok.decode(out), new_tokens=len(out))
    by_concept[r["concept_id"]].append(r)
  return by_concept


def needs_generation(run: Run, method) -> bool:
  return any(not os.path.exists(run.path(method, "generations", c)) for c in run.bench.concepts)


def evaluate(run: Run, method, svs) -> List[dict]:
  """Judged records of every concept; concepts already judged on disk are read back."""
  cfg, log = run.config, run.ctx.log
  records = []
  todo = [c for c in run.bench.concepts if not os.path.exists(run.path(method, "judged", c))]
  for c in run.bench.concepts:
    if c not in todo:
      records += _read_jsonl(run.path(method, "judged", c))
  if len(todo) < len(run.bench.concepts):
    log(f"{method.name}: {len(run.bench.concepts) - len(todo)} concept(s) already judged")
  per_chunk = max(1, cfg.eval.concepts_per_chunk)
  base = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), zlib.crc32(method.name.encode()))
  for start in range(0, len(todo), per_chunk):
    chunk = todo[start:start + per_chunk]
    missing = [c for c in chunk if not os.path.exists(run.path(method, "generations", c))]
    if missing:
      made = generations(run, method, missing, svs,
                         jax.random.fold_in(base, missing[0].concept_id))
      for c in missing:
        _write_jsonl(run.path(method, "generations", c), made[c.concept_id])
    gens = [r for c in chunk for r in _read_jsonl(run.path(method, "generations", c))]
    failures = run.judge.stats.failures
    ratings = run.judge.rate([{"concept": g["concept"], "instruction": g["instruction"],
                               "continuation": g["continuation"]} for g in gens])
    for g, r in zip(gens, ratings):
      g.update({k: scoring.rating_value(r[k]) for k in scoring.RATINGS}, judge_ok=bool(r["ok"]))
    if run.judge.stats.failures > failures:
      log(f"{method.name}: judge requests failed for concepts "
          f"{[c.concept_id for c in chunk]}; their zeros count now, rerun to ask again")
    else:
      for c in chunk:
        _write_jsonl(run.path(method, "judged", c),
                     [g for g in gens if g["concept_id"] == c.concept_id])
    records += gens
    log(f"{method.name}: judged {start + len(chunk)}/{len(todo)} concept(s)")
  return records


@contextlib.contextmanager
def session(config, workdir: str, log=print, bundle=None, judge=None, **run_options):
  """A `Run` of the configured model, judge (unless one is given) and benchmark; its text
  store, and the judge it made, are closed on the way out."""
  ctx = common.setup(config, log, bundle)
  own_judge, state = judge is None, None
  judge = judge or make_judge(config, ctx)
  try:
    state = Run(ctx, workdir, judge, **run_options)
    yield state
  finally:
    if state is not None:
      state.store.close()
    if own_judge:
      judge.close()


def run(config, workdir: str, log=print, bundle=None, judge=None) -> dict:
  """Every method of `config.methods` on the configured concepts; returns summary.json's dict."""
  t0 = time.time()
  os.makedirs(workdir, exist_ok=True)
  all_methods = methods.of_config(config)
  with session(config, workdir, log, bundle, judge) as state:
    ctx, judge = state.ctx, state.judge
    log(f"axbench: {len(all_methods)} method(s) x {len(state.bench.concepts)} concept(s) on "
        f"{config.model.path} (width {ctx.model.cfg.dim}, layer {config.steer.layer}); "
        f"judge {judge!r}")
    summary, rows, records, grids = [], [], {}, {}
    for k, method in enumerate(all_methods):
      log(f"[{k + 1}/{len(all_methods)}] {method.name}")
      svs = state.train(method) if method.trained and needs_generation(state, method) else None
      records[method.name] = evaluate(state, method, svs)
      method_rows = scoring.score_method(method.name, records[method.name],
                                         grid=method.grid is not None)
      rows += method_rows
      summary.append(scoring.summarize(method.name, method_rows, records[method.name],
                                       grid=method.grid is not None))
      if method.grid is not None:
        grids[method.name] = method.grid
    extra = {"judge": judge.stats.as_dict(),
             "text_store": {"hits": state.store.hits, "misses": state.store.misses},
             "seconds": round(time.time() - t0, 1)}
    d = config.data
    title = (f"AxBench {d.suite} {d.task}: {config.model.path}, layer {config.steer.layer}, "
             f"concepts {d.first_concept}..{d.first_concept + summary[0]['concepts'] - 1}")
    folder = config.results_dir or os.path.join(workdir, "results")
    markdown = report.write(folder, title, summary, rows, records, grids, extra)
  log("\n" + markdown)
  log(f"wrote {folder} in {time.time() - t0:.0f} s")
  return dict(extra, methods=summary, results_dir=folder)
