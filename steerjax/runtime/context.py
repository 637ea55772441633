"""What every job sets up once: config checks, the model and tokenizer, the mesh and the
frozen params placed on it."""

from __future__ import annotations

import dataclasses
from typing import Callable

from steerjax import methods, sharding
from steerjax.data import sources
from steerjax.models import DTYPES, load, load_tokenizer


@dataclasses.dataclass
class Context:
  """A job's model, tokenizer and mesh, set up once and shared by all its methods."""
  config: object
  model: object
  params: object
  tok: object
  mesh: object = None
  rules: object = None
  log: Callable = print
  memo: dict = dataclasses.field(default_factory=dict)   # what the job computes once

  @property
  def bundle(self):
    return self.model, self.params, self.tok


def check_config(config):
  """Errors found from the config alone: raised before any model is loaded."""
  if config.model.dtype not in DTYPES:
    raise ValueError(f"model.dtype={config.model.dtype!r}; use one of {sorted(DTYPES)}")
  sources.check(config)
  methods.base_method(config)


def load_model(config):
  """(model, params, tokenizer) from `config.model` and the data root."""
  root = config.data_root or None
  model, params = load(config.model.path, DTYPES[config.model.dtype], data_root=root)
  if config.model.remat:
    model = model.clone(remat=True)
  if config.model.vocab_chunk:
    model = model.clone(vocab_chunk=int(config.model.vocab_chunk))
  tok = load_tokenizer(config.model.tokenizer or config.model.path, data_root=root,
                       thinking=config.model.thinking)
  return model, params, tok


def setup(config, log=print, bundle=None) -> Context:
  """Load the model (unless `bundle` is given), check the config against it, build the mesh
  and place the frozen params on it once."""
  check_config(config)
  mesh, rules = sharding.from_config(config)   # (None, None) unless config.mesh.shape is set
  model, params, tok = bundle or load_model(config)
  methods.check_model(config, model.cfg)
  if mesh is not None:
    params = sharding.shard_params(params, sharding.param_shardings(model, mesh, rules))
  return Context(config, model, params, tok, mesh, rules, log)
