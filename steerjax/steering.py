"""Steering vectors and the `steer` transform.

An SV is the pytree `{"factor": alpha, "direction": v}`: alpha a scalar and v a `[D]` vector,
or stacked as `[C]` and `[C, D]` for C concepts trained together (each example then names
its concept through `concept_ids`). `steer(apply_fn, spec)` returns a pure function that runs
the model with the SV applied at the output of block `spec.layer`, at the positions in the
edit mask, by intercepting that block's residual-stream site; no model code changes.

Ops (method.md section 1): add `h + a v`; clamp `h + a v - u u^T h`; null `h - relu(h.u) u`,
with `u = v / ||v||`.
"""

from __future__ import annotations

import dataclasses
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from steerjax.models.decoder import SITE_METHOD, block_name

_POSITIONS = re.compile(r"^(?:(all|all-bos|prompt|generation)|f(\d+)|l(\d+)|f(\d+)\+l(\d+))$")


@dataclasses.dataclass(frozen=True)
class SteerSpec:
  layer: int                 # 0-based; the output of decoder block `layer` (HF model.layers[layer])
  positions: str = "f2+l2"   # all | all-bos | prompt | generation | fN | lN | fN+lM
  op: str = "add"            # add | clamp | null

  def __post_init__(self):
    if not isinstance(self.layer, int) or self.layer < 0:
      raise ValueError(f"SteerSpec.layer={self.layer!r} must be a block index >= 0")
    if self.op not in OPS:
      raise ValueError(f"SteerSpec.op={self.op!r}; expected one of {tuple(OPS)}")
    parse_positions(self.positions)

  @property
  def acts_on_generation(self) -> bool:
    """True when generated tokens are edited too (FSSV), so every decode step is steered."""
    return self.positions in ("all", "all-bos", "generation")


def parse_positions(positions: str):
  """'f2+l2' -> ('fl', 2, 2); 'all' -> ('all', 0, 0). Raises ValueError naming bad input."""
  m = _POSITIONS.match(positions) if isinstance(positions, str) else None
  if not m:
    raise ValueError(f"positions={positions!r} is not valid; use 'all', 'all-bos', 'prompt', "
                     "'generation', 'fN', 'lN' or 'fN+lM' (e.g. 'f2+l2')")
  named, f, l, f2, l2 = m.groups()
  if named:
    return named, 0, 0
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
  if kind == "prompt":
    return prompt
  if kind == "generation":
    return tokens & ~prompt
  n_prompt = rank[:, -1:]
  return prompt & ((rank <= first) | (rank > n_prompt - last))


def init_sv(rng, width: int, beta: float, lam: float, init: str = "normal", concepts=None):
  """muP-style init: alpha0 = beta * sqrt(width); v0 ~ N(0, lam / width) ("normal", the
  paper's rule) or uniform(-lam/sqrt(width), lam/sqrt(width)) ("uniform", the authors' code).
  `concepts=C` stacks C independent SVs."""
  shape = (width,) if concepts is None else (concepts, width)
  if init == "normal":
    v = jax.random.normal(rng, shape, jnp.float32) * math.sqrt(lam / width)
  elif init == "uniform":
    bound = lam / math.sqrt(width)
    v = jax.random.uniform(rng, shape, jnp.float32, -bound, bound)
  else:
    raise ValueError(f"direction init={init!r}; use 'normal' (paper) or 'uniform' (authors' code)")
  factor = jnp.full(shape[:-1], beta * math.sqrt(width), jnp.float32)
  return {"factor": factor, "direction": v}


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


# name -> op(h [B, T, D], factor [B, 1, 1], v [B, 1, D]) -> edited h, all float32
OPS = {"add": add_op, "clamp": clamp_op, "null": null_op}


def edit(h_BTD, sv, mask_BT, op: str = "add", concept_ids=None):
  """Apply the op at the masked positions; elsewhere h is returned bit for bit."""
  factor, v = select(sv, concept_ids)
  if v.ndim == 1:
    factor, v = factor[None], v[None]
  h = h_BTD.astype(jnp.float32)
  v = v[:, None, :].astype(jnp.float32)                       # [B or 1, 1, D]
  factor = jnp.reshape(factor, (-1, 1, 1)).astype(jnp.float32)
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
