"""Cost rows for `--plan`: what a job will train, generate, score and ask the judge, counted
from the config alone, and the FLOPs and wall-clock time that work takes on a named chip."""

from __future__ import annotations

import functools
import os
import struct
from typing import List, Optional, Tuple

from steerjax import losses

PLAN_COLUMNS = ("method", "svs", "steps_per_sv", "train_sequences", "train_tokens",
                "generations", "new_tokens", "scored_sequences", "judge_calls", "pflop")
TOTALS = ("svs", "train_sequences", "train_tokens", "generations", "prompt_tokens",
          "new_tokens", "scored_sequences", "scored_tokens", "judge_calls", "pflop")
# The instruction of one prompt, in tokens, beside its chat template's tokens (an estimate).
INSTRUCTION_TOKENS = 20
# Peak dense bf16 FLOP/s per chip, with the published source.
CHIPS = {
    "v5e": (197e12, "TPU v5e, cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16 per chip"),
    "v5p": (459e12, "TPU v5p, cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16 per chip"),
    "h100": (989e12, "H100 SXM, NVIDIA H100 Tensor Core GPU datasheet: 989 TFLOP/s bf16 "
                     "dense (1,979 with sparsity)"),
    "a100": (312e12, "A100, NVIDIA A100 Tensor Core GPU datasheet: 312 TFLOP/s bf16 dense "
                     "(624 with sparsity)"),
}


def method_cost(method, n_concepts: int, n_train: int, tokens_per_sequence: int,
                n_eval: int = 0, new_tokens: int = 0, judged: bool = True,
                prompt_tokens: int = 0) -> dict:
  """Expected work of one method over `n_concepts` concepts: SVs, steps, sequences and
  tokens through the model in training (upper bounds), the unsteered reference log-prob
  passes SimPO-style objectives run once per training sequence, generations (of
  `prompt_tokens` + `new_tokens` each) and judge calls."""
  row = {"method": method.name, "svs": 0, "steps_per_sv": 0, "train_sequences": 0,
         "train_tokens": 0, "scored_sequences": 0, "scored_tokens": 0}
  if method.trained:
    steps = (n_train // method.step.batch_size) * method.step.epochs
    if method.loop.max_steps:
      steps = min(steps, method.loop.max_steps)
    objective = losses.objective(method.step.objective)
    seqs = steps * method.step.batch_size * objective.passes
    row.update(svs=n_concepts, steps_per_sv=steps, train_sequences=n_concepts * seqs,
               train_tokens=n_concepts * seqs * tokens_per_sequence)
    if objective.needs_neutral:   # y_c and y of every example, unsteered, forward only
      row.update(scored_sequences=n_concepts * n_train * 2,
                 scored_tokens=n_concepts * n_train * 2 * tokens_per_sequence)
  gens = n_concepts * n_eval * len(method.grid or (None,))
  row.update(generations=gens, prompt_tokens=gens * prompt_tokens, new_tokens=gens * new_tokens,
             judge_calls=(3 * gens + (n_concepts if method.kind == "prompting" else 0))
             if judged else 0)
  return row


def total_row(rows: List[dict]) -> dict:
  return dict({k: sum(r.get(k, 0) for r in rows) for k in TOTALS}, method="total")


# ---------------------------------------------------------------------------- prompt length

@functools.lru_cache(maxsize=8)
def _template_tokens(path: str, data_root: str, thinking: bool) -> Optional[int]:
  """Tokens the chat template adds around one user instruction (BOS, turn markers, a
  default system prompt), from the tokenizer found locally; None when there is none."""
  from steerjax.models import LoadError, load_tokenizer
  try:
    tok = load_tokenizer(path, data_root or None, thinking, hub=False)
  except (LoadError, OSError, ValueError):
    return None
  text = "Write a short poem about the sea."
  return len(tok.chat_prompt(text)) - len(tok.encode(text))


def prompt_length(config) -> Tuple[int, str]:
  """(tokens of one chat prompt, how that was found): the chat template's own tokens,
  counted with the model's tokenizer when it is found locally (a path or the data root),
  plus INSTRUCTION_TOKENS for the instruction; else INSTRUCTION_TOKENS alone."""
  m = config.model
  path = m.tokenizer or m.path
  template = _template_tokens(path, config.data_root, bool(m.thinking))
  if template is None:
    return INSTRUCTION_TOKENS, (
        f"prompt: {INSTRUCTION_TOKENS} tokens, a fixed estimate: no local tokenizer for "
        f"{path!r} (set data_root or STEERJAX_DATA), so its chat template is not counted")
  return template + INSTRUCTION_TOKENS, (
      f"prompt: {template + INSTRUCTION_TOKENS} tokens = {template} of the chat template "
      f"({path}'s tokenizer) + {INSTRUCTION_TOKENS} for the instruction (an estimate)")


# ---------------------------------------------------------------------------- FLOPs and time

def model_shape(config):
  """The target model's ModelConfig without its weights: config.json or a llama2.c header
  found locally, else the preset whose name starts the hub id; None when neither."""
  from steerjax.models import LoadError, PRESETS
  from steerjax.models.config import ModelConfig
  from steerjax.models.loading import config_from_hf, resolve
  try:
    path = resolve(config.model.path, config.data_root or None, hub=False)
  except LoadError:
    path = None
  if path and os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json")):
    from transformers import AutoConfig
    return config_from_hf(AutoConfig.from_pretrained(path))
  if path and path.endswith(".bin"):
    with open(path, "rb") as f:
      dim, hidden, layers, heads, kv, vocab, seq = struct.unpack("7i", f.read(28))
    return ModelConfig(vocab_size=abs(vocab), dim=dim, n_layers=layers, n_heads=heads,
                       n_kv_heads=kv, head_dim=dim // heads, hidden_dim=hidden, max_seq_len=seq)
  name = config.model.path.split("/")[-1].lower()
  for key in sorted(PRESETS, key=len, reverse=True):
    if name.startswith(key):
      return PRESETS[key]
  return None


def _per_token(shape) -> Tuple[float, float, float]:
  """(matmul FLOPs of one token through one block's projections and MLP, attention FLOPs per
  token and context position in one block, head FLOPs per token)."""
  d, h, k, e = shape.dim, shape.n_heads, shape.n_kv_heads, shape.head_dim
  linear = 2 * d * (2 * h * e + 2 * k * e) + 2 * 3 * d * shape.hidden_dim
  return float(linear), float(4 * h * e), float(2 * d * shape.vocab_size)


def row_flops(row: dict, shape, layer: int) -> dict:
  """FLOPs of a plan row: `train` (forward through every block and the head, input gradients
  back to block `layer`, no prefix cache: an upper bound), `prefill` and `decode` of its
  generations (KV cache), `score` (forward-only passes). Sequence lengths are the row's
  means; attention is counted over the full T x T square, as it is computed."""
  linear, attn, head = _per_token(shape)
  n, back = shape.n_layers, shape.n_layers - layer

  def forward(seqs, tokens):   # `seqs` sequences of tokens / seqs tokens each
    t = tokens / seqs if seqs else 0
    return n * (tokens * linear + attn * tokens * t) + tokens * head

  out = {"train": 0.0, "prefill": 0.0, "decode": 0.0, "score": 0.0}
  seqs, tokens = row.get("train_sequences", 0), row.get("train_tokens", 0)
  if seqs:
    t = tokens / seqs
    out["train"] = forward(seqs, tokens) + back * (tokens * linear + 2 * attn * tokens * t) \
        + tokens * head
  gens = row.get("generations", 0)
  if gens:
    p, new = row.get("prompt_tokens", 0) / gens, row.get("new_tokens", 0) / gens
    out["prefill"] = gens * (n * (p * linear + attn * p * p) + head)
    out["decode"] = gens * (n * (new * linear + attn * (new * p + new * (new - 1) / 2))
                            + new * head)
  out["score"] = forward(row.get("scored_sequences", 0), row.get("scored_tokens", 0))
  return out


def compute_lines(config, rows: List[dict]) -> List[str]:
  """Adds `pflop` to every row and returns the lines on prompt length, FLOPs and the wall
  clock on `config.plan.chip` at `config.plan.mfu` (`decode_mfu` for token-by-token
  decoding, which is bound by memory bandwidth, not FLOPs)."""
  p = config.plan
  if p.chip not in CHIPS:
    raise ValueError(f"plan.chip={p.chip!r}; use one of {sorted(CHIPS)}")
  if not (0 < p.mfu <= 1 and 0 < p.decode_mfu <= 1):
    raise ValueError(f"plan.mfu={p.mfu} and plan.decode_mfu={p.decode_mfu} must be in (0, 1]")
  lines = [prompt_length(config)[1]]
  shape = model_shape(config)
  if shape is None:
    return lines + [f"compute: no local config.json and no preset for {config.model.path!r}, "
                    "so no FLOPs or time"]
  total = {"train": 0.0, "prefill": 0.0, "decode": 0.0, "score": 0.0}
  for row in rows:
    flops = row_flops(row, shape, config.steer.layer)
    row["pflop"] = sum(flops.values()) / 1e15
    for k, v in flops.items():
      total[k] += v
  peak, source = CHIPS[p.chip]
  dense = total["train"] + total["prefill"] + total["score"]
  seconds = dense / (peak * p.mfu) + total["decode"] / (peak * p.decode_mfu)
  from steerjax.eval.judge_cost import duration
  return lines + [
      "compute: " + ", ".join(f"{k} {v / 1e15:.3g} PFLOP" for k, v in total.items())
      + f" ({shape.n_layers} blocks, width {shape.dim}; training counted without the prefix "
      "cache, an upper bound)",
      f"time on one {p.chip} (plan.chip; {source}): about {duration(seconds)} at MFU "
      f"{p.mfu:g} (plan.mfu) and {p.decode_mfu:g} while decoding (plan.decode_mfu); the "
      "judge's time is apart"]
