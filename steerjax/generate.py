"""Batched sampling with a KV cache: one jitted prefill, one jitted decode loop.

Prompts are left-padded to a shared length (rounded up to a multiple of 16 so similar
batches reuse the compiled program). A steering SV acts in the prefill pass at its prompt
positions; a spec that covers generated tokens (`all`, `generation`) also acts at every
decode step. Prompt-only specs leave the decode loop exactly the unsteered one.
"""

from __future__ import annotations

import functools
import os
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from steerjax.models.decoder import Decoder, init_cache
from steerjax.steering import SteerSpec, positions_mask, steer

PAD_MULTIPLE = 16


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, multiple: int = PAD_MULTIPLE):
  """-> (tokens int32[B, P], valid bool[B, P]) with P a multiple of `multiple`."""
  longest = max(len(p) for p in prompts)
  P = -(-longest // multiple) * multiple
  tokens = np.full((len(prompts), P), pad_id, np.int32)
  valid = np.zeros((len(prompts), P), bool)
  for i, p in enumerate(prompts):
    if len(p):
      tokens[i, P - len(p):] = p
      valid[i, P - len(p):] = True
  return tokens, valid


def repetition_penalty(logits_BV, seen_BV, penalty: float):
  """transformers' RepetitionPenaltyLogitsProcessor: the logits of tokens already in the
  sequence are divided by `penalty` where positive and multiplied by it where negative."""
  penalized = jnp.where(logits_BV < 0, logits_BV * penalty, logits_BV / penalty)
  return jnp.where(seen_BV, penalized, logits_BV)


def top_k_filter(logits_BV, k: int):
  """transformers' TopKLogitsWarper: keep the logits at least as large as the k-th largest."""
  kth = jax.lax.top_k(logits_BV, min(k, logits_BV.shape[-1]))[0][..., -1:]
  return jnp.where(logits_BV < kth, -jnp.inf, logits_BV)


def top_p_filter(logits_BV, top_p: float):
  """transformers' TopPLogitsWarper: drop the least likely tokens whose probabilities sum
  to at most 1 - top_p (counted from the least likely up); the most likely always stays."""
  order = jnp.argsort(logits_BV, axis=-1)                       # ascending
  sorted_logits = jnp.take_along_axis(logits_BV, order, -1)
  cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, -1), -1)
  drop_sorted = (cumulative <= 1 - top_p).at[..., -1].set(False)
  drop = jnp.zeros_like(drop_sorted).at[jnp.arange(logits_BV.shape[0])[:, None], order].set(
      drop_sorted)
  return jnp.where(drop, -jnp.inf, logits_BV)


def sample_token(logits_BV, rng, temperature: float, top_p: float, top_k: int = 0,
                 penalty: float = 1.0, seen_BV=None):
  """The next token: greedy at temperature 0, else sampled after (in transformers' order)
  the repetition penalty, temperature, top-k and top-p."""
  if penalty != 1.0:
    logits_BV = repetition_penalty(logits_BV, seen_BV, penalty)
  if temperature == 0.0:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  logits = logits_BV / temperature
  if top_k > 0:
    logits = top_k_filter(logits, top_k)
  if top_p < 1.0:
    logits = top_p_filter(logits, top_p)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def _forward(model, spec, params, sv, concept_ids, tokens, valid, mask, cache):
  if sv is None:
    return model.apply({"params": params}, tokens, valid_BT=valid, cache=cache)
  return steer(model.apply, spec)({"params": params}, sv, tokens, mask,
                                  concept_ids=concept_ids, valid_BT=valid, cache=cache)


@functools.partial(jax.jit, static_argnames=("model", "spec", "size"))
def prefill(model, spec, size, params, sv, concept_ids, tokens, valid):
  """(last-position logits [B, V], KV cache of `size` slots) of left-padded prompts."""
  cache = init_cache(model.cfg, tokens.shape[0], size, model.dtype)
  mask = None if sv is None else positions_mask(spec.positions, valid, valid)
  logits, cache = _forward(model, spec, params, sv, concept_ids, tokens, valid, mask, cache)
  return logits[:, -1], cache


@functools.partial(jax.jit, static_argnames=(
    "model", "spec", "steps", "temperature", "top_p", "stop_ids", "keep_logits", "top_k",
    "penalty"))
def decode(model, spec, steps, temperature, top_p, stop_ids, keep_logits,
           params, sv, concept_ids, logits, cache, rng, top_k=0, penalty=1.0, seen=None):
  """(tokens [B, steps], logits kept or [0], steps run): sample from `logits` on; stops
  early once every row has emitted a stop id. With a repetition `penalty`, `seen` [B, V]
  marks the prompt's tokens (and is updated with each sampled one)."""
  B = logits.shape[0]
  step_sv = sv if (sv is not None and spec.acts_on_generation) else None
  stops = jnp.asarray(stop_ids or (-1,), jnp.int32)
  out = jnp.zeros((B, steps), jnp.int32)
  all_logits = jnp.zeros((B, steps, logits.shape[-1]) if keep_logits else (0,), jnp.float32)

  if seen is None:
    seen = jnp.zeros((B, 0), bool)

  def cond(state):
    i, done = state[0], state[1]
    return (i < steps) & ~jnp.all(done)

  def body(state):
    i, done, out, all_logits, logits, cache, rng, seen = state
    rng, key = jax.random.split(rng)
    token = sample_token(logits, key, temperature, top_p, top_k, penalty, seen)
    if penalty != 1.0:
      seen = seen.at[jnp.arange(B), token].set(True)
    token = jnp.where(done, stops[0], token)
    out = out.at[:, i].set(token)
    if keep_logits:
      all_logits = all_logits.at[:, i].set(logits)
    done = done | jnp.isin(token, stops)
    ones = jnp.ones((B, 1), bool)
    logits, cache = _forward(model, spec, params, step_sv, concept_ids, token[:, None],
                             ones, ones, cache)
    return i + 1, done, out, all_logits, logits[:, -1], cache, rng, seen

  state = (jnp.zeros((), jnp.int32), jnp.zeros((B,), bool), out, all_logits, logits, cache, rng,
           seen)
  n, _, out, all_logits, *_ = jax.lax.while_loop(cond, body, state)
  return out, all_logits, n


def check_prompts(prompts, max_new_tokens: int, context: int):
  if isinstance(prompts, (str, bytes)) or not len(prompts):
    raise ValueError("prompts must be a non-empty list of token-id lists")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
  for i, p in enumerate(prompts):
    if isinstance(p, str) or not len(p):
      raise ValueError(f"prompts[{i}] must be a non-empty list of token ids (encode text first)")
    if len(p) + max_new_tokens > context:
      raise ValueError(
          f"prompts[{i}] has {len(p)} tokens; with max_new_tokens={max_new_tokens} that exceeds "
          f"the model's context of {context} tokens. Shorten the prompt or lower max_new_tokens.")


def generate(model: Decoder, params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
             repetition_penalty: float = 1.0, rng=None, sv=None,
             spec: Optional[SteerSpec] = None, concept_ids=None, stop_ids=None,
             return_logits: bool = False):
  """Continuations (token ids without the prompt, cut before the first stop id).

  `sv`/`spec` steer the prompt positions at prefill, and every decode step when the spec
  covers generated tokens. Sampling applies `repetition_penalty`, `temperature`, `top_k`
  (0: off) and `top_p` as transformers' logits processors do. With `return_logits=True`
  also returns, per prompt, the `[n, V]` logits each token was drawn from (before them).
  """
  cfg = model.cfg
  check_prompts(prompts, max_new_tokens, cfg.max_seq_len)
  if (sv is None) != (spec is None):
    raise ValueError("pass sv and spec together (or neither for unsteered generation)")
  if temperature < 0 or not 0 < top_p <= 1 or top_k < 0 or repetition_penalty <= 0:
    raise ValueError(f"temperature={temperature} must be >= 0, top_p={top_p} in (0, 1], "
                     f"top_k={top_k} >= 0 and repetition_penalty={repetition_penalty} > 0")
  if temperature > 0 and rng is None:
    raise ValueError("sampling with temperature > 0 needs rng=jax.random.key(seed)")
  rng = jax.random.key(0) if rng is None else rng
  stop_ids = tuple(cfg.stop_ids) if stop_ids is None else tuple(stop_ids)
  tokens, valid = left_pad(prompts, cfg.pad_id)
  if concept_ids is not None:
    concept_ids = jnp.asarray(concept_ids, jnp.int32)
  size = tokens.shape[1] + max_new_tokens
  logits, cache = prefill(model, spec, size, params, sv, concept_ids, tokens, valid)
  seen = None
  if repetition_penalty != 1.0:   # the prompt's real tokens count as seen
    seen = np.zeros((len(prompts), logits.shape[-1]), bool)
    for i, p in enumerate(prompts):
      seen[i, np.asarray(p, np.int64)] = True
  if spec is not None and not spec.acts_on_generation:
    sv, spec, concept_ids = None, None, None   # a prompt-only SV: the unsteered decode loop
  out, all_logits, n = decode(model, spec, max_new_tokens, float(temperature), float(top_p),
                              stop_ids, return_logits, params, sv, concept_ids, logits,
                              cache, rng, top_k=int(top_k), penalty=float(repetition_penalty),
                              seen=seen)
  out = np.asarray(out)[:, :int(n)]
  results, lengths = [], []
  for row in out:
    stop_at = [j for j, t in enumerate(row) if t in stop_ids]
    cut = stop_at[0] if stop_at else len(row)
    results.append(row[:cut].tolist())
    lengths.append(cut + (1 if stop_at else 0))
  if return_logits:
    all_logits = np.asarray(all_logits)
    return results, [all_logits[i, :lengths[i]] for i in range(len(results))]
  return results


def generate_many(model: Decoder, params, prompts: Sequence[Sequence[int]], *,
                  max_new_tokens: Union[int, Sequence[int]], batch_size: int = 64, rng=None,
                  concept_ids=None, sort_by_length: bool = False, fixed_batch: bool = False,
                  **kwargs):
  """`generate` over any number of prompts in batches of `batch_size`, outputs in prompt
  order. `max_new_tokens` may give each prompt its own budget (a batch runs to its
  largest; each output is cut to its own); `concept_ids[i]` picks prompt i's row of a
  stacked `sv`. `sort_by_length` batches similar lengths together (less padding);
  `fixed_batch` pads the last batch with repeats so every batch reuses one program.
  Each batch samples with the next key split off `rng`."""
  budgets = ([int(max_new_tokens)] * len(prompts) if isinstance(max_new_tokens, int)
             else [int(b) for b in max_new_tokens])
  if len(budgets) != len(prompts):
    raise ValueError(f"{len(budgets)} token budgets for {len(prompts)} prompts")
  order = list(range(len(prompts)))
  if sort_by_length:
    order.sort(key=lambda i: len(prompts[i]))
  size = max(1, min(batch_size, len(prompts)))
  rng = jax.random.key(0) if rng is None else rng
  out = [None] * len(prompts)
  for start in range(0, len(order), size):
    idx = order[start:start + size]
    batch = idx + [idx[-1]] * (size - len(idx)) if fixed_batch else idx
    rng, key = jax.random.split(rng)
    ids = None if concept_ids is None else np.asarray([concept_ids[i] for i in batch], np.int32)
    got = generate(model, params, [prompts[i] for i in batch],
                   max_new_tokens=max(budgets[i] for i in batch), rng=key, concept_ids=ids,
                   **kwargs)
    for i, g in zip(idx, got):
      out[i] = g[:budgets[i]]
  return out


# --------------------------------------------------------------------------- sampling settings

# How generation samples beyond its temperature and top-p:
#   plain  the full distribution at the temperature (with top_p if below 1)
#   hf     as transformers' `generate(do_sample=True, temperature=...)` samples: the model's
#          `generation_config.json` (over transformers' defaults, e.g. top-k 50) supplies
#          top-k, top-p and the repetition penalty, as AxBench and the paper's authors ran
SAMPLING_MODES = ("plain", "hf")
# transformers' generate() defaults for the fields read here (5.x)
HF_DEFAULTS = {"top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0}


def sampling_options(mode: str, model_dir: str) -> dict:
  """Extra `generate` arguments of sampling `mode` for the model in `model_dir`."""
  if mode not in SAMPLING_MODES:
    raise ValueError(f"eval.sampling={mode!r}; use one of {SAMPLING_MODES}")
  if mode == "plain":
    return {}
  from transformers import GenerationConfig
  g = GenerationConfig()
  if os.path.exists(os.path.join(model_dir, "generation_config.json")):
    g = GenerationConfig.from_pretrained(model_dir)
  # generate() fills the fields a model leaves unset from transformers' global defaults
  defaults = dict(HF_DEFAULTS, **getattr(GenerationConfig, "_get_default_generation_params",
                                         dict)())
  get = lambda key: getattr(g, key) if getattr(g, key) is not None else defaults[key]
  return dict(top_k=int(get("top_k")), top_p=float(get("top_p")),
              repetition_penalty=float(get("repetition_penalty")))
