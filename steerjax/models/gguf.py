"""Read llama.cpp's GGUF files: metadata onto a transformers config, tensors onto HF names.

`read_gguf(path) -> (hf_config, tensors)` gives what an HF directory would hold (config
object and HF-named fp32 numpy tensors, dequantized with the `gguf` package);
`load_gguf(path, dtype)` passes them through the same `config_from_hf` / `params_from_hf`
as an HF checkpoint, so one code path decides what steerjax supports.
"""

from __future__ import annotations

import re

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
    "gemma2": {"attention.sliding_window": "sliding_window",
               "attn_logit_softcapping": "attn_logit_softcapping",
               "final_logit_softcapping": "final_logit_softcapping"},
    "gemma3": {"attention.sliding_window": "sliding_window"},
}
# Keys that only restate the default: accepted at these values, refused at any other.
_NEUTRAL = {"rope.scaling.type": ("none",), "rope.scaling.factor": (1.0,),
            "expert_count": (0,), "expert_used_count": (0,)}
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


def metadata(reader) -> dict:
  """Every metadata value except the tokenizer's vocabulary arrays, as Python values.
  float32 values come back as the shortest decimal that rounds to them (1e-05, not
  9.999999747378752e-06), as the converter's source config spelled them."""
  from gguf import GGUFValueType
  out = {}
  for key, field in reader.fields.items():
    if key in _BIG_ARRAYS:
      continue
    value = field.contents()
    if field.types == [GGUFValueType.FLOAT32]:
      value = float(np.format_float_positional(np.float32(value), unique=True))
    out[key] = value
  return out


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
  fields, checks = {}, {}
  for key, value in meta.items():
    if not key.startswith(arch + "."):
      continue
    name = key[len(arch) + 1:]
    if name in keys:
      fields[keys[name]] = value
    elif name in _HEAD_DIM_KEYS:
      checks[name] = value
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
  for ours, theirs in _TOKEN_IDS.items():
    if f"tokenizer.ggml.{ours}" in meta:
      fields[theirs] = int(meta[f"tokenizer.ggml.{ours}"])
  # End of turn (Gemma's <end_of_turn>) stops generation as EOS does, as in llama.cpp.
  stops = [int(meta[k]) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")
           if k in meta]
  if stops:
    fields["eos_token_id"] = stops[0] if len(set(stops)) == 1 else sorted(set(stops))
  fields["tie_word_embeddings"] = "output" not in tensor_names
  return AutoConfig.for_model(ARCHITECTURES[arch], **fields)


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


def check_types(reader, path: str = "model.gguf") -> None:
  """Refuse, by name, a tensor type steerjax does not dequantize."""
  for t in reader.tensors:
    if t.tensor_type.name not in SUPPORTED_TYPES:
      raise LoadError(f"{path}: tensor {t.name} is stored as {t.tensor_type.name}, which "
                      f"steerjax does not read; supported: {', '.join(SUPPORTED_TYPES)}")


def read_gguf(path: str):
  """`(hf_config, tensors)`: the transformers config and HF-named fp32 numpy tensors."""
  reader, config = _open(path)
  return config, hf_tensors(reader, config, path)


def _open(path: str):
  reader = open_gguf(path)
  shapes = {t.name.rpartition(".")[0]: tuple(int(n) for n in reversed(t.shape))
            for t in reader.tensors}
  return reader, hf_config(metadata(reader), shapes, path)


def hf_tensors(reader, config, path: str = "model.gguf") -> dict:
  """The file's tensors, dequantized to fp32 and laid out as HF's."""
  from gguf.quants import dequantize
  check_types(reader, path)
  arch = next(a for a, t in ARCHITECTURES.items() if t == config.model_type)
  tensors = {}
  for t in reader.tensors:
    name = hf_name(t.name, arch, path)
    w = np.asarray(dequantize(t.data, t.tensor_type), np.float32)
    w = w.reshape(tuple(int(n) for n in reversed(t.shape)))
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
  reader, hf = _open(path)
  cfg = config_from_hf(hf)
  return Decoder(cfg, dtype=dtype), params_from_hf(cfg, hf_tensors(reader, hf, path), dtype)
