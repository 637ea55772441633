"""Batched sampling with a KV cache: one jitted prefill, one jitted decode loop.

Prompts are left-padded to a shared length (rounded up to a multiple of 16 so similar
batches reuse the compiled program). A steering SV acts in the prefill pass at its prompt
positions; a spec that covers generated tokens (`all`, `generation`) also acts at every
decode step. Prompt-only specs leave the decode loop exactly the unsteered one.
"""

from __future__ import annotations

import functools
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


def sample_token(logits_BV, rng, temperature: float, top_p: float):
  if temperature == 0.0:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  logits = logits_BV / temperature
  if top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, -1)
    probs = jax.nn.softmax(sorted_logits, -1)
    keep_sorted = (jnp.cumsum(probs, -1) - probs) < top_p   # always keeps the top token
    keep = jnp.zeros_like(keep_sorted).at[
        jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    logits = jnp.where(keep, logits, -jnp.inf)
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
    "model", "spec", "steps", "temperature", "top_p", "stop_ids", "keep_logits"))
def decode(model, spec, steps, temperature, top_p, stop_ids, keep_logits,
            params, sv, concept_ids, logits, cache, rng):
  """(tokens [B, steps], logits kept or [0], steps run): sample from `logits` on; stops
  early once every row has emitted a stop id."""
  B = logits.shape[0]
  step_sv = sv if (sv is not None and spec.acts_on_generation) else None
  stops = jnp.asarray(stop_ids or (-1,), jnp.int32)
  out = jnp.zeros((B, steps), jnp.int32)
  all_logits = jnp.zeros((B, steps, logits.shape[-1]) if keep_logits else (0,), jnp.float32)

  def cond(state):
    i, done = state[0], state[1]
    return (i < steps) & ~jnp.all(done)

  def body(state):
    i, done, out, all_logits, logits, cache, rng = state
    rng, key = jax.random.split(rng)
    token = sample_token(logits, key, temperature, top_p)
    token = jnp.where(done, stops[0], token)
    out = out.at[:, i].set(token)
    if keep_logits:
      all_logits = all_logits.at[:, i].set(logits)
    done = done | jnp.isin(token, stops)
    ones = jnp.ones((B, 1), bool)
    logits, cache = _forward(model, spec, params, step_sv, concept_ids, token[:, None],
                             ones, ones, cache)
    return i + 1, done, out, all_logits, logits[:, -1], cache, rng

  state = (jnp.zeros((), jnp.int32), jnp.zeros((B,), bool), out, all_logits, logits, cache, rng)
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
             temperature: float = 0.0, top_p: float = 1.0, rng=None, sv=None,
             spec: Optional[SteerSpec] = None, concept_ids=None, stop_ids=None,
             return_logits: bool = False):
  """Continuations (token ids without the prompt, cut before the first stop id).

  `sv`/`spec` steer the prompt positions at prefill, and every decode step when the spec
  covers generated tokens. With `return_logits=True` also returns, per prompt, the
  `[n, V]` logits each token was drawn from.
  """
  cfg = model.cfg
  check_prompts(prompts, max_new_tokens, cfg.max_seq_len)
  if (sv is None) != (spec is None):
    raise ValueError("pass sv and spec together (or neither for unsteered generation)")
  if temperature < 0 or not 0 < top_p <= 1:
    raise ValueError(f"temperature={temperature} must be >= 0 and top_p={top_p} in (0, 1]")
  if temperature > 0 and rng is None:
    raise ValueError("sampling with temperature > 0 needs rng=jax.random.key(seed)")
  rng = jax.random.key(0) if rng is None else rng
  stop_ids = tuple(cfg.stop_ids) if stop_ids is None else tuple(stop_ids)
  tokens, valid = left_pad(prompts, cfg.pad_id)
  if concept_ids is not None:
    concept_ids = jnp.asarray(concept_ids, jnp.int32)
  size = tokens.shape[1] + max_new_tokens
  logits, cache = prefill(model, spec, size, params, sv, concept_ids, tokens, valid)
  out, all_logits, n = decode(model, spec, max_new_tokens, float(temperature), float(top_p),
                               stop_ids, return_logits, params, sv, concept_ids, logits,
                               cache, rng)
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
  rng = jax.random.PRNGKey(0) if rng is None else rng
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
