"""Cost rows for `--plan`: what a job will train, generate and ask the judge, counted from
the config alone."""

from __future__ import annotations

from typing import List

from steerjax import losses

PLAN_COLUMNS = ("method", "svs", "steps_per_sv", "train_sequences", "train_tokens",
                "generations", "new_tokens", "judge_calls")
TOTALS = ("svs", "train_sequences", "train_tokens", "generations", "new_tokens", "judge_calls")


def method_cost(method, n_concepts: int, n_train: int, tokens_per_sequence: int,
                n_eval: int = 0, new_tokens: int = 0, judged: bool = True) -> dict:
  """Expected work of one method over `n_concepts` concepts: SVs, steps, sequences and
  tokens through the model in training (upper bounds), generations and judge calls."""
  row = {"method": method.name, "svs": 0, "steps_per_sv": 0, "train_sequences": 0,
         "train_tokens": 0}
  if method.trained:
    steps = (n_train // method.step.batch_size) * method.step.epochs
    if method.loop.max_steps:
      steps = min(steps, method.loop.max_steps)
    seqs = steps * method.step.batch_size * losses.objective(method.step.objective).passes
    row.update(svs=n_concepts, steps_per_sv=steps, train_sequences=n_concepts * seqs,
               train_tokens=n_concepts * seqs * tokens_per_sequence)
  gens = n_concepts * n_eval * len(method.grid or (None,))
  row.update(generations=gens, new_tokens=gens * new_tokens,
             judge_calls=(3 * gens + (n_concepts if method.kind == "prompting" else 0))
             if judged else 0)
  return row


def total_row(rows: List[dict]) -> dict:
  return dict({k: sum(r.get(k, 0) for r in rows) for k in TOTALS}, method="total")
