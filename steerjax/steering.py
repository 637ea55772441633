"""Steering vectors and the `steer` transform.

An SV is the pytree `{"factor": alpha, "direction": v}`: alpha a scalar and v a `[D]` vector,
or stacked as `[C]` and `[C, D]` for C concepts trained together (each example then names
its concept through `concept_ids`). `steer(apply_fn, spec)` returns a pure function that runs
the model with the SV applied at the output of block `spec.layer`, at the positions in the
edit mask, by intercepting that block's residual-stream site; no model code changes.

Ops (method.md section 1): add `h + a v`; clamp `h + a v - u u^T h`; null `h - relu(h.u) u`,
with `u = v / ||v||`. An SV may also carry a learned `bias` b and a dropout `keep` mask on v
(RePS as AxBench trains it): add `h + (a + b) v'`, null `h - relu(h.v + b) v' / ||v||^2`,
with v' = v times the mask.
"""

from __future__ import annotations

import dataclasses
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from steerjax.models.decoder import SITE_METHOD, block_name

_POSITIONS = re.compile(
    r"^(?:(all|all-bos|prompt|generation)|f(\d+)|l(\d+)|f(\d+)\+l(\d+)|all-f(\d+))$")


@dataclasses.dataclass(frozen=True)
class SteerSpec:
  layer: int                 # 0-based; the output of decoder block `layer` (HF model.layers[layer])
  positions: str = "f2+l2"   # all | all-bos | all-fN | prompt | generation | fN | lN | fN+lM
  op: str = "add"            # add | clamp | null
  train_positions: str = ""  # where training steers, when it differs ('' = positions)

  def __post_init__(self):
    if not isinstance(self.layer, int) or self.layer < 0:
      raise ValueError(f"SteerSpec.layer={self.layer!r} must be a block index >= 0")
    if self.op not in OPS:
      raise ValueError(f"SteerSpec.op={self.op!r}; expected one of {tuple(OPS)}")
    parse_positions(self.positions)
    if self.train_positions:
      parse_positions(self.train_positions)

  @property
  def acts_on_generation(self) -> bool:
    """True when generated tokens are edited too (FSSV), so every decode step is steered."""
    return parse_positions(self.positions)[0] in ("all", "all-bos", "all-f", "generation")

  @property
  def training_positions(self) -> str:
    return self.train_positions or self.positions


def parse_positions(positions: str):
  """'f2+l2' -> ('fl', 2, 2); 'all' -> ('all', 0, 0); 'all-f4' -> ('all-f', 4, 0). Raises
  ValueError naming bad input."""
  m = _POSITIONS.match(positions) if isinstance(positions, str) else None
  if not m:
    raise ValueError(f"positions={positions!r} is not valid; use 'all', 'all-bos', 'all-fN', "
                     "'prompt', 'generation', 'fN', 'lN' or 'fN+lM' (e.g. 'f2+l2')")
  named, f, l, f2, l2, skip = m.groups()
  if named:
    return named, 0, 0
  if skip is not None:
    return "all-f", int(skip), 0
  first, last = int(f or f2 or 0), int(l or l2 or 0)
  if first + last == 0:
    raise ValueError(f"positions={positions!r} selects no token; use N >= 1")
  return "fl", first, last


def positions_mask(positions: str, prompt_mask_BT, token_mask_BT):
  """bool[B, T]: where the SV applies. `prompt_mask_BT` marks real prompt tokens,
  `token_mask_BT` every real token (prompt and response). fN / lN count prompt tokens from
  the first real one, so left padding does not shift them."""
  kind, first, last = parse_positions(positions)
  prompt = jnp.asarray(prompt_mask_BT, bool)
  tokens = jnp.asarray(token_mask_BT, bool)
  if kind == "all":
    return tokens
  rank = jnp.cumsum(prompt, axis=1)            # 1-based index among prompt tokens
  if kind == "all-bos":                        # AxBench's exclude_bos: all but the first
    return tokens & ~(prompt & (rank == 1))
  if kind == "all-f":                          # all but the first N (AxBench's chat prefix)
    return tokens & ~(prompt & (rank <= first))
  if kind == "prompt":
    return prompt
  if kind == "generation":
    return tokens & ~prompt
  n_prompt = rank[:, -1:]
  return prompt & ((rank <= first) | (rank > n_prompt - last))


def init_sv(rng, width: int, beta: float, lam: float, init: str = "normal", concepts=None):
  """muP-style init: alpha0 = beta * sqrt(width); v0 ~ N(0, lam / width) ("normal", the
  paper's rule), uniform(-lam/sqrt(width), lam/sqrt(width)) ("uniform", the authors' code)
  or lam in every entry ("constant").
  `concepts=C` stacks C independent SVs."""
  shape = (width,) if concepts is None else (concepts, width)
  if init == "normal":
    v = jax.random.normal(rng, shape, jnp.float32) * math.sqrt(lam / width)
  elif init == "uniform":
    bound = lam / math.sqrt(width)
    v = jax.random.uniform(rng, shape, jnp.float32, -bound, bound)
  elif init == "constant":   # every entry lam: AxBench's steering vector starts at 0.01
    v = jnp.full(shape, lam, jnp.float32)
  else:
    raise ValueError(f"direction init={init!r}; use 'normal' (paper), 'uniform' (authors' "
                     "code) or 'constant'")
  factor = jnp.full(shape[:-1], beta * math.sqrt(width), jnp.float32)
  return {"factor": factor, "direction": v}


def chat_prefix_length(chat_ids) -> int:
  """Tokens every chat prompt starts with, as AxBench's `get_prefix_length` counts them:
  where the templated one-message chats "1" and "2" first differ. `chat_ids(messages) ->
  ids` applies the chat template (4 on Gemma-2-it: BOS, `<start_of_turn>`, `user`, a
  newline); `all-f{n}` then steers all but those."""
  a, b = (list(chat_ids([{"role": "user", "content": x}])) for x in ("1", "2"))
  return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), 0)


def select(sv, concept_ids=None):
  """Per-example (factor [B], direction [B, D]) from a single or stacked SV."""
  factor, direction = jnp.asarray(sv["factor"]), jnp.asarray(sv["direction"])
  if direction.ndim == 1:
    return factor, direction
  if concept_ids is None:
    raise ValueError("a stacked SV ([C, D] direction) needs concept_ids, one per example")
  return factor[concept_ids], direction[concept_ids]


def _unit(v):
  return v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def add_op(h, factor, v):
  """AddInv: h + a v."""
  return h + factor * v


def clamp_op(h, factor, v):
  """ClampInv: h + a v - u u^T h."""
  u = _unit(v)
  return h + factor * v - jnp.sum(h * u, axis=-1, keepdims=True) * u


def null_op(h, factor, v):
  """NullInv: h - relu(h.u) u (the factor is unused)."""
  u = _unit(v)
  return h - jax.nn.relu(jnp.sum(h * u, axis=-1, keepdims=True)) * u


def _biased(op, h, factor, v, bias, keep):
  """The op with AxBench's learned bias b and dropout mask on the added vector:
  add/clamp add (a + b) v', null removes relu(h.v + b) v' / ||v||^2 (v' = v * keep)."""
  applied = v * keep
  if op == "null":
    latent = jax.nn.relu(jnp.sum(h * v, axis=-1, keepdims=True) + bias)
    return h - latent / jnp.maximum(jnp.sum(v * v, axis=-1, keepdims=True), 1e-24) * applied
  out = h + (factor + bias) * applied
  if op == "clamp":
    u = _unit(v)
    out = out - jnp.sum(h * u, axis=-1, keepdims=True) * u
  return out


# name -> op(h [B, T, D], factor [B, 1, 1], v [B, 1, D]) -> edited h, all float32
OPS = {"add": add_op, "clamp": clamp_op, "null": null_op}


def _optional_leaf(sv, key, concept_ids, default):
  """`bias` or `keep` per example, indexed like the direction; `default` when absent."""
  if key not in sv:
    return jnp.float32(default)
  value = jnp.asarray(sv[key], jnp.float32)
  return value[concept_ids] if jnp.ndim(sv["direction"]) == 2 else value


def edit(h_BTD, sv, mask_BT, op: str = "add", concept_ids=None):
  """Apply the op at the masked positions; elsewhere h is returned bit for bit."""
  factor, v = select(sv, concept_ids)
  if v.ndim == 1:
    factor, v = factor[None], v[None]
  h = h_BTD.astype(jnp.float32)
  v = v[:, None, :].astype(jnp.float32)                       # [B or 1, 1, D]
  factor = jnp.reshape(factor, (-1, 1, 1)).astype(jnp.float32)
  if "bias" in sv or "keep" in sv:
    bias = _optional_leaf(sv, "bias", concept_ids, 0.0)
    keep = _optional_leaf(sv, "keep", concept_ids, 1.0)
    keep = keep if keep.ndim == 0 else jnp.reshape(keep, (-1, 1, keep.shape[-1]))
    new = _biased(op, h, factor, v, jnp.reshape(bias, (-1, 1, 1)), keep)
  else:
    new = OPS[op](h, factor, v)
  return jnp.where(jnp.asarray(mask_BT, bool)[..., None], new.astype(h_BTD.dtype), h_BTD)


def steer(apply_fn, spec: SteerSpec):
  """Wrap `apply_fn(variables, tokens, **kw)`; returns
  `steered(variables, sv, tokens_BT, mask_BT, *, concept_ids=None, **kw)`."""
  site = (block_name(spec.layer),)

  def steered(variables, sv, tokens_BT, mask_BT, *, concept_ids=None, **kw):
    hit = []

    def interceptor(next_fun, args, kwargs, ctx):
      out = next_fun(*args, **kwargs)
      if ctx.method_name == SITE_METHOD and ctx.module.path == site:
        hit.append(True)
        return edit(out, sv, mask_BT, spec.op, concept_ids)
      return out

    with nn.intercept_methods(interceptor):
      out = apply_fn(variables, tokens_BT, **kw)
    ran = kw.get("first_layer", 0) <= spec.layer < (kw.get("last_layer") or float("inf"))
    if ran and not hit:
      raise ValueError(f"SteerSpec.layer={spec.layer}: the model has no block {site[0]!r}; "
                       "layer must be below the number of decoder blocks")
    return out

  return steered


def forward(model, params, tokens_BT, valid_BT, prompt_BT, sv=None, spec: SteerSpec = None,
            **kw):
  """`model`'s logits, steered by `sv` at `spec`'s positions of the prompt when `sv` is given
  (`prompt_BT` marks the prompt tokens), unsteered otherwise."""
  if sv is None:
    return model.apply({"params": params}, tokens_BT, valid_BT=valid_BT, **kw)
  mask = positions_mask(spec.positions, prompt_BT, valid_BT)
  return steer(model.apply, spec)({"params": params}, sv, tokens_BT, mask, valid_BT=valid_BT,
                                   **kw)
