"""Read llama.cpp's GGUF files: metadata onto a transformers config, tensors onto HF names.

`read_gguf(path) -> (hf_config, tensors)` gives what an HF directory would hold (config
object and HF-named fp32 numpy tensors, dequantized with the `gguf` package);
`load_gguf(path, dtype)` passes them through the same `config_from_hf` / `params_from_hf`
as an HF checkpoint, so one code path decides what steerjax supports.

What llama.cpp fixes in code rather than in the file is filled in as llama.cpp does:
Gemma-3's window on five of every six layers with RoPE base 10k there, Gemma's query
scale, and Mistral (written as `llama`) becoming `mistral` when the file carries a window.
"""

from __future__ import annotations

import mmap
import re
import struct

import numpy as np

from steerjax.models.loading import LoadError, _unpermute_rope, config_from_hf, params_from_hf

# Tensor types read (dequantized to fp32); any other is refused by name.
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                   "Q4_K", "Q5_K", "Q6_K")

# GGUF `general.architecture` -> transformers model_type.
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "gemma2": "gemma2",
                 "gemma3": "gemma3_text", "qwen3": "qwen3"}

# `{arch}.<key>` -> transformers config attribute, for every architecture above.
_KEYS = {
    "context_length": "max_position_embeddings",
    "block_count": "num_hidden_layers",
    "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.key_length": "head_dim",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "rope.freq_base": "rope_theta",
    "vocab_size": "vocab_size",
}
_ARCH_KEYS = {
    # llama.cpp converts Mistral as `llama` and runs it without a window; a file that
    # states one is read as Mistral with that window on every layer.
    "llama": {"attention.sliding_window": "sliding_window"},
    "gemma2": {"attention.sliding_window": "sliding_window",
               "attn_logit_softcapping": "attn_logit_softcapping",
               "final_logit_softcapping": "final_logit_softcapping"},
    "gemma3": {"attention.sliding_window": "sliding_window",
               "final_logit_softcapping": "final_logit_softcapping"},
}
# Keys that only restate the default: accepted at these values, refused at any other.
_NEUTRAL = {"rope.scaling.type": ("none",), "rope.scaling.factor": (1.0,),
            "expert_count": (0,), "expert_used_count": (0,)}
# RoPE scaling read per architecture: Gemma-3 4B and up scale their global layers linearly.
_ROPE_SCALING = {"gemma3": ("none", "linear")}
# llama.cpp's Gemma-3: every sixth layer is global, the others slide at RoPE base 10k.
_GEMMA3_PATTERN, _GEMMA3_LOCAL_BASE = 6, 10000.0
# Keys checked against the head dimension rather than copied.
_HEAD_DIM_KEYS = ("rope.dimension_count", "attention.value_length")

# GGUF tensor names (without `.weight` / `.bias`) -> HF names.
_GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
                   "output": "lm_head"}
_BLOCK_TENSORS = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "ffn_norm": "post_attention_layernorm",
}
# Gemma's four norms per block: llama.cpp's ffn_norm is the norm before the MLP there.
_SANDWICH_TENSORS = {"post_attention_norm": "post_attention_layernorm",
                     "ffn_norm": "pre_feedforward_layernorm",
                     "post_ffw_norm": "post_feedforward_layernorm"}
_GEMMA = ("gemma2", "gemma3")
# llama.cpp scales Gemma queries by 1/sqrt(head_dim), except the 27B models (told apart by
# their block count) which use 1/sqrt(width / heads); the file does not store it.
_GEMMA_27B_BLOCKS = {"gemma2": 46, "gemma3": 62}
# Tokenizer ids that go into the config as HF's do.
_TOKEN_IDS = {"bos_token_id": "bos_token_id", "padding_token_id": "pad_token_id"}
_BIG_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
               "tokenizer.ggml.merges")
# GGUF value types: struct formats of the scalars, then string and array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q",
            11: "q", 12: "d"}
_STRING, _ARRAY, _FLOAT32 = 8, 9, 6


def open_gguf(path: str):
  """A `gguf.GGUFReader` over `path`, with a clear error for a file that is not GGUF."""
  try:
    import gguf
  except ImportError:
    raise LoadError(f"{path}: reading GGUF files needs the gguf package; "
                    "pip install 'steerjax[gguf]'") from None
  try:
    return gguf.GGUFReader(path)
  except (ValueError, OSError) as err:
    raise LoadError(f"{path} is not a readable GGUF file ({err})") from None


class GGUFFile:
  """A GGUF file's metadata and tensor directory, read without the tokenizer's vocabulary
  (gguf.GGUFReader builds a memmap view per vocabulary entry: seconds for 256k tokens).

  `metadata`: every key except the vocabulary arrays, as Python values (float32 ones as the
  shortest decimal that rounds to them: 1e-05, not 9.999999747378752e-06);
  `tensors`: `{name: (shape in HF order, type name, byte offset, byte count)}`.
  """

  def __init__(self, path: str):
    self.path = path
    try:
      with open(path, "rb") as f:
        self._buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
      self._pos = 0
      if self._buf[:4] != b"GGUF":
        raise ValueError("no GGUF magic number")
      self._pos = 4
      version, n_tensors, n_kv = self._unpack("I"), self._unpack("Q"), self._unpack("Q")
      if version not in (2, 3):
        raise ValueError(f"GGUF version {version}")
      self.metadata = {}
      for _ in range(n_kv):
        key = self._string()
        self.metadata[key] = self._value(self._unpack("I"), keep=key not in _BIG_ARRAYS)
      directory = []
      for _ in range(n_tensors):
        name = self._string()
        dims = [self._unpack("Q") for _ in range(self._unpack("I"))]
        directory.append((name, dims, self._unpack("I"), self._unpack("Q")))
    except (ValueError, OSError, struct.error, UnicodeDecodeError) as err:
      raise LoadError(f"{path} is not a readable GGUF file ({err})") from None
    align = int(self.metadata.get("general.alignment", 32))
    start = -(-self._pos // align) * align
    self.tensors = {}
    for name, dims, kind, offset in directory:
      self.tensors[name] = (tuple(reversed(dims)), _type_name(kind), start + offset,
                            _nbytes(dims, kind))
      if start + offset + self.tensors[name][3] > len(self._buf):
        raise LoadError(f"{path}: tensor {name} runs past the end of the file; the file is "
                        "truncated (download it again)")

  def _unpack(self, fmt: str):
    value = struct.unpack_from("<" + fmt, self._buf, self._pos)[0]
    self._pos += struct.calcsize(fmt)
    return value

  def _string(self, keep: bool = True):
    n = self._unpack("Q")
    raw = self._buf[self._pos:self._pos + n] if keep else None
    self._pos += n
    return raw.decode("utf-8") if keep else None

  def _value(self, kind: int, keep: bool = True):
    if kind == _STRING:
      return self._string(keep)
    if kind == _ARRAY:
      item, n = self._unpack("I"), self._unpack("Q")
      if item in (_STRING, _ARRAY):
        values = [self._value(item, keep) for _ in range(n)]
        return values if keep else None
      if item not in _SCALARS:
        raise ValueError(f"unknown GGUF array item type {item}")
      fmt = _SCALARS[item]
      values = np.frombuffer(self._buf, np.dtype("<" + fmt), n, self._pos) if keep else None
      self._pos += n * struct.calcsize(fmt)
      return values.tolist() if keep else None
    if kind not in _SCALARS:
      raise ValueError(f"unknown GGUF value type {kind}")
    value = self._unpack(_SCALARS[kind])
    if kind == _FLOAT32:  # the shortest decimal that rounds to it, as the source config had
      value = float(np.format_float_positional(np.float32(value), unique=True))
    return value

  def raw(self, name: str) -> np.ndarray:
    """Tensor `name`'s bytes, one row per GGUF row (what gguf.quants.dequantize takes)."""
    shape, _, offset, count = self.tensors[name]
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    return np.frombuffer(self._buf, np.uint8, count, offset).reshape(rows, count // rows)


def _type_name(kind: int) -> str:
  from gguf import GGMLQuantizationType
  try:
    return GGMLQuantizationType(kind).name
  except ValueError:
    return f"type {kind}"


def _nbytes(dims, kind: int) -> int:
  from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
  try:
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
  except (ValueError, KeyError):
    return 0
  return int(np.prod(dims)) // block * size


def read_file(path: str) -> GGUFFile:
  """The file's metadata and tensor directory; needs the gguf package for the type tables."""
  try:
    import gguf  # noqa: F401
  except ImportError:
    raise LoadError(f"{path}: reading GGUF files needs the gguf package; "
                    "pip install 'steerjax[gguf]'") from None
  return GGUFFile(path)


def hf_config(meta: dict, tensor_names, path: str = "model.gguf"):
  """A transformers config for the file's metadata; unknown keys are refused by name."""
  from transformers import AutoConfig
  arch = meta.get("general.architecture")
  if arch not in ARCHITECTURES:
    raise LoadError(f"{path}: GGUF architecture {arch!r} is not supported; steerjax reads "
                    f"{sorted(ARCHITECTURES)}")
  if int(meta.get("split.count", 1)) > 1:
    raise LoadError(f"{path} is one of {meta['split.count']} GGUF shards; merge them first "
                    "(llama-gguf-split --merge)")
  keys = dict(_KEYS, **_ARCH_KEYS.get(arch, {}))
  fields, checks, scaling = {}, {}, {}
  for key, value in meta.items():
    if not key.startswith(arch + "."):
      continue
    name = key[len(arch) + 1:]
    if name in keys:
      fields[keys[name]] = value
    elif name in _HEAD_DIM_KEYS:
      checks[name] = value
    elif name in ("rope.scaling.type", "rope.scaling.factor") and arch in _ROPE_SCALING:
      scaling[name.rsplit(".", 1)[1]] = value
    elif name not in _NEUTRAL or value not in _NEUTRAL[name]:
      raise LoadError(f"{path}: unsupported GGUF metadata {key}={value!r} for a {arch} model")
  for name in ("hidden_size", "num_hidden_layers", "num_attention_heads"):
    if name not in fields:
      raise LoadError(f"{path}: GGUF metadata lacks the {arch} field that gives {name}")
  fields.setdefault("num_key_value_heads", fields["num_attention_heads"])
  fields.setdefault("head_dim", fields["hidden_size"] // fields["num_attention_heads"])
  for name, value in checks.items():
    if value != fields["head_dim"]:
      raise LoadError(f"{path}: unsupported GGUF metadata {arch}.{name}={value} "
                      f"(steerjax needs it equal to the head dimension {fields['head_dim']})")
  if "vocab_size" not in fields and "token_embd" in tensor_names:
    fields["vocab_size"] = tensor_names["token_embd"][0]
  if arch in _GEMMA:
    wide = fields["num_hidden_layers"] == _GEMMA_27B_BLOCKS[arch]
    fields["query_pre_attn_scalar"] = (fields["hidden_size"] // fields["num_attention_heads"]
                                       if wide else fields["head_dim"])
  if arch == "gemma3":
    fields.update(_gemma3_layers(fields, scaling, path))
  model_type = ARCHITECTURES[arch]
  if arch == "llama" and "sliding_window" in fields:
    if fields["sliding_window"]:
      model_type = "mistral"
    else:
      del fields["sliding_window"]
  for ours, theirs in _TOKEN_IDS.items():
    if f"tokenizer.ggml.{ours}" in meta:
      fields[theirs] = int(meta[f"tokenizer.ggml.{ours}"])
  # End of turn (Gemma's <end_of_turn>) stops generation as EOS does, as in llama.cpp.
  stops = [int(meta[k]) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")
           if k in meta]
  if stops:
    fields["eos_token_id"] = stops[0] if len(set(stops)) == 1 else sorted(set(stops))
  fields["tie_word_embeddings"] = "output" not in tensor_names
  return AutoConfig.for_model(model_type, **fields)


def _gemma3_layers(fields: dict, scaling: dict, path: str) -> dict:
  """Gemma-3's layer types and RoPE per layer type, as llama.cpp fixes them: a window on
  all but every sixth layer (none when the file gives no window), RoPE base 10k without
  scaling there; the file's base and linear scaling on the global layers."""
  kind = scaling.get("type", "linear")  # llama.cpp's default; a factor of 1 is no scaling
  if kind not in _ROPE_SCALING["gemma3"]:
    raise LoadError(f"{path}: unsupported GGUF metadata gemma3.rope.scaling.type={kind!r}; "
                    f"steerjax supports {_ROPE_SCALING['gemma3']}")
  factor = float(scaling.get("factor") or 1.0) if kind == "linear" else 1.0
  full = dict(rope_type="default", rope_theta=float(fields.pop("rope_theta", 10000.0)))
  if factor != 1.0:
    full.update(rope_type="linear", factor=factor)
  window = fields.get("sliding_window") or 0
  types = ["sliding_attention" if window and (i + 1) % _GEMMA3_PATTERN else "full_attention"
           for i in range(fields["num_hidden_layers"])]
  return dict(layer_types=types, rope_parameters={
      "full_attention": full,
      "sliding_attention": dict(rope_type="default", rope_theta=_GEMMA3_LOCAL_BASE)})


def hf_name(gguf_name: str, arch: str, path: str = "model.gguf") -> str:
  """The HF tensor name of a GGUF tensor name (`blk.3.attn_q.weight` ->
  `model.layers.3.self_attn.q_proj.weight`)."""
  stem, dot, suffix = gguf_name.rpartition(".")
  if suffix not in ("weight", "bias"):
    stem, suffix = gguf_name, ""
  found = re.fullmatch(r"blk\.(\d+)\.(\w+)", stem)
  if found:
    part = found.group(2)
    table = dict(_BLOCK_TENSORS, **_SANDWICH_TENSORS) if arch in _GEMMA else _BLOCK_TENSORS
    if part in table:
      return f"model.layers.{found.group(1)}.{table[part]}" + (dot + suffix if suffix else "")
  elif stem in _GLOBAL_TENSORS:
    return _GLOBAL_TENSORS[stem] + (dot + suffix if suffix else "")
  raise LoadError(f"{path}: GGUF tensor {gguf_name!r} has no counterpart in steerjax's "
                  f"{arch} model")


def check_types(file: GGUFFile) -> None:
  """Refuse, by name, a tensor type steerjax does not dequantize."""
  for name, (_, kind, _, _) in file.tensors.items():
    if kind not in SUPPORTED_TYPES:
      raise LoadError(f"{file.path}: tensor {name} is stored as {kind}, which steerjax does "
                      f"not read; supported: {', '.join(SUPPORTED_TYPES)}")


def read_gguf(path: str):
  """`(hf_config, tensors)`: the transformers config and HF-named fp32 numpy tensors."""
  file, config = _open(path)
  return config, hf_tensors(file, config)


def _open(path: str):
  file = read_file(path)
  shapes = {name.rpartition(".")[0]: shape for name, (shape, *_) in file.tensors.items()}
  return file, hf_config(file.metadata, shapes, path)


def hf_tensors(file: GGUFFile, config) -> dict:
  """The file's tensors, dequantized to fp32 and laid out as HF's."""
  from gguf import GGMLQuantizationType
  from gguf.quants import dequantize
  check_types(file)
  arch = file.metadata["general.architecture"]
  tensors = {}
  for gguf_name, (shape, kind, _, _) in file.tensors.items():
    name = hf_name(gguf_name, arch, file.path)
    w = np.asarray(dequantize(file.raw(gguf_name), GGMLQuantizationType[kind]), np.float32)
    w = w.reshape(shape)
    if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
      # llama.cpp interleaves each head's RoPE pairs in Q and K rows; HF rotates halves.
      heads = config.num_attention_heads if "q_proj" in name else config.num_key_value_heads
      w = _unpermute_rope(w, heads)
    if arch in _GEMMA and name.endswith("norm.weight"):
      w = w - 1.0  # llama.cpp stores Gemma's (1 + w) norm weights with the 1 added
    tensors[name] = w
  return tensors


def load_gguf(path: str, dtype):
  """`(Decoder, params)` for a GGUF file; the architecture is checked before any tensor
  is read."""
  from steerjax.models.decoder import Decoder
  file, hf = _open(path)
  cfg = config_from_hf(hf)
  return Decoder(cfg, dtype=dtype), params_from_hf(cfg, hf_tensors(file, hf), dtype)
