"""Training examples -> padded arrays and a deterministic batch order.

Sequences are right-padded to a multiple of 8: `prompt + response + pad`. Masks:
`valid` (real tokens), `prompt` (real prompt tokens), `response` (response tokens).
The batch order depends only on (seed, epoch, step), so a resumed run and a concept-batched
run see exactly the batches a fresh single-concept run sees.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np


@dataclasses.dataclass
class ConceptData:
  """Training pairs of one concept: prompts x, concept responses y_c, optional neutral y."""
  name: str
  prompts: list
  responses: list
  neutral: Optional[list] = None

  def __post_init__(self):
    if not self.prompts:
      raise ValueError(f"concept {self.name!r} has no training examples")
    if len(self.prompts) != len(self.responses):
      raise ValueError(f"concept {self.name!r}: {len(self.prompts)} prompts but "
                       f"{len(self.responses)} responses")
    if self.neutral is not None and len(self.neutral) != len(self.prompts):
      raise ValueError(f"concept {self.name!r}: {len(self.neutral)} neutral responses for "
                       f"{len(self.prompts)} prompts")


def pack(prompts: Sequence, responses: Sequence, pad_id: int, length: Optional[int] = None):
  """Right-padded arrays {tokens, valid, prompt, response} of shape [N, T]."""
  lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
  T = length or -(-max(lengths) // 8) * 8
  if max(lengths) > T:
    raise ValueError(f"an example has {max(lengths)} tokens, more than the packed length {T}")
  N = len(prompts)
  out = dict(tokens=np.full((N, T), pad_id, np.int32), valid=np.zeros((N, T), bool),
             prompt=np.zeros((N, T), bool), response=np.zeros((N, T), bool))
  for i, (p, r) in enumerate(zip(prompts, responses)):
    out["tokens"][i, :len(p) + len(r)] = list(p) + list(r)
    out["valid"][i, :len(p) + len(r)] = True
    out["prompt"][i, :len(p)] = True
    out["response"][i, len(p):len(p) + len(r)] = True
  return out


def response_window(seq: dict, width: int) -> dict:
  """Where a loss needs logits: for each example, the `width` positions whose next token is
  a response token. {at: int[N, width] positions, target: int[N, width] the tokens they
  predict, target_mask: bool[N, width]} (False past the response end)."""
  tokens, response = seq["tokens"], seq["response"]
  N, T = tokens.shape
  start = np.argmax(response, axis=1)
  target_pos = start[:, None] + np.arange(width)[None, :]
  inside = (target_pos < T) & (target_pos >= 1)
  target_pos = np.clip(target_pos, 1, T - 1)
  rows = np.arange(N)[:, None]
  return dict(at=(target_pos - 1).astype(np.int32),
              target=tokens[rows, target_pos].astype(np.int32),
              target_mask=inside & response[rows, target_pos])


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
  """Example indices of training step `step` (the last partial batch of an epoch is dropped)."""
  per_epoch = n // batch_size
  epoch, i = divmod(step, per_epoch)
  return epoch_order(n, seed, epoch)[i * batch_size:(i + 1) * batch_size]
