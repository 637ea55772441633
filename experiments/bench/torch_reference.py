"""Steering-vector training and steered generation the PyTorch way (the paper's setup).

A frozen `transformers` causal LM (e.g. Gemma2ForCausalLM with eager attention); a forward
hook on `model.model.layers[layer]` adds `alpha * v` to the block output at the masked
positions; `alpha` and `v` are fp32 `nn.Parameter`s trained by Adam with two parameter
groups, linear decay to 0, and gradient clipping on `v` only. Objectives: Lang (token-mean
cross-entropy over response tokens) and SimPO (with unsteered reference log-probs computed
once). Generation runs `model.generate` with the hook: a prompt-only SV (PrOSV) acts only in
the prefill call (sequence length > 1); a full-sequence SV (FSSV) acts on every call.

The benchmarks use this as the baseline that steerjax is compared against.
"""

from __future__ import annotations

import math
import re
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_POSITIONS = re.compile(r"^(?:(all|prompt|generation)|f(\d+)|l(\d+)|f(\d+)\+l(\d+))$")


def positions_mask(positions: str, prompt: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
  """bool [B, T]: where the SV acts. fN / lN count real prompt tokens from the first one,
  so left padding does not shift them; 'all' is every real token."""
  m = _POSITIONS.match(positions)
  if not m:
    raise ValueError(f"positions={positions!r}; use all, prompt, generation, fN, lN or fN+lM")
  named, f, l, f2, l2 = m.groups()
  prompt, valid = prompt.bool(), valid.bool()
  if named == "all":
    return valid
  if named == "prompt":
    return prompt
  if named == "generation":
    return valid & ~prompt
  first, last = int(f or f2 or 0), int(l or l2 or 0)
  rank = prompt.long().cumsum(1)
  n_prompt = rank[:, -1:]
  return prompt & ((rank <= first) | (rank > n_prompt - last))


class SteeringVector(nn.Module):
  """alpha (scalar) and v ([D]) in fp32, plus the mask the hook reads on the next call."""

  def __init__(self, factor0: float, direction0):
    super().__init__()
    self.factor = nn.Parameter(torch.tensor(float(factor0), dtype=torch.float32))
    self.direction = nn.Parameter(torch.tensor(np.array(direction0), dtype=torch.float32))
    self.mask: Optional[torch.Tensor] = None   # bool [B, T] of the next full-sequence call
    self.generating = False                    # inside model.generate: T == 1 is a decode step
    self.steer_decode = False                  # FSSV: also edit the decode steps
    self.active = True


class SteeringHook:
  """Forward hook on `model.model.layers[layer]` that adds alpha * v at the masked positions."""

  def __init__(self, model: nn.Module, layer: int, sv: SteeringVector):
    self.sv = sv
    self.handle = model.model.layers[layer].register_forward_hook(self)

  def __call__(self, module, args, output):
    sv = self.sv
    h = output[0] if isinstance(output, tuple) else output
    if not sv.active:
      return output
    delta = (sv.factor * sv.direction).to(h.dtype)
    if sv.generating and h.shape[1] == 1:
      if not sv.steer_decode:     # PrOSV: decode steps run unsteered
        return output
      new = h + delta
    else:
      new = torch.where(sv.mask[..., None], h + delta, h)
    return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

  def remove(self):
    self.handle.remove()


# ---------------------------------------------------------------------------- objectives

def response_logprobs(logits: torch.Tensor, tokens: torch.Tensor, response: torch.Tensor):
  """(summed log p of response tokens [B], response token count [B])."""
  logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
  token_lp = logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
  mask = response[:, 1:].float()
  return (token_lp * mask).sum(1), mask.sum(1)


def lang_loss(lp, n):
  """Token-mean cross-entropy over all response tokens of the batch."""
  return -lp.sum() / n.sum().clamp(min=1.0)


def simpo_loss(pos, neg, ref_pos, ref_neg):
  """-log sigmoid((b / |y_c|) log p(y_c|x) - (1 / |y|) log p(y|x)), b = max(ref gap, 1)."""
  b = torch.clamp(ref_neg - ref_pos, min=1.0)
  d = b * pos[0] / pos[1].clamp(min=1.0) - neg[0] / neg[1].clamp(min=1.0)
  return -F.logsigmoid(d).mean()


# ---------------------------------------------------------------------------- training

def to_torch(seq: Dict) -> Dict[str, torch.Tensor]:
  """Packed numpy arrays {tokens, valid, prompt, response, ...} -> torch tensors."""
  out = {}
  for k, v in seq.items():
    t = torch.as_tensor(v)
    out[k] = t.long() if t.dtype in (torch.int32, torch.int64) else t
  return out


class TorchTrainer:
  """One SV trained on a frozen model, the way the authors' PyTorch code does it."""

  def __init__(self, model: nn.Module, layer: int, positions: str, objective: str,
               factor0: float, direction0, lr_factor: float, lr_direction: float,
               total_steps: int, clip_direction: float = 1.0):
    if objective not in ("lang", "simpo"):
      raise ValueError(f"objective={objective!r}; the reference implements 'lang' and 'simpo'")
    self.model, self.positions, self.objective = model, positions, objective
    self.sv = SteeringVector(factor0, direction0)
    self.hook = SteeringHook(model, layer, self.sv)
    self.clip = clip_direction
    self.opt = torch.optim.Adam([{"params": [self.sv.factor], "lr": lr_factor},
                                 {"params": [self.sv.direction], "lr": lr_direction}],
                                betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    total = max(int(total_steps), 1)
    self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: max(0.0, 1.0 - s / total))

  def _logprobs(self, seq):
    self.sv.mask = positions_mask(self.positions, seq["prompt"], seq["valid"])
    logits = self.model(input_ids=seq["tokens"], attention_mask=seq["valid"].long(),
                        use_cache=False).logits
    return response_logprobs(logits, seq["tokens"], seq["response"])

  @torch.no_grad()
  def reference_logprobs(self, seq, chunk: int = 64) -> torch.Tensor:
    """Unsteered summed response log-probs, computed once before training (SimPO's p_0)."""
    self.sv.active = False
    try:
      parts = []
      for i in range(0, seq["tokens"].shape[0], chunk):
        part = {k: v[i:i + chunk] for k, v in seq.items()}
        parts.append(self._logprobs(part)[0])
      return torch.cat(parts)
    finally:
      self.sv.active = True

  def loss(self, batch) -> torch.Tensor:
    pos = self._logprobs(batch["pos"])
    if self.objective == "lang":
      return lang_loss(*pos)
    neg = self._logprobs(batch["neg"])
    return simpo_loss(pos, neg, batch["pos"]["ref"], batch["neg"]["ref"])

  def step(self, batch) -> float:
    """One optimizer step on `batch` ({"pos": seq, "neg": seq}); returns the loss."""
    self.opt.zero_grad(set_to_none=True)
    loss = self.loss(batch)
    loss.backward()
    if self.clip:
      torch.nn.utils.clip_grad_norm_([self.sv.direction], self.clip)
    self.opt.step()
    self.sched.step()
    return float(loss.detach())

  def close(self):
    self.hook.remove()


def init_like_steerjax(width: int, beta: float, lam: float, seed: int = 0):
  """(alpha0, v0) by the paper's rule: alpha0 = beta sqrt(n), v0 ~ N(0, lam / n)."""
  gen = torch.Generator().manual_seed(seed)
  return beta * math.sqrt(width), torch.randn(width, generator=gen) * math.sqrt(lam / width)


# ---------------------------------------------------------------------------- generation

@torch.no_grad()
def generate(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             max_new_tokens: int, sv: Optional[SteeringVector] = None, positions: str = "f2+l2",
             pad_id: int = 0) -> torch.Tensor:
  """Greedy `model.generate` of exactly `max_new_tokens` tokens on left-padded prompts,
  steered by `sv` (already hooked into the model) when given; returns the new tokens."""
  if sv is not None:
    valid = attention_mask.bool()
    sv.mask = positions_mask(positions, valid, valid)
    sv.steer_decode = positions in ("all", "generation")
    sv.active = sv.generating = True
  try:
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                         max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=pad_id)
  finally:
    if sv is not None:
      sv.active = sv.generating = False
  return out[:, input_ids.shape[1]:]


def left_pad(prompts, pad_id: int = 0):
  """(input_ids, attention_mask) left-padded to the longest prompt."""
  longest = max(len(p) for p in prompts)
  ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
  mask = torch.zeros((len(prompts), longest), dtype=torch.long)
  for i, p in enumerate(prompts):
    ids[i, longest - len(p):] = torch.as_tensor(p)
    mask[i, longest - len(p):] = 1
  return ids, mask
