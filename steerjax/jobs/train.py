"""The `train` job: one SV per concept of `data.source` under the config's one method.

  python -m steerjax.main --config=configs/base.py --workdir=runs/train
  python -m steerjax.main --config=configs/base.py --workdir=runs/mine \
      --config.data.source=file --config.data.path=my_concepts.jsonl

SVs go to `workdir/svs/<concept>.safetensors`; SimPO / RePS neutral responses missing from
the data are the model's own greedy continuations.
"""

from __future__ import annotations

import os

from steerjax import methods
from steerjax.data import local, sources
from steerjax.runtime import context, plans, training


def plan(config) -> list:
  """The job's cost; reads a concept file's rows but loads no model."""
  method = methods.base_method(config)
  d = config.data
  sources.check(config)
  n_train, length = d.n_train, plans.prompt_length(config)[0] + d.max_response_tokens
  if d.source == "tinystories":
    count, length = len(d.concepts), d.prefix_tokens + d.continuation_tokens
  elif d.source == "axbench":
    count = d.num_concepts or 500
  else:
    grouped = local.by_concept(local.read_rows(d.path), d.n_train)
    count, n_train = len(grouped), min(len(pairs) for pairs in grouped.values())
  return [plans.method_cost(method, count, n_train, length, judged=False)]


def run(config, workdir: str, log=print, bundle=None) -> dict:
  """Train the SVs; returns {concept: {"factor", "direction"}}."""
  os.makedirs(workdir, exist_ok=True)
  method = methods.base_method(config)
  ctx = context.setup(config, log, bundle)
  concepts, ids = sources.training_concepts(config, ctx.tok)
  log(f"data: {len(concepts)} concept(s) x {len(concepts[0].prompts)} training pairs "
      f"({config.data.source})")
  if methods.needs_neutral(method):
    concepts = training.with_model_neutral(ctx, concepts)
  concept_ids = None if config.data.source != "axbench" else ids
  return training.train_svs(ctx, method, concepts, workdir, concept_ids=concept_ids)
