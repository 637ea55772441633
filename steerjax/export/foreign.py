"""SVs trained elsewhere, as steerjax SVs: AxBench / RePS weight files and pyvene / pyreft
intervention directories holding additive interventions.

AxBench writes, per method, `<Method>_weight.pt` ([C, D]: one row per concept, in the order
of `metadata.jsonl`), `<Method>_bias.pt` ([C]) and `config.json` (`model_name`, `layer`)
into its `train/` folder; its additive steering is `h + factor * W[c]` at the output of
block `layer`, every token but BOS (steerjax's "all-bos"). RePS' preference vectors add
their bias to the factor (`with_bias`). pyvene saves `config.json` and one
`intkey_<key>.bin` state dict per intervention, the key naming the layer and component.
Torch files are read with `weights_only=True`: tensors and plain values, never code.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from steerjax.export.formats import imported

AXBENCH_POSITIONS = "all-bos"
_PYVENE_KEY = re.compile(r"^layer_(\d+)_comp_(.+?)_unit_(.+)_nunit_(\d+)#(\d+)$")
# State-dict entries of additive interventions: pyvene's constant-source AdditionIntervention
# and the one-row `proj` of AxBench-style steering interventions (its bias is unused).
_ADDITIVE = ("source_representation", "proj.weight")
_IGNORED = ("proj.bias",)


def _json(path: str):
  with open(path) as f:
    return json.load(f)


def _tensor(path: str):
  import torch
  if not os.path.exists(path):
    raise FileNotFoundError(f"no tensor file at {path}")
  value = torch.load(path, map_location="cpu", weights_only=True)
  if isinstance(value, dict):
    return {k: v.detach().float().numpy() for k, v in value.items() if hasattr(v, "detach")}
  return value.detach().float().numpy()


# ---------------------------------------------------------------------------- AxBench

def axbench_folder(folder: str) -> str:
  """The folder holding the weight files: `folder` or its `train/`."""
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"no AxBench folder at {folder}")
  train = os.path.join(folder, "train")
  return train if not _methods(folder) and os.path.isdir(train) else folder


def _methods(folder: str):
  if not os.path.isdir(folder):
    return []
  return sorted(f[:-len("_weight.pt")] for f in os.listdir(folder)
                if f.endswith("_weight.pt") and not f.startswith("rank_"))


def axbench_concepts(folder: str) -> list:
  """metadata.jsonl rows (`concept_id`, `concept`, ...) in weight-row order; [] if absent."""
  path = os.path.join(axbench_folder(folder), "metadata.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def from_axbench(folder: str, concept, *, method: str = "", factor: float = 1.0,
                 with_bias: bool = False, positions: str = AXBENCH_POSITIONS, layer=None,
                 model_cfg=None):
  """(sv, meta) of one concept's row of an AxBench weight file. `concept`: a concept id,
  or a concept name from metadata.jsonl. The SV steers as AxBench does at steering factor
  `factor`: h + factor * W[c] (+ bias[c] in the factor with `with_bias`)."""
  folder = axbench_folder(folder)
  methods = _methods(folder)
  if not method:
    if len(methods) != 1:
      raise ValueError(f"{folder}: <Method>_weight.pt files for {methods}; name one with "
                       "--method" if methods else f"{folder} has no <Method>_weight.pt file")
    method = methods[0]
  if method not in methods:
    raise FileNotFoundError(f"{folder} has no {method}_weight.pt (found {methods})")
  weight = _tensor(os.path.join(folder, f"{method}_weight.pt"))
  if not isinstance(weight, np.ndarray) or weight.ndim != 2:
    raise ValueError(f"{folder}/{method}_weight.pt: expected a [concepts, width] tensor")
  config_path = os.path.join(folder, "config.json")
  config = _json(config_path) if os.path.exists(config_path) else {}
  if layer is None and "layer" not in config:
    raise ValueError(f"{folder}: no config.json with the layer; pass --layer")
  rows = axbench_concepts(folder)
  row = _row(rows, concept, weight.shape[0], folder)
  bias = 0.0
  if with_bias:
    bias_path = os.path.join(folder, f"{method}_bias.pt")
    bias = float(np.asarray(_tensor(bias_path)).reshape(-1)[row])
  info = rows[row] if rows else {"concept_id": row}
  meta = {"model": config.get("model_name", ""), "layer": int(layer if layer is not None
                                                              else config["layer"]),
          "op": "add", "positions": positions, "concept": str(info.get("concept", row)),
          "objective": f"axbench:{method}",
          "source": {"format": "AxBench", "path": folder, "method": method, "row": row,
                     "concept_id": info.get("concept_id", row), "steering_factor": factor,
                     "bias_in_factor": bias}}
  return imported(weight[row], factor + bias, meta, model_cfg, f"{folder}/{method}_weight.pt")


def _row(rows: list, concept, n_rows: int, folder: str) -> int:
  if isinstance(concept, str) and not concept.lstrip("-").isdigit():
    names = [r.get("concept") for r in rows]
    if concept not in names:
      raise ValueError(f"{folder}: no concept named {concept!r} in metadata.jsonl")
    row = names.index(concept)
  else:
    ids = [r.get("concept_id") for r in rows]
    row = ids.index(int(concept)) if int(concept) in ids else int(concept)
  if not 0 <= row < n_rows:
    raise ValueError(f"{folder}: concept {concept!r} is beyond the {n_rows} weight rows")
  return row


# ---------------------------------------------------------------------------- pyvene / pyreft

def pyvene_keys(folder: str) -> list:
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"no intervention directory at {folder}")
  return sorted(f[len("intkey_"):-len(".bin")] for f in os.listdir(folder)
                if f.startswith("intkey_") and f.endswith(".bin"))


def from_pyvene(folder: str, *, key: str = "", positions: str = "all", factor: float = 1.0,
                concept: int = 0, model_cfg=None):
  """(sv, meta) of an additive pyvene / pyreft intervention. Its site must be a block's
  output (`block_output` of layer L -> L) or input (`block_input` of L -> L - 1). pyreft
  does not store positions, so pass the ones it was trained with (default: all)."""
  keys = pyvene_keys(folder)
  if not key:
    if len(keys) != 1:
      raise ValueError(f"{folder}: interventions {keys or 'none'}; name one with --key")
    key = keys[0]
  match = _PYVENE_KEY.match(key)
  if key not in keys or not match:
    raise ValueError(f"{folder}: no intervention key {key!r} of the form "
                     f"layer_L_comp_C_unit_U_nunit_N#I (found {keys})")
  layer, component = int(match.group(1)), match.group(2)
  if component == "block_input" and layer >= 1:
    layer -= 1
  elif component != "block_output":
    raise ValueError(f"{folder}: intervention {key} edits {component!r}; steerjax SVs edit a "
                     "block's residual output (block_output, or block_input of the next block)")
  kind = _intervention_type(folder, key)
  state = _tensor(os.path.join(folder, f"intkey_{key}.bin"))
  if not isinstance(state, dict):
    raise ValueError(f"{folder}/intkey_{key}.bin is not a state dict")
  others = sorted(set(state) - set(_ADDITIVE) - set(_IGNORED))
  vectors = [k for k in _ADDITIVE if k in state]
  if others or len(vectors) != 1:
    raise ValueError(f"{folder}: intervention {key} ({kind or 'unknown type'}) has parameters "
                     f"{sorted(state)}; only additive ones ({' or '.join(_ADDITIVE)}) import")
  vector = np.asarray(state[vectors[0]], np.float32)
  vector = vector.reshape(-1, vector.shape[-1])
  if not 0 <= concept < vector.shape[0]:
    raise ValueError(f"{folder}: {vectors[0]} has {vector.shape[0]} rows; --concept {concept}")
  meta = {"layer": layer, "op": "add", "positions": positions, "objective": "pyvene",
          "source": {"format": "pyvene", "path": folder, "key": key, "type": kind,
                     "parameter": vectors[0], "row": concept}}
  return imported(vector[concept], factor, meta, model_cfg, f"{folder}/intkey_{key}.bin")


def _intervention_type(folder: str, key: str) -> str:
  path = os.path.join(folder, "config.json")
  if not os.path.exists(path):
    return ""
  config = _json(path)
  types = config.get("intervention_types") or config.get("intervenable_interventions_type") or []
  order = config.get("sorted_keys") or []
  kind = str(types[order.index(key)] if key in order and len(types) > order.index(key)
             else (types[0] if len(types) == 1 else ""))
  kind = re.sub(r"^<class '(?:[\w.]*\.)?(\w+)'>$", r"\1", kind)   # the bare class name
  if re.search(r"(?i)reft|lora|rotat", kind):
    raise ValueError(f"{folder}: intervention {key} is {kind}, not an additive intervention")
  return kind
