"""Tiny random Hugging Face checkpoints (Llama, Llama-3, Qwen2, Gemma-2, Gemma-3, Qwen3,
Mistral) for parity tests.

Each spec builds a transformers config small enough to run in milliseconds, yet with every
family switch exercised: MHA / GQA / MQA, tied and untied embeddings, llama3 RoPE scaling
with a short original context, Qwen2 qkv biases, Gemma-2 sliding window and softcaps,
Gemma-3 q/k norms and RoPE per layer type (also inside a multimodal checkpoint), Qwen3 q/k
norms with an explicit head_dim, Mistral's window on every layer (Ministral's per layer).
Weights are redrawn at a scale that gives O(1) attention and output logits, and norm
weights are drawn away from their init so a `w` vs `(1 + w)` mix-up changes the output.
"""

from __future__ import annotations

import math

import torch
import transformers

VOCAB = 160
DIM = 64
HEADS = 4
HEAD_DIM = 16
HIDDEN = 96
LAYERS = 2


def _common(kv_heads: int, tied: bool) -> dict:
  return dict(vocab_size=VOCAB, hidden_size=DIM, num_hidden_layers=LAYERS,
              num_attention_heads=HEADS, num_key_value_heads=kv_heads, head_dim=HEAD_DIM,
              intermediate_size=HIDDEN, rms_norm_eps=1e-5, tie_word_embeddings=tied,
              max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def llama_mha():
  """Llama, multi-head attention (K == H), untied head, default RoPE."""
  return transformers.LlamaConfig(**_common(HEADS, False))


def llama3_gqa():
  """Llama-3, grouped-query attention (K == H/2), tied head, llama3 RoPE scaling.

  With theta=10000, head_dim=16 and an original context of 64, the RoPE wavelengths
  (6.3, 20, 63, 199, ...) fall in all three llama3 bands: kept, smoothed, divided by factor.
  """
  rope = dict(rope_type="llama3", rope_theta=10000.0, factor=4.0, low_freq_factor=1.0,
              high_freq_factor=4.0, original_max_position_embeddings=64)
  return transformers.LlamaConfig(**_common(HEADS // 2, True), rope_parameters=rope)


def qwen2_mqa():
  """Qwen2, multi-query attention (K == 1), qkv biases, untied head."""
  return transformers.Qwen2Config(**_common(1, False))


def gemma2_gqa():
  """Gemma-2 with a 5-token sliding window on layer 0, tight softcaps, query scalar != head_dim."""
  cfg = transformers.Gemma2Config(
      **_common(HEADS // 2, True), sliding_window=5, attn_logit_softcapping=3.0,
      final_logit_softcapping=10.0, query_pre_attn_scalar=24)
  cfg._attn_implementation = "eager"
  return cfg


def _gemma3_text():
  """Layer 0 slides (window 5) with plain RoPE at base 10000; layer 1 is global with linear
  scaling at a small base, so a swapped base or a lost scaling moves the logits."""
  rope = {"sliding_attention": dict(rope_type="default", rope_theta=10000.0),
          "full_attention": dict(rope_type="linear", factor=2.0, rope_theta=100.0)}
  cfg = transformers.Gemma3TextConfig(
      **_common(HEADS // 2, True), sliding_window=5, query_pre_attn_scalar=24,
      layer_types=["sliding_attention", "full_attention"], rope_parameters=rope,
      hidden_activation="gelu_pytorch_tanh")
  cfg._attn_implementation = "eager"
  return cfg


def gemma3_gqa():
  """Gemma-3 text decoder (`gemma3_text`): q/k norms, RoPE per layer type, no softcaps."""
  return _gemma3_text()


def gemma3_multimodal():
  """The multimodal `gemma3` wrapper (tiny SigLIP tower) around the same text decoder: its
  language model's weights sit under a prefix and its settings in `text_config`."""
  vision = transformers.SiglipVisionConfig(hidden_size=16, intermediate_size=32,
                                           num_hidden_layers=1, num_attention_heads=2,
                                           image_size=28, patch_size=14)
  cfg = transformers.Gemma3Config(text_config=_gemma3_text(), vision_config=vision,
                                  mm_tokens_per_image=4, boi_token_index=VOCAB - 3,
                                  eoi_token_index=VOCAB - 2, image_token_index=VOCAB + 1)
  cfg._attn_implementation = "eager"
  return cfg


def qwen3_gqa():
  """Qwen3: q/k norms, head_dim 24 (heads x head_dim != hidden), untied head, and
  transformers' optional window (5) on layer 1."""
  kw = dict(_common(HEADS // 2, False), head_dim=24)
  return transformers.Qwen3Config(**kw, use_sliding_window=True, sliding_window=5,
                                  max_window_layers=1)


def mistral_gqa():
  """Mistral: Llama with a 5-token window on every layer."""
  return transformers.MistralConfig(**_common(HEADS // 2, False), sliding_window=5)


def ministral_gqa():
  """Ministral: Mistral with the window (5) only where layer_types says so (layer 0)."""
  return transformers.MinistralConfig(**_common(HEADS // 2, False), sliding_window=5,
                                      layer_types=["sliding_attention", "full_attention"])


SPECS = {"llama_mha": llama_mha, "llama3_gqa": llama3_gqa, "qwen2_mqa": qwen2_mqa,
         "gemma2_gqa": gemma2_gqa}
# The families added after the paper's, tested in test_families.py.
NEW_SPECS = {"gemma3_gqa": gemma3_gqa, "gemma3_multimodal": gemma3_multimodal,
             "qwen3_gqa": qwen3_gqa, "mistral_gqa": mistral_gqa, "ministral_gqa": ministral_gqa}


def randomize_(model: torch.nn.Module, seed: int) -> None:
  """Redraw every parameter: unit-gain matrices, N(0, 0.3) biases, U(0.5, 1.5) norm weights."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in sorted(model.named_parameters()):
      if "norm" in name:
        p.copy_(0.5 + torch.rand(p.shape, generator=gen))
      elif name.endswith("bias"):
        p.copy_(0.3 * torch.randn(p.shape, generator=gen))
      elif "embed_tokens" in name:
        p.copy_(0.4 * torch.randn(p.shape, generator=gen))
      else:
        p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))


def build(name: str, directory: str, seed: int = 0) -> torch.nn.Module:
  """Save a random `name` checkpoint (config.json + model.safetensors) and return the torch model."""
  config = {**SPECS, **NEW_SPECS}[name]()
  torch.manual_seed(seed)
  if config.model_type == "gemma3":
    model = transformers.Gemma3ForConditionalGeneration(config).to(torch.float32)
  else:
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
  randomize_(model, seed)
  model.eval()
  model.save_pretrained(directory, safe_serialization=True)
  return model


def torch_logits(model: torch.nn.Module, tokens, attention_mask=None):
  """fp32 logits [B, T, V] as numpy; left padding gets positions counted from the first real token."""
  ids = torch.as_tensor(tokens, dtype=torch.long)
  kw = {}
  if attention_mask is not None:
    mask = torch.as_tensor(attention_mask, dtype=torch.long)
    kw = dict(attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
  with torch.no_grad():
    return model(input_ids=ids, use_cache=False, **kw).logits.float().numpy()
