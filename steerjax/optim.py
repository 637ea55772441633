"""Width-scaled (muP-style) optimizer for steering vectors.

Learning rates are given at a reference width `ref_width` and rescaled to the model width n:
factor `lr * sqrt(n / ref_width)`, direction `lr * sqrt(ref_width / n)` (method.md section 3).
Leaves get their rule from an ordered (regex, label) list that must cover every leaf.
Defaults follow the authors' runs: Adam, weight decay 0, linear decay to 0, no warmup,
gradient clipping at 1.0 on the direction only (per concept when SVs are stacked); an SV's
learned `bias` (RePS as AxBench trains it) goes with the direction: its rate, and one
gradient norm over both, as AxBench clips all intervention parameters together.
"""

from __future__ import annotations

import math
import re
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import optax

SV_RULES = (("^factor$", "factor"), ("^direction$", "direction"), ("^bias$", "direction"))


def label_tree(tree, rules: Sequence = SV_RULES):
  """Label each leaf by the first matching (regex, label) rule; an uncovered leaf is an error."""
  def label(path, _):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    for pattern, value in rules:
      if re.search(pattern, name):
        return value
    raise ValueError(f"SV leaf {name!r} is covered by no optimizer rule {[r[0] for r in rules]}")
  return jax.tree_util.tree_map_with_path(label, tree)


def scaled_learning_rates(width: int, lr_factor: float, lr_direction: float,
                          ref_width: Optional[int] = None):
  """(factor lr, direction lr) at `width` for rates tuned at `ref_width` (default: width)."""
  ref = width if not ref_width else ref_width
  return lr_factor * math.sqrt(width / ref), lr_direction * math.sqrt(ref / width)


def clip_rows(max_norm: float) -> optax.GradientTransformation:
  """Clip the gradient norm of each SV separately ([D] as one SV, [C, D] as C SVs), so a
  stacked run gives every concept the update its own run would get. Several leaves (a
  direction and its bias) share one norm per SV, their rows those of the widest leaf."""
  def update(updates, state, params=None):
    leaves = jax.tree.leaves(updates)
    if len(leaves) == 1:
      def clip(g):
        norm = jnp.sqrt(jnp.sum(jnp.square(g), axis=-1, keepdims=True))
        return g * jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-30))
      return jax.tree.map(clip, updates), state
    rows = max(leaves, key=jnp.ndim).shape[:-1]
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(g).reshape(rows + (-1,)), axis=-1) for g in leaves))
    scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-30))
    return jax.tree.map(lambda g: g * scale.reshape(rows + (1,) * (g.ndim - len(rows))),
                        updates), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def _schedule(lr: float, total_steps: int, schedule: str, warmup_steps: int):
  if schedule == "constant":
    decay = optax.constant_schedule(lr)
  elif schedule == "linear":
    decay = optax.linear_schedule(lr, 0.0, max(total_steps - warmup_steps, 1))
  else:
    raise ValueError(f"optim.schedule={schedule!r}; use 'linear' or 'constant'")
  if warmup_steps <= 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps), decay],
                              [warmup_steps])


def _group(lr, total_steps, schedule, warmup_steps, clip, b1, b2, eps, weight_decay):
  parts = [clip_rows(clip)] if clip and clip > 0 else []
  parts.append(optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
  if weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay))
  parts.append(optax.scale_by_learning_rate(_schedule(lr, total_steps, schedule, warmup_steps)))
  return optax.chain(*parts)


def make_optimizer(width: int, *, lr_factor: float, lr_direction: float, total_steps: int,
                   ref_width: Optional[int] = None, train_factor: bool = True,
                   clip_direction: float = 1.0, clip_factor: float = 0.0,
                   schedule: str = "linear", warmup_steps: int = 0, weight_decay: float = 0.0,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
  """optax.multi_transform over the SV's factor and direction leaves.

  With `train_factor=False` the factor is frozen (fixed-factor and factor-sampling baselines).
  """
  lr_f, lr_d = scaled_learning_rates(width, lr_factor, lr_direction, ref_width)
  common = dict(total_steps=total_steps, schedule=schedule, warmup_steps=warmup_steps,
                b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  transforms = {
      "factor": _group(lr_f, clip=clip_factor, **common) if train_factor else optax.set_to_zero(),
      "direction": _group(lr_d, clip=clip_direction, **common),
  }
  return optax.multi_transform(transforms, label_tree), {"factor": lr_f, "direction": lr_d}
