"""SVs to and from llama.cpp control vectors (GGUF), EasySteer requests and lm-eval's
`steered` model (`.pt`).

Layer numbering is the same everywhere: steerjax's `layer` L edits the output of decoder
block L (0-based, HF `model.layers[L]`). llama.cpp's tensor `direction.N` is added to the
output of block N (its graph calls the control vector at the end of layer `il`, and its
loader puts `direction.N` in slot N; N = 0 is rejected), EasySteer reads `direction.N` as
the vector of `model.layers[N]`, and lm-eval hooks the module named `layers.N` of the HF
base model. So L maps to N = L and to hook point `layers.L`.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from steerjax import checkpoint
from steerjax.steering import parse_positions

CONTROL_VECTOR_ARCH = "controlvector"


# ---------------------------------------------------------------------------- shared

def single(sv: dict, meta: dict, where: str):
  """(factor, direction [D]) of a one-concept SV, width checked against its header."""
  direction = np.asarray(sv["direction"], np.float32)
  if direction.ndim != 1:
    raise ValueError(f"{where}: the SV stacks {direction.shape[0]} concepts; export one SV "
                     "file per concept")
  width = meta.get("width")
  if width is not None and int(width) != direction.shape[0]:
    raise ValueError(f"{where}: direction width {direction.shape[0]} does not match the "
                     f"header's width {width}; the file is damaged")
  return float(np.asarray(sv["factor"]).reshape(())), direction


def check_target(sv: dict, meta: dict, model_cfg, where: str):
  """Refuse an SV whose width, layer or model fingerprint does not fit `model_cfg`."""
  if model_cfg is not None:
    checkpoint.check_compatible(meta, sv, model_cfg, where)


def imported(direction, factor: float, meta: dict, model_cfg, where: str):
  """(sv, meta) of an imported vector, checked against `model_cfg` when one is given."""
  direction = np.asarray(direction, np.float32)
  if direction.ndim != 1:
    raise ValueError(f"{where}: expected one vector [D], got shape {direction.shape}")
  sv = {"factor": np.float32(factor), "direction": direction}
  meta = dict(meta, width=int(direction.shape[0]), factor=float(factor))
  if model_cfg is not None:
    checkpoint.check_compatible(meta, sv, model_cfg, where)
    meta.setdefault("model_fingerprint", model_cfg.fingerprint())
  return sv, meta


def _write_text(path: str, text: str):
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


def _atomic(path: str, write):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  write(tmp)
  os.replace(tmp, path)
  return path


# ---------------------------------------------------------------------------- llama.cpp

def to_control_vector(sv: dict, meta: dict, path: str, *, lossy: bool = False,
                      model_cfg=None, model_hint: str = "", first_layer: int = 1) -> str:
  """Write a llama.cpp control vector: one F32 tensor `direction.<layer>` holding
  factor * direction, added at every token. Only `op="add"` fits; an SV that edits some
  positions only is refused unless `lossy`, and the file then records it. `first_layer`:
  1 for llama.cpp (it never steers block 0), 0 for readers that do (EasySteer)."""
  factor, direction = single(sv, meta, path)
  check_target(sv, meta, model_cfg, path)
  layer, op, positions = int(meta["layer"]), meta.get("op", "add"), meta.get("positions", "all")
  if op != "add":
    raise ValueError(f"{path}: op={op!r}, but a control vector can only be added; export "
                     "SVs with op='add'")
  if layer < first_layer:
    raise ValueError(f"{path}: layer 0 cannot be exported: llama.cpp applies direction.N to "
                     "block N for N >= 1 only (its loader rejects direction.0)")
  if positions != "all" and not lossy:
    raise ValueError(f"{path}: positions={positions!r}, but llama.cpp adds a control vector "
                     "at every token; pass --lossy (lossy=True) to export it anyway (the file "
                     "then says so in its metadata)")
  hint = model_hint or (model_cfg.family if model_cfg is not None else str(meta.get("model", "")))

  def write(tmp):
    import gguf
    writer = gguf.GGUFWriter(tmp, CONTROL_VECTOR_ARCH)
    writer.add_string("controlvector.model_hint", hint)
    writer.add_int32("controlvector.layer_count", 1)
    writer.add_string("steerjax.header", json.dumps(meta, sort_keys=True))
    writer.add_int32("steerjax.layer", layer)
    writer.add_string("steerjax.positions", positions)
    writer.add_bool("steerjax.lossy", positions != "all")
    writer.add_float32("steerjax.factor", factor)
    writer.add_tensor(f"direction.{layer}", np.ascontiguousarray(factor * direction, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

  return _atomic(path, write)


def read_gguf(path: str, first_layer: int = 1):
  """({layer: vector}, {key: value}) of a control-vector GGUF file."""
  import gguf
  if not os.path.exists(path):
    raise FileNotFoundError(f"no control vector file at {path}")
  reader = gguf.GGUFReader(path)
  fields = {name: field.contents() for name, field in reader.fields.items()
            if not name.startswith("GGUF.")}
  if fields.get("general.architecture") != CONTROL_VECTOR_ARCH:
    raise ValueError(f"{path}: general.architecture={fields.get('general.architecture')!r}, "
                     f"not {CONTROL_VECTOR_ARCH!r}; not a control vector")
  directions = {}
  for tensor in reader.tensors:
    prefix, _, index = tensor.name.partition(".")
    if prefix != "direction" or not index.isdigit() or int(index) < first_layer:
      raise ValueError(f"{path}: tensor {tensor.name!r} is not direction.N with N >= "
                       f"{first_layer}")
    directions[int(index)] = np.array(tensor.data, np.float32).reshape(-1)
  return directions, fields


def from_control_vector(path: str, *, layer=None, model_cfg=None, first_layer: int = 1):
  """(sv, meta) of a control vector's `direction.<layer>` (the only one, or `layer`).
  A file steerjax wrote gets its factor and header back; any other has factor 1."""
  directions, fields = read_gguf(path, first_layer)
  if layer is None and len(directions) != 1:
    raise ValueError(f"{path} holds layers {sorted(directions)}; pick one with --layer")
  layer = int(layer if layer is not None else next(iter(directions)))
  if layer not in directions:
    raise ValueError(f"{path} has no direction.{layer}; it holds layers {sorted(directions)}")
  header = json.loads(fields.get("steerjax.header", "{}"))
  factor = float(fields.get("steerjax.factor") or 1.0)
  meta = dict(header, layer=layer, op="add", positions="all",
              source={"format": "llama.cpp control vector", "path": path,
                      "model_hint": fields.get("controlvector.model_hint", "")})
  if header.get("positions", "all") != "all":   # llama.cpp steered every token
    meta["trained_positions"] = header["positions"]
  return imported(directions[layer] / factor, factor, meta, model_cfg, path)


# ---------------------------------------------------------------------------- EasySteer

def _triggers(positions: str) -> dict:
  """EasySteer trigger fields that edit the same tokens as steerjax `positions`."""
  kind, first, last = parse_positions(positions)
  every = [-1]   # EasySteer's "all tokens of this phase"
  return {
      "all": {"prefill_trigger_tokens": every, "generate_trigger_tokens": every},
      "all-bos": {"prefill_trigger_tokens": every, "prefill_exclude_positions": [0],
                  "generate_trigger_tokens": every},
      "prompt": {"prefill_trigger_tokens": every},
      "generation": {"generate_trigger_tokens": every},
      "fl": {"prefill_trigger_positions": list(range(first)) + list(range(-last, 0))},
  }[kind]


def _positions_of(request: dict, where: str) -> str:
  keys = ("prefill_trigger_tokens", "prefill_trigger_positions", "prefill_exclude_positions",
          "prefill_exclude_tokens", "generate_trigger_tokens")
  got = {k: request[k] for k in keys if request.get(k) is not None}
  for positions in ("all", "all-bos", "prompt", "generation"):
    if got == _triggers(positions):
      return positions
  listed = got.get("prefill_trigger_positions")
  if listed and set(got) == {"prefill_trigger_positions"}:
    first = sum(1 for p in listed if p >= 0)
    last = sum(1 for p in listed if p < 0)
    name = "+".join(s for s in (f"f{first}" if first else "", f"l{last}" if last else "") if s)
    if sorted(listed) == sorted(_triggers(name)["prefill_trigger_positions"]):
      return name
  raise ValueError(f"{where}: triggers {got} select tokens no steerjax positions name covers")


def to_easysteer(sv: dict, meta: dict, prefix: str, *, model_cfg=None, name: str = ""):
  """Write `<prefix>.gguf` (the control vector, factor baked in) and `<prefix>.json`, the
  fields of EasySteer's `SteerVectorRequest` that apply it at the SV's own positions
  (a PrOSV steers its prompt tokens only). Returns the two paths."""
  gguf_path, json_path = prefix + ".gguf", prefix + ".json"
  to_control_vector(sv, meta, gguf_path, lossy=True, model_cfg=model_cfg, first_layer=0)
  request = {"steer_vector_name": name or os.path.basename(prefix), "steer_vector_int_id": 1,
             "steer_vector_local_path": os.path.basename(gguf_path), "scale": 1.0,
             "target_layers": [int(meta["layer"])], "algorithm": "direct", "normalize": False,
             **_triggers(meta.get("positions", "all"))}
  _atomic(json_path, lambda tmp: _write_text(tmp, json.dumps(request, indent=1) + "\n"))
  return gguf_path, json_path


def from_easysteer(json_path: str, *, model_cfg=None):
  """(sv, meta) of an EasySteer request file and the GGUF it names (beside it)."""
  with open(json_path) as f:
    request = json.load(f)
  if request.get("algorithm", "direct") != "direct" or request.get("normalize"):
    raise ValueError(f"{json_path}: only algorithm='direct' without normalize is an additive SV")
  layers = request.get("target_layers") or []
  if len(layers) != 1:
    raise ValueError(f"{json_path}: target_layers={layers}; an SV edits exactly one layer")
  gguf_path = os.path.join(os.path.dirname(json_path), request["steer_vector_local_path"])
  sv, meta = from_control_vector(gguf_path, layer=layers[0], model_cfg=model_cfg,
                                 first_layer=0)
  meta.pop("trained_positions", None)
  meta.update(positions=_positions_of(request, json_path),
              source={"format": "EasySteer request", "path": json_path})
  scale = float(request.get("scale", 1.0))
  sv["factor"] = np.float32(sv["factor"] * scale)
  return sv, dict(meta, factor=meta["factor"] * scale)


# ---------------------------------------------------------------------------- lm-eval

def to_lm_eval(sv: dict, meta: dict, path: str, *, lossy: bool = False, model_cfg=None) -> str:
  """Write lm-eval's `steered` model file: {"layers.<layer>": {steering_vector,
  steering_coefficient, action, bias, head_index}}. lm-eval edits every token, so an SV
  over other positions is refused unless `lossy`. add -> action "add" (h + c v); clamp ->
  action "clamp" with c = factor * |v| (h + u (c - u.h) is h + a v - u u.h)."""
  import torch
  factor, direction = single(sv, meta, path)
  check_target(sv, meta, model_cfg, path)
  op, positions = meta.get("op", "add"), meta.get("positions", "all")
  if op not in ("add", "clamp"):
    raise ValueError(f"{path}: op={op!r} has no lm-eval action (add and clamp do)")
  if positions != "all" and not lossy:
    raise ValueError(f"{path}: positions={positions!r}, but lm-eval's steered model edits "
                     "every token; export FSSVs (positions='all') or pass --lossy")
  coefficient = factor if op == "add" else factor * float(np.linalg.norm(direction))
  entry = {"steering_vector": torch.from_numpy(direction.copy()),
           "steering_coefficient": coefficient, "action": op, "bias": None, "head_index": None}
  return _atomic(path, lambda tmp: torch.save({f"layers.{int(meta['layer'])}": entry}, tmp))


def from_lm_eval(path: str, *, layer=None, model_cfg=None):
  """(sv, meta) of one hook point of an lm-eval steer file (the only one, or `layer`)."""
  import torch
  if not os.path.exists(path):
    raise FileNotFoundError(f"no lm-eval steer file at {path}")
  config = torch.load(path, weights_only=True)   # tensors and plain values only, no code
  found = {}
  for hookpoint, entry in config.items():
    match = re.fullmatch(r"(?:.*\.)?layers\.(\d+)", hookpoint)
    if not match:
      raise ValueError(f"{path}: hook point {hookpoint!r} is not a decoder block output "
                       "('layers.N'); steerjax SVs edit block outputs only")
    found[int(match.group(1))] = entry
  if layer is None and len(found) != 1:
    raise ValueError(f"{path} steers layers {sorted(found)}; pick one with --layer")
  layer = int(layer if layer is not None else next(iter(found)))
  if layer not in found:
    raise ValueError(f"{path} does not steer layer {layer}; it steers {sorted(found)}")
  entry = found[layer]
  action = entry.get("action", "add")
  if entry.get("head_index") is not None or entry.get("bias") is not None:
    raise ValueError(f"{path}: layers.{layer} uses head_index or bias, which no steerjax op has")
  if action not in ("add", "clamp"):
    raise ValueError(f"{path}: action={action!r}; steerjax imports add and clamp")
  direction = entry["steering_vector"].detach().float().numpy().reshape(-1)
  coefficient = float(entry.get("steering_coefficient", 1.0))
  factor = coefficient if action == "add" else coefficient / float(np.linalg.norm(direction))
  meta = {"layer": layer, "op": action, "positions": "all",
          "source": {"format": "lm-eval steered", "path": path, "hookpoint": f"layers.{layer}"}}
  return imported(direction, factor, meta, model_cfg, path)
