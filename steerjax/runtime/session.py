"""The generate -> judge -> score session every evaluating job runs on: one benchmark, one
judge, a store of judge-written texts, and per-concept files so a killed run resumes.

Per method and concept, the benchmark's test instructions are answered by the steered model
and rated by the judge on concept, instruction and fluency. Under the job's workdir:

  methods/<method>/train/          SVs (svs/*.safetensors), checkpoints, metrics
  methods/<method>/generations/    one JSON-lines file per concept (the resume unit)
  methods/<method>/judged/         the same records with the three ratings
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import zlib
from typing import Dict, List

import jax
import numpy as np

from steerjax import checkpoint, methods, paths
from steerjax.data import axbench, released, sources
from steerjax.data.benchmark import Benchmark, concept_name
from steerjax.eval import judges, scoring
from steerjax.eval.judge import rate_behind
from steerjax.generate import generate_many, sampling_options
from steerjax.models import stop_ids
from steerjax.models.loading import resolve
from steerjax.runtime import chat, context, training
from steerjax.store import TextStore

STEERING_PROMPT_REQUEST = """\
Write a short instruction for an AI assistant, two or three sentences and under 100 words, \
that makes it bring the following concept into every answer it gives while still answering \
the user's question: {concept}

Write only the instruction itself, without quotes or any introduction."""
STEERING_PROMPT_SOURCES = ("released", "judge", "benchmark")
REQUEST_SOURCES = ("steerjax", "prosv")   # eval.requests: ours, or the authors' T_GENERATE_*


def write_jsonl(path: str, records: List[dict]):
  paths.write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_jsonl(path: str) -> List[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def benchmark(config, tok) -> Benchmark:
  """The configured benchmark: AxBench concepts, or TinyStories concepts (story openings as
  instructions, each concept's description as its steering prompt). The chat benchmark needs
  its model and judge: a `Session` builds it."""
  if config.data.source == "axbench":
    return sources.axbench_benchmark(config)
  if config.data.source == "tinystories":
    return sources.tinystories_benchmark(config, tok)
  raise ValueError(f"data.source={config.data.source!r} has no test instructions; evaluate "
                   "on 'axbench', 'tinystories' or 'chat'")


def model_sampling(config) -> dict:
  """The extra `generate` arguments of `config.eval.sampling` for `config.model`."""
  path = resolve(config.model.path, config.data_root or None)
  return sampling_options(config.eval.sampling,
                          path if os.path.isdir(path) else os.path.dirname(path))


class Session:
  """What the methods of one evaluation share: context, benchmark, judge, text store."""

  def __init__(self, ctx, workdir: str, judge, bench=None, contrast: str = "contrast",
               inputs=None):
    self.ctx, self.config, self.workdir, self.judge = ctx, ctx.config, workdir, judge
    self.contrast = contrast   # the released file of SimPO triples for these concepts
    # {concept_id: [model input per instruction]}: what the model is asked instead of the
    # instruction the judge rates against (the suppression attack)
    self.inputs = inputs or {}
    self.cache_root = paths.cache_root(self.config.cache_dir)
    self.store = TextStore(os.path.join(self.cache_root, "axbench_texts.jsonl"))
    self.model_key = f"{self.config.model.path}|{ctx.model.cfg.fingerprint()}"
    self.stops = stop_ids(ctx.model.cfg, ctx.tok)
    self.sampling = model_sampling(self.config)
    self._train_data = {}
    if bench is None and self.config.data.source == "chat":
      bench = chat.benchmark(self)
    self.bench = bench or benchmark(self.config, ctx.tok)

  def generate(self, prompts, **kwargs):
    return generate_many(self.ctx.model, self.ctx.params, prompts,
                         batch_size=self.config.eval.batch_size, sort_by_length=True,
                         fixed_batch=True, stop_ids=self.stops, **kwargs)

  def max_activations(self, method, svs) -> Dict[str, float]:
    """{concept: AxBench's max activation}: over the concept's latent eval rows, each a chat
    of its input and output without the closing end-of-turn, the largest h.v at block
    `layer` after the chat prefix (rounded to 3 places as AxBench rounds); 50 when none is
    positive (AxBench's fallback)."""
    from steerjax.steering import chat_prefix_length
    from steerjax.train import _site_outputs
    d, ctx = self.config.data, self.ctx
    frame = axbench.latent_frame(d.suite, d.task, self.config.data_root or None)
    prefix = chat_prefix_length(ctx.tok.chat_ids)
    out = {}
    for c in self.bench.concepts:
      if c.name not in svs:
        continue
      rows = frame[frame["concept_id"] == c.concept_id]
      inputs = [self._latent_ids(x, y) for x, y in zip(rows["input"], rows["output"])]
      v = np.asarray(svs[c.name]["direction"], np.float32)
      best = -np.inf
      for start in range(0, len(inputs), self.config.eval.batch_size):
        ids = inputs[start:start + self.config.eval.batch_size]
        T = -(-max(map(len, ids)) // 16) * 16
        tokens = np.full((len(ids), T), ctx.model.cfg.pad_id, np.int32)
        valid = np.zeros((len(ids), T), bool)
        for i, x in enumerate(ids):
          tokens[i, :len(x)], valid[i, :len(x)] = x, True
        h = np.asarray(_site_outputs(ctx.model, method.spec.layer, ctx.params, tokens, valid),
                       np.float32)
        acts = np.round(h @ v, 3)
        acts[:, :prefix] = -np.inf
        acts[~valid] = -np.inf
        best = max(best, float(acts.max()))
      out[c.name] = best if best > 0 else 50.0
    return out

  def _latent_ids(self, instruction: str, output: str) -> list:
    """A latent eval row as AxBench's `prepare_df` tokenizes it: the user turn and the
    answer under the chat template, up to the end of the answer."""
    text = self.ctx.tok.chat_text([{"role": "user", "content": instruction},
                                   {"role": "assistant", "content": output}],
                                  add_generation_prompt=False)
    end = text.rfind(output)
    return self.ctx.tok.encode(text[:end + len(output)] if end >= 0 else text)

  def scaled_by_max_act(self, method, svs) -> Dict[str, dict]:
    """`svs` with each direction times its concept's max activation, so a factor f steers
    by f * max_act * v (AxBench's steering vector at inference)."""
    found = self.max_activations(method, svs)
    self.ctx.log(f"{method.name}: max activations " + ", ".join(
        f"{k} {v:.3g}" for k, v in list(found.items())[:5]) + (" ..." if len(found) > 5 else ""))
    return {k: dict(sv, direction=np.asarray(sv["direction"], np.float32) * found[k])
            for k, sv in svs.items()}

  def _neutral(self, source: str):
    """`items -> neutral y ids` made by the target model or written by the judge, stored."""
    d = self.config.data
    name = self.model_key if source == "model" else self.judge.name
    tokens = d.model_neutral_tokens if source == "model" else d.neutral_max_tokens
    make_ids = lambda prompts: self.generate(prompts, max_new_tokens=tokens)
    kind, request = "neutral", axbench.NEUTRAL_REQUEST
    if source == "judge":
      kind, request = self.request("neutral", request)
    return lambda items: axbench.neutral_responses(
        self.store, source, name, items, self.ctx.tok, tokens, make_ids, self.judge.ask,
        request=request, kind=kind)

  def training_data(self, method):
    """ConceptData of every concept, with neutral responses when the objective needs them.
    AxBench: the authors' released triples (`released`; the judge writes those the file
    lacks), or made here by the model or the judge; chat: made by the model or the judge.
    Other sources: the model's own."""
    source = method.neutral if methods.needs_neutral(method) else None
    if source in self._train_data:
      return self._train_data[source]
    d, tok, concepts = self.config.data, self.ctx.tok, self.bench.concepts
    self.ctx.log(f"training data, neutral y from {source}: {len(concepts)} concept(s)"
                 if source else f"training data: {len(concepts)} concept(s)")
    if d.source not in ("axbench", "chat"):
      out, _ = sources.training_concepts(self.config, tok)
      if source:
        out = training.with_model_neutral(self.ctx, out)
    elif source == "released":
      table = released.frame(self.contrast, d.task, self.cache_root, d.released_repo)
      found = released.by_concept(table, concepts, self.ctx.log, "contrast data")
      rest = [c for c in concepts if c.concept_id not in found]
      made = {}
      if rest:
        sub = dataclasses.replace(self.bench, concepts=rest)
        made = {x.name: x for x in axbench.training_data(sub, tok, d.max_response_tokens,
                                                         self._neutral("judge"))}
      out = [axbench.contrast_training_data(c, found[c.concept_id], tok, d.n_train,
                                            d.max_response_tokens, d.neutral_max_tokens)
             if c.concept_id in found else made[concept_name(c)] for c in concepts]
    else:
      out = axbench.training_data(self.bench, tok, d.max_response_tokens,
                                  self._neutral(source) if source else None)
    self._train_data[source] = out
    return out

  def train(self, method):
    return training.train_svs(self.ctx, method, self.training_data(method),
                              os.path.join(self.workdir, "methods", method.name, "train"),
                              concept_ids=[c.concept_id for c in self.bench.concepts],
                              tag=f"{method.name} ")

  def saved_svs(self, method) -> Dict[str, dict]:
    """{concept file name: SV} of a trained method, read from the files `train` wrote."""
    folder = os.path.join(self.workdir, "methods", method.name, "train", "svs")
    return {concept_name(c): checkpoint.load_sv(
        os.path.join(folder, training.sv_filename(concept_name(c))), self.ctx.model.cfg)[0]
            for c in self.bench.concepts}

  def steering_prompts(self, concepts) -> Dict[int, str]:
    """One steering prompt per concept, from `eval.steering_prompts`: the benchmark's own,
    the authors' released one, or written by the judge model and stored (also for the
    concepts the other two lack)."""
    source = self.config.eval.steering_prompts
    if source not in STEERING_PROMPT_SOURCES:
      raise ValueError(f"eval.steering_prompts={source!r}; use one of {STEERING_PROMPT_SOURCES}")
    found = {}
    if source == "benchmark":
      found = {c.concept_id: self.bench.steering_prompts[c.concept_id] for c in concepts
               if c.concept_id in self.bench.steering_prompts}
    elif source == "released":
      table = released.frame("steering_prompts", self.config.data.task, self.cache_root,
                             self.config.data.released_repo)
      rows = released.by_concept(table, concepts, self.ctx.log, "steering prompts")
      found = {cid: str(r["steering_prompt"].iloc[0]) for cid, r in rows.items()}
    concepts = [c for c in concepts if c.concept_id not in found]
    kind, request = self.request("steering_prompt", STEERING_PROMPT_REQUEST)
    texts = self.written(kind, [((c.name,), request.format(concept=c.name)) for c in concepts])
    found.update({c.concept_id: text for c, text in zip(concepts, texts)})
    return found

  def request(self, kind: str, own: str):
    """(store kind, request template) of what the judge is asked to write: `own`, or with
    eval.requests='prosv' the authors' request (steerjax.data.released.requests)."""
    source = self.config.eval.requests
    if source not in REQUEST_SOURCES:
      raise ValueError(f"eval.requests={source!r}; use one of {REQUEST_SOURCES}")
    if source == "steerjax":
      return kind, own
    if kind == "neutral":   # the paper's Fig. 40 request is AxBench's
      return f"{kind}@prosv", axbench.neutral_request(self.cache_root,
                                                      self.config.data.axbench_repo)
    found = released.requests(self.cache_root, self.config.data.released_repo)
    return f"{kind}@prosv", found[kind]

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
                        f"{concept_name(concept)}.jsonl")

  def needs_generation(self, method) -> bool:
    return any(not os.path.exists(self.path(method, "generations", c))
               for c in self.bench.concepts)

  def generations(self, method, concepts, svs, rng) -> Dict[int, List[dict]]:
    """{concept_id: records without ratings} for `concepts`, generated in one batched pass."""
    cfg, tok = self.config, self.ctx.tok
    steering = self.steering_prompts(concepts) if method.kind == "prompting" else {}
    records, prompts = [], []
    for c in concepts:
      for g in (method.grid or (None,)):
        for i, x in enumerate(self.bench.instructions[c.concept_id]):
          r = {"method": method.name, "concept_id": c.concept_id, "concept": c.name,
               "instruction_id": i, "instruction": x, "factor": g}
          text = x
          if c.concept_id in self.inputs:
            text = r["model_input"] = self.inputs[c.concept_id][i]
          if method.kind == "prompting":
            r["steering_prompt"] = steering[c.concept_id]
            text = cfg.eval.prompt_template.format(prompt=r["steering_prompt"], instruction=text)
          if method.trained and g is None:
            r["learned_factor"] = float(np.asarray(svs[concept_name(c)]["factor"]))
          records.append(r)
          prompts.append(tok.chat_prompt(text))
    sv, rows = None, None
    if method.trained:
      capacity = max(1, cfg.eval.concepts_per_chunk) * len(method.grid or (None,))
      names = {c.concept_id: concept_name(c) for c in concepts}
      sv, index = training.stacked_sv(list(names.values()), svs, method.grid, capacity)
      rows = [index[(names[r["concept_id"]], r["factor"])] for r in records]
    options = dict(dict(top_p=cfg.eval.top_p), **self.sampling)
    outs = self.generate(prompts, max_new_tokens=cfg.eval.max_new_tokens, rng=rng,
                         concept_ids=rows, temperature=cfg.eval.temperature,
                         sv=sv, spec=method.spec if method.trained else None, **options)
    by_concept = {c.concept_id: [] for c in concepts}
    for r, out in zip(records, outs):
      r.update(continuation=tok.decode(out), new_tokens=len(out))
      by_concept[r["concept_id"]].append(r)
    return by_concept

  def evaluate(self, method, svs) -> List[dict]:
    """Judged records of every concept; concepts already judged on disk are read back."""
    return self.evaluate_methods([(method, lambda: svs)])[method.name]

  def evaluate_methods(self, work) -> Dict[str, List[dict]]:
    """{method name: judged records of every concept} for `work` = [(method, get_svs)];
    `get_svs()` trains or loads a method's SVs and is called only when it has something to
    generate. The judge rates one chunk of concepts while the next chunk is generated (or
    the next method trained); a batch-mode judge gets every chunk in one submission.
    Concepts already judged on disk are read back; a rating the judge could not get stops
    the run (`MissingRatings`) with every concept judged so far on disk."""
    records = {method.name: [] for method, _ in work}
    depth = None if getattr(self.judge, "mode", "online") == "batch" else 1
    for (method, chunk, gens, done), ratings in rate_behind(self.judge, self._chunks(work, records),
                                                            depth):
      for g, r in zip(gens, ratings):
        g.update({k: scoring.rating_value(r[k]) for k in scoring.RATINGS},
                 judge_ok=bool(r["ok"]))
      for c in chunk:
        write_jsonl(self.path(method, "judged", c),
                    [g for g in gens if g["concept_id"] == c.concept_id])
      records[method.name] += gens
      self.ctx.log(f"{method.name}: judged {done} concept(s)")
    return records

  def _chunks(self, work, records):
    """((method, chunk, records, progress), judge items) per chunk of concepts to judge,
    generated now where the files lack them; judged concepts go straight to `records`."""
    cfg = self.config
    per_chunk = max(1, cfg.eval.concepts_per_chunk)
    for method, get_svs in work:
      todo = [c for c in self.bench.concepts
              if not os.path.exists(self.path(method, "judged", c))]
      for c in self.bench.concepts:
        if c not in todo:
          records[method.name] += read_jsonl(self.path(method, "judged", c))
      if len(todo) < len(self.bench.concepts):
        self.ctx.log(f"{method.name}: {len(self.bench.concepts) - len(todo)} concept(s) "
                     "already judged")
      svs = None
      base = jax.random.fold_in(jax.random.key(cfg.seed), zlib.crc32(method.name.encode()))
      for start in range(0, len(todo), per_chunk):
        chunk = todo[start:start + per_chunk]
        missing = [c for c in chunk if not os.path.exists(self.path(method, "generations", c))]
        if missing:
          if svs is None and method.trained:
            svs = get_svs()
            if method.scale == "max_act":
              svs = self.scaled_by_max_act(method, svs)
          made = self.generations(method, missing, svs,
                                  jax.random.fold_in(base, missing[0].concept_id))
          for c in missing:
            write_jsonl(self.path(method, "generations", c), made[c.concept_id])
        gens = [r for c in chunk for r in read_jsonl(self.path(method, "generations", c))]
        items = [{"concept": g["concept"], "instruction": g["instruction"],
                  "continuation": g["continuation"]} for g in gens]
        yield (method, chunk, gens, f"{start + len(chunk)}/{len(todo)}"), items


@contextlib.contextmanager
def open_session(config, workdir: str, log=print, bundle=None, judge=None, **options):
  """A `Session` of the configured model, judge (unless one is given) and benchmark; its
  text store, and the judge it made, are closed on the way out."""
  ctx = context.setup(config, log, bundle)
  own_judge, state = judge is None, None
  judge = judge or judges.from_config(config, ctx.bundle)
  try:
    state = Session(ctx, workdir, judge, **options)
    yield state
  finally:
    if state is not None:
      state.store.close()
    if own_judge:
      judge.close()
