"""Utility as NLL per token of fixed texts with a method's SVs on (the demo's held-out
stories, the chat job's AlpacaEval reference answers)."""

from __future__ import annotations

import functools
from typing import Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from steerjax import losses
from steerjax.data.batching import pack
from steerjax.data.benchmark import concept_name
from steerjax.steering import forward


@functools.partial(jax.jit, static_argnames=("model", "spec"))
def _mean_nll(model, spec, params, sv, tokens, valid, prompt, response):
  logits = forward(model, params, tokens, valid, prompt, sv, spec)
  lp, n = losses.response_logprobs(logits, tokens, response)
  return -jnp.sum(lp) / jnp.sum(n)


def packed(ctx, prompts: Sequence[list], continuations: Sequence[list]) -> dict:
  """The texts as one batch of device arrays, made once per job."""
  key = ("nll_batch", tuple(map(tuple, prompts)), tuple(map(tuple, continuations)))
  if key not in ctx.memo:
    seq = pack(prompts, continuations, ctx.model.cfg.pad_id)
    ctx.memo[key] = {k: jnp.asarray(seq[k]) for k in ("tokens", "valid", "prompt", "response")}
  return ctx.memo[key]


def mean_nll(ctx, seq: dict, svs: Optional[Dict[str, dict]] = None, spec=None) -> float:
  """Mean NLL per token of the `packed` continuations with each SV on, averaged over the
  SVs; `svs=None` gives the unsteered model."""
  nll = lambda sv: float(_mean_nll(ctx.model, spec if sv is not None else None, ctx.params,
                                   sv, **seq))
  if svs is None:
    return nll(None)
  return float(np.mean([nll({k: jnp.asarray(v) for k, v in sv.items()})
                        for sv in svs.values()]))


def reported_svs(session, method, rows) -> Dict[str, dict]:
  """{concept file name: SV} of a trained method at the factors its rows report (learned,
  or picked from its grid)."""
  svs = session.saved_svs(method)
  factor = {r["concept"]: r["factor"] for r in rows if r["method"] == method.name}
  names = {concept_name(c): c.name for c in session.bench.concepts}
  return {c: dict(sv, factor=np.float32(factor[names[c]])) for c, sv in svs.items()}
