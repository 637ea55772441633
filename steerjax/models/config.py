"""Architecture description shared by every supported model family.

One frozen dataclass covers Llama / Llama-3, Qwen2 / Qwen2.5, Gemma-2, Gemma-3, Qwen3 and
Mistral; the family switches (bias, norms, softcaps, sliding window, activation, RoPE per
layer type) are plain fields so a preset or an imported HF config maps onto it field by
field.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

FAMILIES = ("llama", "qwen2", "gemma2", "gemma3", "qwen3", "mistral")
# Fields added after the first release: hashed into the fingerprint only when set, so SVs
# saved for an earlier model keep matching it.
_LATER_FIELDS = {"qk_norm": False, "rope_linear_factor": None, "local_rope_theta": None}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  family: str = "llama"
  vocab_size: int = 512
  dim: int = 64                     # residual width n (D)
  n_layers: int = 5
  n_heads: int = 8                  # query heads (H)
  n_kv_heads: int = 4               # key/value heads (K); K == H is MHA, K == 1 is MQA
  head_dim: int = 8
  hidden_dim: int = 172             # MLP width (F)
  max_seq_len: int = 512            # context length
  norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  # llama3 RoPE scaling: (factor, low_freq_factor, high_freq_factor, original_max_len).
  rope_llama3: Optional[tuple] = None
  rope_linear_factor: Optional[float] = None  # linear RoPE scaling: positions / factor
  # Gemma-3: sliding-window layers use plain RoPE at this base (no scaling); None = the
  # same RoPE as the full-attention layers.
  local_rope_theta: Optional[float] = None
  tie_embeddings: bool = True
  qkv_bias: bool = False            # Qwen2
  qk_norm: bool = False             # RMSNorm of each query / key head before RoPE (Qwen3, Gemma-3)
  activation: str = "silu"          # "silu" or "gelu_tanh" (Gemma-2)
  # Gemma-2 / Gemma-3 switches.
  embed_scale: bool = False         # multiply embeddings by sqrt(dim)
  norm_plus_one: bool = False       # RMSNorm weight applied as (1 + w)
  sandwich_norms: bool = False      # extra post-attention / pre+post-MLP norms
  attn_softcap: Optional[float] = None
  final_softcap: Optional[float] = None
  query_scale: Optional[float] = None   # query_pre_attn_scalar; None means head_dim
  sliding_window: Optional[int] = None
  sliding_layers: tuple = ()        # indices of layers that use the sliding window (Mistral: all)
  # Token ids.
  bos_id: Optional[int] = 1
  stop_ids: tuple = (2,)
  pad_id: int = 0

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f"ModelConfig.family={self.family!r}; expected one of {FAMILIES}")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(
          f"ModelConfig.n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
    if self.activation not in ("silu", "gelu_tanh"):
      raise ValueError(f"ModelConfig.activation={self.activation!r}; use 'silu' or 'gelu_tanh'")
    if self.rope_llama3 is not None and self.rope_linear_factor is not None:
      raise ValueError("ModelConfig sets both rope_llama3 and rope_linear_factor; choose one")
    if self.sliding_layers and self.sliding_window is None:
      raise ValueError(f"ModelConfig.sliding_layers={self.sliding_layers} needs sliding_window")

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  def fingerprint(self) -> str:
    """Short stable hash of the architecture, stored with exported SVs."""
    import hashlib
    import json
    fields = {k: v for k, v in dataclasses.asdict(self).items()
              if k not in _LATER_FIELDS or v != _LATER_FIELDS[k]}
    blob = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
