"""Warnings for a run that has gone wrong without going non-finite: an SV that stopped
learning, or an edit that dwarfs the residual stream it is added to."""

from __future__ import annotations

import numpy as np


def residual_norm(model, params, spec, arrays, site_outputs) -> float:
  """Mean L2 norm of the block-`layer` output over the training tokens (64 examples at most),
  the scale an edit alpha*v is compared with."""
  pos = arrays["pos"]
  h = pos.get("h")
  if h is None:
    h = site_outputs(model, spec.layer, params, pos["tokens"][:64], pos["valid"][:64])
  valid = np.asarray(pos["valid"][:h.shape[0]])
  norms = np.linalg.norm(np.asarray(h[:64], np.float32), axis=-1)
  return float(norms[valid[:64]].mean())


# An edit this many times the residual stream's norm drowns the block output; gradients
# this many logged steps in a row at zero mean the SV no longer learns.
EDIT_WARN_RATIO = 100.0
STALL_WARN_LOGS = 3


class Health:
  """Warns once when the SV stops learning or its edit dwarfs the residual stream."""

  def __init__(self, residual: float, trains_factor: bool, tag: str, log):
    self.residual, self.trains_factor, self.tag, self.log = residual, trains_factor, tag, log
    self.stalled, self.warned = 0, set()

  def check(self, done: int, metrics: dict, sv):
    grads = metrics["grad_direction"] + (metrics["grad_factor"] if self.trains_factor else 0)
    self.stalled = self.stalled + 1 if grads == 0 else 0
    if self.stalled >= STALL_WARN_LOGS and "stall" not in self.warned:
      self.warned.add("stall")
      self.log(f"{self.tag}WARNING: zero gradients for {self.stalled} progress lines in a row "
               f"(step {done}): the SV has stopped learning. Lower optim.lr_direction / "
               "optim.lr_factor or sv.beta.")
    factor = np.abs(np.asarray(sv["factor"], np.float64))
    direction = np.linalg.norm(np.asarray(sv["direction"], np.float64), axis=-1)
    edit = float(np.max(factor * direction)) if factor.any() else float(np.max(direction))
    if self.residual > 0 and edit > EDIT_WARN_RATIO * self.residual and "edit" not in self.warned:
      self.warned.add("edit")
      self.log(f"{self.tag}WARNING: the edit |alpha|*||v|| = {edit:.3g} at step {done} is "
               f"{edit / self.residual:.3g}x the residual stream's norm ({self.residual:.3g}): "
               "the SV overwrites the block output. Lower optim.lr_direction / optim.lr_factor "
               "or sv.beta / sv.lam.")
