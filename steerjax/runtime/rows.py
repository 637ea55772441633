"""Rows of the utility and attack tables: a method of an axbench run, at a factor scale,
over a set of concepts whose SVs that run trained.

A row is written `method` or `method@scale` (e.g. `fssv_simpo@0.5`); `unsteered` and
`prompting` need no SVs. SVs are read from `<svs_from>/methods/<method>/train/svs/`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import List

import numpy as np

from steerjax import checkpoint, methods
from steerjax.data.benchmark import concept_name


@dataclasses.dataclass(frozen=True)
class Row:
  name: str                    # as written, e.g. "fssv_simpo@0.5"
  method: methods.Method
  scale: float = 1.0

  @property
  def needs_svs(self) -> bool:
    return self.method.trained


def parse_rows(config, rows) -> List[Row]:
  """Rows from strings `method[@scale]`, each method from `config.method_overrides`."""
  out = []
  for text in rows:
    name, _, scale = text.partition("@")
    try:
      factor = float(scale) if scale else 1.0
    except ValueError:
      raise ValueError(f"row {text!r}: the factor scale after '@' must be a number") from None
    method = methods.from_config(config, name)
    if scale and not method.trained:
      raise ValueError(f"row {text!r}: {name} has no SV to scale")
    if method.trained and method.grid is not None:
      raise ValueError(f"row {text!r}: {name} searches a factor grid; rows take jointly "
                       "trained SVs (their learned factor, optionally scaled)")
    out.append(Row(text, method, factor))
  return out


def load_sv(svs_from: str, row: Row, concept, model_cfg) -> dict:
  """A row's SV for one concept, its factor scaled."""
  path = os.path.join(svs_from, "methods", row.method.name, "train", "svs",
                      f"{concept_name(concept)}.safetensors")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: train {row.method.name} for concept "
                            f"{concept.concept_id} with the axbench job into {svs_from} first")
  sv, _ = checkpoint.load_sv(path, model_cfg)
  return dict(sv, factor=np.asarray(sv["factor"]) * row.scale)


def configured_rows(config, group: str) -> List[Row]:
  """The rows of `config.<group>` (utility or attack), checked: SV rows need `svs_from`."""
  options = config[group]
  rows = parse_rows(config, options.rows)
  if any(r.needs_svs for r in rows) and not options.svs_from:
    raise ValueError(f"{group}.svs_from is empty: point it at the workdir of the axbench run "
                     "whose SVs the rows use")
  return rows
