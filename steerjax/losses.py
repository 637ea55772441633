"""Objectives on response tokens (method.md section 4).

All take per-example summed response log-probs `lp [B]` and response token counts `n [B]`,
and a concept index per example `group [B]` with `groups` concepts in the batch. Each
concept's loss is averaged over its own examples and the concept losses are summed, so C
concepts stacked in one step get the gradients of C separate runs.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp


def masked_sum(token_lp_BR, mask_BR):
  """(summed log p of the masked tokens [B], their count [B])."""
  mask = mask_BR.astype(jnp.float32)
  return jnp.sum(token_lp_BR * mask, axis=1), jnp.sum(mask, axis=1)


def response_logprobs(logits_BTV, tokens_BT, response_BT):
  """(summed log p of response tokens [B], response token count [B]) from full logits.

  Position t predicts token t+1, so the target mask is the response mask shifted left."""
  logp = jax.nn.log_softmax(logits_BTV[:, :-1].astype(jnp.float32), axis=-1)
  token_lp = jnp.take_along_axis(logp, tokens_BT[:, 1:, None], axis=-1)[..., 0]
  return masked_sum(token_lp, response_BT[:, 1:])


def _group_sum(x_B, group_B, groups: int):
  return jax.ops.segment_sum(x_B, group_B, num_segments=groups)


def lang(lp_B, n_B, group_B, groups: int):
  """Token-mean cross-entropy of y_c per concept, summed over concepts."""
  nll = _group_sum(-lp_B, group_B, groups)
  count = _group_sum(n_B, group_B, groups)
  return jnp.sum(nll / jnp.maximum(count, 1.0))


def _per_concept_mean(loss_B, group_B, groups: int):
  total = _group_sum(loss_B, group_B, groups)
  count = _group_sum(jnp.ones_like(loss_B), group_B, groups)
  return jnp.sum(total / jnp.maximum(count, 1.0))


def simpo_margin(lp_win, n_win, lp_lose, n_lose, ref_win, ref_lose):
  """d = (b / |win|) log p(win) - (1 / |lose|) log p(lose), b = max(ref_lose - ref_win, 1);
  log-probs summed over response tokens; `ref_*` are the unsteered model's sums."""
  b = jnp.maximum(ref_lose - ref_win, 1.0)
  return b * lp_win / jnp.maximum(n_win, 1.0) - lp_lose / jnp.maximum(n_lose, 1.0)


def simpo(pos, neg, ref_pos, ref_neg, group_B, groups: int):
  """SimPO (beta 1, gamma 0): prefer y_c over the neutral y under the steered model.
  `pos`, `neg` are (lp [B], n [B]) pairs."""
  d = simpo_margin(pos[0], pos[1], neg[0], neg[1], ref_pos, ref_neg)
  return _per_concept_mean(-jax.nn.log_sigmoid(d), group_B, groups)


def reps(pos, neg, null_pos, null_neg, ref_pos, ref_neg, group_B, groups: int):
  """RePS: SimPO for steering plus the mirrored term under NullInv (prefer y over y_c)."""
  steer_term = simpo(pos, neg, ref_pos, ref_neg, group_B, groups)
  d = simpo_margin(null_neg[0], null_neg[1], null_pos[0], null_pos[1], ref_neg, ref_pos)
  return steer_term + _per_concept_mean(-jax.nn.log_sigmoid(d), group_B, groups)


# --------------------------------------------------------------------------- the registry

@dataclasses.dataclass(frozen=True)
class Objective:
  """A training objective. `loss(logprob, batch, group, groups)` gets `logprob(name, op=None)
  -> (lp [B], n [B])`, the steered log-probs summed over the response tokens of the batch's
  `name` sequences ("pos" = y_c, "neg" = the neutral y) and their count, under the spec's
  op or `op`; `batch[name]["ref"]`, the unsteered sums (when `needs_neutral`); and
  `batch[name]["length"]`, each sequence's token count, prompt included."""
  loss: Callable
  needs_neutral: bool = False   # trains on (x, y_c, y) triples; SimPO-style reference log-probs
  passes: int = 1               # sequences run forward and backward per example and step
  uses_null_op: bool = False    # also runs the SV under NullInv (RePS)
  independent_factors: bool = False   # factor_mode=sampled draws y's factor apart from y_c's


def _lang(logprob, batch, group, groups):
  return lang(*logprob("pos"), group, groups)


def _simpo(logprob, batch, group, groups):
  return simpo(logprob("pos"), logprob("neg"), batch["pos"]["ref"], batch["neg"]["ref"],
               group, groups)


def _reps(logprob, batch, group, groups):
  return reps(logprob("pos"), logprob("neg"), logprob("pos", "null"), logprob("neg", "null"),
              batch["pos"]["ref"], batch["neg"]["ref"], group, groups)


def _reps_axbench(logprob, batch, group, groups):
  """RePS as AxBench trains it (its preference-vector code, `scaled_simpo`): log-probs
  normalised by the whole sequence's length (prompt included), y_c and y steered with
  independently drawn factors, and the steering and NullInv terms averaged."""
  pos, neg = batch["pos"], batch["neg"]
  steer_d = simpo_margin(logprob("pos")[0], pos["length"], logprob("neg")[0], neg["length"],
                         pos["ref"], neg["ref"])
  null_d = simpo_margin(logprob("neg", "null")[0], neg["length"], logprob("pos", "null")[0],
                        pos["length"], neg["ref"], pos["ref"])
  per_example = 0.5 * (-jax.nn.log_sigmoid(steer_d) - jax.nn.log_sigmoid(null_d))
  return _per_concept_mean(per_example, group, groups)


OBJECTIVES = {
    "lang": Objective(_lang),
    "simpo": Objective(_simpo, needs_neutral=True, passes=2),
    "reps": Objective(_reps, needs_neutral=True, passes=4, uses_null_op=True),
    "reps_axbench": Objective(_reps_axbench, needs_neutral=True, passes=4, uses_null_op=True,
                              independent_factors=True),
}


def objective(name: str) -> Objective:
  """The registered objective `name`; the error names the config field and the choices."""
  if name not in OBJECTIVES:
    raise ValueError(f"train.objective={name!r} is unknown; registered objectives: "
                     f"{sorted(OBJECTIVES)} (add one to steerjax.losses.OBJECTIVES)")
  return OBJECTIVES[name]
