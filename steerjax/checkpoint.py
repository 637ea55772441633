"""Run checkpoints (Orbax) and exported SV files (safetensors + JSON header)."""

from __future__ import annotations

import json
import os
import re

import jax
import numpy as np
import orbax.checkpoint as ocp

import steerjax

SV_KEYS = ("factor", "direction")


class RunCheckpoints:
  """Orbax manager for everything a run needs to resume: SVs, optimizer state, step, RNG."""

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    self._mgr = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep))

  def latest_step(self):
    return self._mgr.latest_step()

  def save(self, step: int, state, meta: dict):
    self._mgr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    self._mgr.wait_until_finished()

  def restore(self, like_state):
    """(state, meta) of the latest checkpoint; `like_state` gives the tree structure."""
    step = self._mgr.latest_step()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
    out = self._mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return out.state, out.meta


def save_sv(path: str, sv: dict, meta: dict):
  """Write one SV (`factor` scalar, `direction` [D]) as safetensors with `meta` in the header."""
  from safetensors.numpy import save_file
  missing = [k for k in SV_KEYS if k not in sv]
  if missing:
    raise ValueError(f"save_sv: SV is missing {missing}; expected keys {SV_KEYS}")
  header = dict(meta, steerjax_version=steerjax.__version__)
  tensors = {k: np.ascontiguousarray(np.asarray(sv[k], np.float32)) for k in SV_KEYS}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  save_file(tensors, tmp, metadata={"steerjax": json.dumps(header, sort_keys=True)})
  os.replace(tmp, path)  # a killed run never leaves a half-written SV behind


_HUB_SV = re.compile(r"^(?:hf://)?(datasets/)?([\w.-]+/[\w.-]+)/(.+)$")


def resolve_sv(path: str) -> str:
  """Local path of an SV: `path` itself when it exists, else a file on the Hugging Face hub
  named `org/repo/name` (`.safetensors` added when missing; `datasets/org/repo/name` for a
  dataset repo, an `hf://` prefix allowed), downloaded into the hub cache."""
  if os.path.exists(path):
    return path
  match = _HUB_SV.match(path) if not path.startswith((".", "/")) else None
  if not match or (not path.startswith("hf://") and os.path.isdir(os.path.dirname(path))):
    # its folder exists here: a mistyped local file, not a hub name
    raise FileNotFoundError(f"no SV file at {path} (a hub SV is named org/repo/name)")
  dataset, repo_id, name = match.groups()
  filename = name if name.endswith(".safetensors") else name + ".safetensors"
  from huggingface_hub import hf_hub_download
  try:
    # HF_ENDPOINT and HF_HUB_CACHE are read now, not when huggingface_hub was imported.
    return hf_hub_download(repo_id, filename, repo_type="dataset" if dataset else "model",
                           endpoint=os.environ.get("HF_ENDPOINT") or None,
                           cache_dir=os.environ.get("HF_HUB_CACHE") or None)
  except Exception as err:  # offline, missing repo or file, gated: one line, no traceback
    raise FileNotFoundError(
        f"SV {path!r}: no such local file, and downloading {filename} from the hub "
        f"{'dataset' if dataset else 'model'} repo {repo_id} failed ({type(err).__name__}); "
        "check the name and the connection, or pass a local path") from None


def load_sv(path: str, model_cfg=None):
  """(sv, meta) from a local SV file or a hub `org/repo/name` (see `resolve_sv`). With
  `model_cfg`, refuse an SV trained for another model or width."""
  from safetensors import safe_open
  path = resolve_sv(path)
  with safe_open(path, "numpy") as f:
    header = f.metadata() or {}
    sv = {k: f.get_tensor(k) for k in f.keys()}
  if "steerjax" not in header or set(sv) != set(SV_KEYS):
    raise ValueError(f"{path} is not a steerjax SV file (needs tensors {SV_KEYS} and a "
                     "'steerjax' JSON header)")
  meta = json.loads(header["steerjax"])
  # A scalar factor may come back as shape (1,); give it the direction's leading shape.
  sv["factor"] = np.reshape(sv["factor"], np.shape(sv["direction"])[:-1])
  if model_cfg is not None:
    check_compatible(meta, sv, model_cfg, path)
  return sv, meta


def check_compatible(meta: dict, sv: dict, model_cfg, path: str = "SV"):
  width = int(np.asarray(sv["direction"]).shape[-1])
  if width != model_cfg.dim:
    raise ValueError(f"{path}: SV width {width} does not match the model width {model_cfg.dim} "
                     f"(SV trained for {meta.get('model', '?')})")
  layer = meta.get("layer")
  if layer is not None and layer >= model_cfg.n_layers:
    raise ValueError(f"{path}: SV layer {layer} is beyond this model's {model_cfg.n_layers} blocks")
  want = model_cfg.fingerprint()
  if meta.get("model_fingerprint") not in (None, want):
    raise ValueError(f"{path}: SV was trained for model {meta.get('model', '?')} with config "
                     f"fingerprint {meta['model_fingerprint']}, this model's is {want}")
