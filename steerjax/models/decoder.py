"""One llama-like decoder in Flax linen, with switches for Llama, Qwen2, Gemma-2/3, Qwen3 and
Mistral.

Axis letters used in names and einsum strings:
  B batch, T query time, S key slots, D width, H query heads, K kv heads,
  G query heads per kv head, E head dim, F mlp width, V vocab, L layers.

Every `Block` ends in `Block.residual(h_BTD)`, an identity method that marks the block
output (HF's `model.layers[i]` output) as the residual-stream site. Interventions hook that
method through `flax.linen.intercept_methods`; the model itself knows nothing of steering.

The KV cache is explicit and functional: a dict
  {"k": [L x [B, K, S, E]], "v": [...], "valid": bool[B, S], "index": int32, "next_pos": int32[B]}
passed in and returned by `Decoder.__call__`.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from steerjax.models.config import ModelConfig

SITE_METHOD = "residual"
_NEG = -1e30  # finite, so fully padded query rows give a uniform softmax instead of NaN


def block_name(layer: int) -> str:
  return f"layers_{layer}"


def _param(module, name, init, shape, axes, dtype):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


class RMSNorm(nn.Module):
  cfg: ModelConfig
  dtype: Any
  axis: str = "embed"   # logical axis of the scale: "embed", or "head_dim" for q/k norms

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.zeros if self.cfg.norm_plus_one else nn.initializers.ones
    w = _param(self, "scale", init, (x.shape[-1],), (self.axis,), self.dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.cfg.norm_eps)
    if self.cfg.norm_plus_one:  # Gemma keeps the whole norm in fp32
      return (y * (1.0 + w.astype(jnp.float32))).astype(x.dtype)
    return w * y.astype(x.dtype)


def rope_inv_freq(cfg: ModelConfig, sliding: bool = False):
  """Inverse RoPE frequencies [E/2] of a full-attention layer (llama3 or linear scaling when
  configured), or of a sliding-window layer (plain RoPE at `local_rope_theta` when set)."""
  e = cfg.head_dim
  local = sliding and cfg.local_rope_theta is not None
  theta = cfg.local_rope_theta if local else cfg.rope_theta
  inv = 1.0 / (theta ** (jnp.arange(0, e, 2, dtype=jnp.float32) / e))
  if local:
    return inv
  if cfg.rope_linear_factor is not None:
    return inv / cfg.rope_linear_factor
  if cfg.rope_llama3 is None:
    return inv
  factor, low, high, old_len = cfg.rope_llama3
  wavelen = 2 * math.pi / inv
  low_wavelen, high_wavelen = old_len / low, old_len / high
  scaled = jnp.where(wavelen > low_wavelen, inv / factor, inv)
  smooth = (old_len / wavelen - low) / (high - low)
  mid = (1 - smooth) * scaled / factor + smooth * scaled
  is_mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return jnp.where(is_mid, mid, scaled)


def apply_rope(x_BNTE, positions_BT, inv_freq):
  """Rotate-half RoPE (the HF layout) on head-major `x` [B, ..., T, E], computed in fp32."""
  angles = positions_BT.astype(jnp.float32)[..., None] * inv_freq  # [B, T, E/2]
  angles = angles.reshape(angles.shape[:1] + (1,) * (x_BNTE.ndim - 3) + angles.shape[1:])
  cos = jnp.concatenate([jnp.cos(angles)] * 2, -1)
  sin = jnp.concatenate([jnp.sin(angles)] * 2, -1)
  x = x_BNTE.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], -1)
  return (x * cos + rotated * sin).astype(x_BNTE.dtype)


def _softcap(x, cap):
  return x if cap is None else cap * jnp.tanh(x / cap)


class Attention(nn.Module):
  cfg: ModelConfig
  dtype: Any
  sliding: bool

  @nn.compact
  def __call__(self, x_BTD, positions_BT, allowed_BTS, kv_cache):
    cfg, dt = self.cfg, self.dtype
    D, H, K, E = cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    init = nn.initializers.normal(0.02)
    wq = _param(self, "q", init, (D, H, E), ("embed", "heads", "head_dim"), dt)
    wk = _param(self, "k", init, (D, K, E), ("embed", "kv_heads", "head_dim"), dt)
    wv = _param(self, "v", init, (D, K, E), ("embed", "kv_heads", "head_dim"), dt)
    wo = _param(self, "o", init, (H, E, D), ("heads", "head_dim", "embed"), dt)
    # Head-major layouts ([B, K, G, T, E], [B, K, S, E]) keep the attention products free
    # of transposes. Query head h is kv head h // G.
    G = H // K
    q = jnp.einsum("btd,dkge->bkgte", x_BTD, wq.reshape(D, K, G, E))
    k = jnp.einsum("bsd,dke->bkse", x_BTD, wk)
    v = jnp.einsum("bsd,dke->bkse", x_BTD, wv)
    if cfg.qkv_bias:
      zeros = nn.initializers.zeros
      q = q + _param(self, "q_bias", zeros, (H, E), ("heads", "head_dim"), dt).reshape(K, G, 1, E)
      k = k + _param(self, "k_bias", zeros, (K, E), ("kv_heads", "head_dim"), dt)[:, None]
      v = v + _param(self, "v_bias", zeros, (K, E), ("kv_heads", "head_dim"), dt)[:, None]
    if cfg.qk_norm:
      q = RMSNorm(cfg, dt, axis="head_dim", name="q_norm")(q)
      k = RMSNorm(cfg, dt, axis="head_dim", name="k_norm")(k)
    inv_freq = rope_inv_freq(cfg, self.sliding)
    q = apply_rope(q, positions_BT, inv_freq)
    k = apply_rope(k, positions_BT, inv_freq)

    if kv_cache is not None:  # write the new keys at the cache index, attend over all slots
      k_cache, v_cache, index = kv_cache
      k = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, 0, index, 0))
      v = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, 0, index, 0))
    new_kv = (k, v)

    scale = (cfg.query_scale if cfg.query_scale is not None else E) ** -0.5
    logits = jnp.einsum("bkgte,bkse->bkgts", q, k.astype(dt)).astype(jnp.float32) * scale
    logits = _softcap(logits, cfg.attn_softcap)
    logits = jnp.where(allowed_BTS[:, None, None], logits, _NEG)
    probs = jax.nn.softmax(logits, axis=-1).astype(dt)
    out = jnp.einsum("bkgts,bkse->bkgte", probs, v.astype(dt))
    return jnp.einsum("bkgte,kged->btd", out, wo.reshape(K, G, E, D)), new_kv


class Mlp(nn.Module):
  cfg: ModelConfig
  dtype: Any

  @nn.compact
  def __call__(self, x_BTD):
    cfg, dt = self.cfg, self.dtype
    init = nn.initializers.normal(0.02)
    gate = _param(self, "gate", init, (cfg.dim, cfg.hidden_dim), ("embed", "mlp"), dt)
    up = _param(self, "up", init, (cfg.dim, cfg.hidden_dim), ("embed", "mlp"), dt)
    down = _param(self, "down", init, (cfg.hidden_dim, cfg.dim), ("mlp", "embed"), dt)
    g = x_BTD @ gate
    g = jax.nn.silu(g) if cfg.activation == "silu" else jax.nn.gelu(g, approximate=True)
    return (g * (x_BTD @ up)) @ down


class Block(nn.Module):
  cfg: ModelConfig
  dtype: Any
  sliding: bool = False

  @nn.compact
  def __call__(self, h_BTD, positions_BT, allowed_BTS, kv_cache=None):
    cfg = self.cfg
    x = RMSNorm(cfg, self.dtype, name="attn_norm")(h_BTD)
    x, new_kv = Attention(cfg, self.dtype, self.sliding, name="attn")(
        x, positions_BT, allowed_BTS, kv_cache)
    if cfg.sandwich_norms:
      x = RMSNorm(cfg, self.dtype, name="post_attn_norm")(x)
    h_BTD = h_BTD + x
    x = RMSNorm(cfg, self.dtype, name="mlp_norm")(h_BTD)
    x = Mlp(cfg, self.dtype, name="mlp")(x)
    if cfg.sandwich_norms:
      x = RMSNorm(cfg, self.dtype, name="post_mlp_norm")(x)
    return self.residual(h_BTD + x), new_kv

  def residual(self, h_BTD):
    """The residual-stream site: the block output. Identity; interventions hook it."""
    return h_BTD


def _allowed(q_slot_BT, k_valid_BS, window):
  """bool[B, T, S]: causal, key not padding, and inside the sliding window if any."""
  s = jnp.arange(k_valid_BS.shape[1])
  ok = (s[None, None, :] <= q_slot_BT[:, :, None]) & k_valid_BS[:, None, :]
  if window is not None:
    ok &= (q_slot_BT[:, :, None] - s[None, None, :]) < window
  return ok


def _logits(h_BTD, unembed_VD, softcap):
  return _softcap(jnp.einsum("btd,vd->btv", h_BTD, unembed_VD).astype(jnp.float32), softcap)


def chunked_logsumexp(h_BTD, unembed_VD, chunk: int, softcap=None):
  """logsumexp over the vocabulary of the (soft-capped) logits `h @ unembed.T`, `chunk`
  rows of the unembedding at a time; each chunk's logits are recomputed in the backward
  pass instead of stored."""
  V, D = unembed_VD.shape
  n = -(-V // chunk)
  rows = jnp.pad(unembed_VD, ((0, n * chunk - V), (0, 0))).reshape(n, chunk, D)
  real = (jnp.arange(n * chunk) < V).reshape(n, chunk)

  @jax.checkpoint
  def add_chunk(total, part):
    w, keep = part
    logits = jnp.where(keep, _logits(h_BTD, w, softcap), -jnp.inf)
    return jnp.logaddexp(total, jax.nn.logsumexp(logits, axis=-1)), None
  start = jnp.full(h_BTD.shape[:-1], -jnp.inf, jnp.float32)
  return jax.lax.scan(add_chunk, start, (rows, real))[0]


class Decoder(nn.Module):
  """`apply({"params": p}, tokens_BT) -> logits_BTV` (fp32 logits).

  Optional keywords: `valid_BT` (False at left padding), `cache` (then returns
  `(out, new_cache)`), and for running a slice of the model, `h_BTD` with `first_layer`
  (start from the site output of block first_layer-1) and `last_layer` with `head=False`
  (stop after block last_layer-1 and return its site output), `logits_at` (int[B, R]
  positions: logits only there, `[B, R, V]`), and `targets` (int[B, T] or int[B, R] with
  `logits_at`: return the log-probability of each target token instead of logits).

  `remat=True` recomputes each block's activations in the backward pass instead of
  storing them (`nn.remat`); params, outputs and the `residual` site are unchanged.
  `vocab_chunk=N` computes the `targets` log-probabilities' normaliser over N vocabulary
  rows at a time, recomputed in the backward pass, so no `[B, R, V]` logits are kept.
  """
  cfg: ModelConfig
  dtype: Any = jnp.float32
  remat: bool = False
  vocab_chunk: int = 0

  @nn.compact
  def __call__(self, tokens_BT=None, *, valid_BT=None, cache=None, h_BTD=None,
               first_layer: int = 0, last_layer: Optional[int] = None, head: bool = True,
               logits_at=None, targets=None):
    cfg, dt = self.cfg, self.dtype
    embedding = _param(self, "embedding", nn.initializers.normal(0.02),
                       (cfg.vocab_size, cfg.dim), ("vocab", "embed"), dt)
    if first_layer == 0:
      h_BTD = embedding[tokens_BT]
      if cfg.embed_scale:
        h_BTD = h_BTD * jnp.asarray(math.sqrt(cfg.dim), dt)
    B, T = h_BTD.shape[:2]
    if valid_BT is None:
      valid_BT = jnp.ones((B, T), bool)

    start_pos = cache["next_pos"] if cache is not None else jnp.zeros((B,), jnp.int32)
    positions_BT = jnp.maximum(start_pos[:, None] + jnp.cumsum(valid_BT, 1) - 1, 0)
    if cache is not None:
      index = cache["index"]
      k_valid = jax.lax.dynamic_update_slice(cache["valid"], valid_BT, (0, index))
      q_slot = index + jnp.arange(T)[None, :].repeat(B, 0)
    else:
      k_valid, q_slot = valid_BT, jnp.arange(T)[None, :].repeat(B, 0)
    allowed_full = _allowed(q_slot, k_valid, None)
    allowed_local = _allowed(q_slot, k_valid, cfg.sliding_window) if cfg.sliding_layers else None

    stop = cfg.n_layers if last_layer is None else last_layer
    new_k, new_v = [], []
    block = nn.remat(Block) if self.remat else Block
    for i in range(first_layer, stop):
      sliding = i in cfg.sliding_layers
      kv = None if cache is None else (cache["k"][i], cache["v"][i], cache["index"])
      h_BTD, (k, v) = block(cfg, dt, sliding, name=block_name(i))(
          h_BTD, positions_BT, allowed_local if sliding else allowed_full, kv)
      new_k.append(k)
      new_v.append(v)

    out = h_BTD
    if head:
      if logits_at is not None:
        h_BTD = jnp.take_along_axis(h_BTD, logits_at[..., None], axis=1)
      h_BTD = RMSNorm(cfg, dt, name="final_norm")(h_BTD)
      if cfg.tie_embeddings:
        unembed_VD = embedding
      else:
        unembed_VD = _param(self, "lm_head", nn.initializers.normal(0.02),
                            (cfg.dim, cfg.vocab_size), ("embed", "vocab"), dt).T
      if targets is not None:
        # The target's logit from its own unembedding row: no [B, T, V] gather, and a
        # backward pass that needs only the softmax.
        picked = jnp.einsum("btd,btd->bt", h_BTD, unembed_VD[targets]).astype(jnp.float32)
        if self.vocab_chunk:
          normaliser = chunked_logsumexp(h_BTD, unembed_VD, self.vocab_chunk, cfg.final_softcap)
        else:
          normaliser = jax.nn.logsumexp(_logits(h_BTD, unembed_VD, cfg.final_softcap), axis=-1)
        out = _softcap(picked, cfg.final_softcap) - normaliser
      else:
        out = _logits(h_BTD, unembed_VD, cfg.final_softcap)
    if cache is None:
      return out
    new_cache = dict(k=new_k, v=new_v, valid=k_valid, index=cache["index"] + T,
                     next_pos=start_pos + valid_BT.sum(1).astype(jnp.int32))
    return out, new_cache


def init_cache(cfg: ModelConfig, batch: int, size: int, dtype=jnp.float32):
  """An empty KV cache of `size` slots."""
  shape = (batch, cfg.n_kv_heads, size, cfg.head_dim)
  return dict(k=[jnp.zeros(shape, dtype) for _ in range(cfg.n_layers)],
              v=[jnp.zeros(shape, dtype) for _ in range(cfg.n_layers)],
              valid=jnp.zeros((batch, size), bool), index=jnp.zeros((), jnp.int32),
              next_pos=jnp.zeros((batch,), jnp.int32))
