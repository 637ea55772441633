"""Turn judge ratings into per-concept and overall steering scores.

A record is a dict with `concept_id`, `instruction_id`, `factor` (None for jointly trained
SVs), `concept_score`, `instruction_score` and `fluency_score` (each in 0..2; AxBench's parser
reads fractional ratings such as 1.5 too).

One generation scores the harmonic mean of its three ratings (0 when any rating is 0).
Factor-grid methods pick, per concept, the factor with the best mean on instruction ids
0..4 and report that factor's mean on ids 5..9; ties go to the smallest factor.
Jointly trained SVs have no factor to pick and report the mean over all their ids.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from steerjax.eval.templates import MAX_RATING

RATINGS = ("concept_score", "instruction_score", "fluency_score")
SELECTION_IDS = tuple(range(0, 5))
EVAL_IDS = tuple(range(5, 10))
# Means closer than this count as a tie, so float summation order cannot decide the pick.
TIE_TOLERANCE = 1e-9


def rating_value(rating) -> Union[int, float]:
  """A judge rating as stored in a record: an int when whole, else a float (1.5 counts)."""
  value = float(rating)
  return int(value) if value == int(value) else value


def harmonic_mean(concept, instruction, fluency):
  """Harmonic mean of three 0..2 ratings, 0 where any is 0. Scalars or numpy arrays."""
  ratings = [np.asarray(r, dtype=float) for r in (concept, instruction, fluency)]
  for r in ratings:
    if np.any(np.isnan(r)) or np.any(r < 0) or np.any(r > MAX_RATING):
      raise ValueError(f"ratings must lie in 0..{MAX_RATING}, got {r.tolist()}")
  positive = (ratings[0] > 0) & (ratings[1] > 0) & (ratings[2] > 0)
  inverse_sum = sum(1.0 / np.where(positive, r, 1.0) for r in ratings)
  score = np.where(positive, 3.0 / inverse_sum, 0.0)
  return float(score) if score.ndim == 0 else score


def record_score(record: Mapping) -> float:
  """The harmonic-mean score of one judged generation."""
  return harmonic_mean(record["concept_score"], record["instruction_score"],
                       record["fluency_score"])


def _scores_by_concept(records: Iterable[Mapping]):
  """-> {concept_id: {factor: {instruction_id: score}}}; refuses duplicate generations."""
  table = defaultdict(lambda: defaultdict(dict))
  for r in records:
    cid, factor, iid = r["concept_id"], r["factor"], r["instruction_id"]
    if iid in table[cid][factor]:
      raise ValueError(f"duplicate record: concept {cid!r}, factor {factor!r}, "
                       f"instruction {iid!r}")
    table[cid][factor][iid] = record_score(r)
  return table


def _mean_over(scores: Mapping, ids: Sequence[int]) -> Optional[float]:
  """Mean of `scores[i]` over the ids present; None when none is present."""
  values = [scores[i] for i in ids if i in scores]
  return float(np.mean(values)) if values else None


def _check_same_ids(cid, by_factor: Mapping):
  """Every factor of a concept must be judged on the same instructions."""
  id_sets = {factor: frozenset(scores) for factor, scores in by_factor.items()}
  if len(set(id_sets.values())) > 1:
    detail = ", ".join(f"{f!r}: {sorted(ids)}" for f, ids in id_sets.items())
    raise ValueError(f"concept {cid!r}: factors cover different instruction ids ({detail})")


def select_factor(records: Iterable[Mapping],
                  selection_ids: Sequence[int] = SELECTION_IDS) -> dict:
  """-> {concept_id: factor} with the best mean on `selection_ids` (ties: smallest factor)."""
  chosen = {}
  for cid, by_factor in _scores_by_concept(records).items():
    if None in by_factor:
      raise ValueError(f"concept {cid!r}: grid records need a factor, got None")
    _check_same_ids(cid, by_factor)
    means = {f: _mean_over(scores, selection_ids) for f, scores in by_factor.items()}
    if any(m is None for m in means.values()):
      raise ValueError(f"concept {cid!r}: no records on selection ids {list(selection_ids)}")
    best = max(means.values())
    chosen[cid] = min(f for f, m in means.items() if m >= best - TIE_TOLERANCE)
  return chosen


def score_grid(records: Iterable[Mapping], selection_ids: Sequence[int] = SELECTION_IDS,
               eval_ids: Sequence[int] = EVAL_IDS) -> dict:
  """-> {concept_id: mean on `eval_ids` of the factor picked on `selection_ids`}."""
  records = list(records)
  chosen = select_factor(records, selection_ids)
  table = _scores_by_concept(records)
  scores = {}
  for cid, factor in chosen.items():
    mean = _mean_over(table[cid][factor], eval_ids)
    if mean is None:
      raise ValueError(f"concept {cid!r}: no records on evaluation ids {list(eval_ids)}")
    scores[cid] = mean
  return scores


def score_joint(records: Iterable[Mapping]) -> dict:
  """-> {concept_id: mean over all its instructions}, for SVs that need no factor pick."""
  scores = {}
  for cid, by_factor in _scores_by_concept(records).items():
    if len(by_factor) != 1:
      raise ValueError(f"concept {cid!r}: joint records should share one factor, got "
                       f"{sorted(map(repr, by_factor))}")
    (by_id,) = by_factor.values()
    scores[cid] = float(np.mean(list(by_id.values())))
  return scores


def aggregate(per_concept_scores: Union[Mapping, Sequence[float]], n_boot: int = 1000,
              seed: int = 0) -> dict:
  """Mean over concepts with a percentile-bootstrap 95% CI (resampling concepts).

  `std` is the population std (ddof=0) across concepts.
  """
  values = per_concept_scores.values() if isinstance(per_concept_scores, Mapping) \
      else per_concept_scores
  values = np.asarray(list(values), dtype=float)
  if values.size == 0:
    raise ValueError("aggregate needs at least one concept score")
  if np.any(np.isnan(values)):
    raise ValueError("per-concept scores contain NaN")
  rng = np.random.default_rng(seed)
  resampled = values[rng.integers(0, values.size, size=(n_boot, values.size))].mean(axis=1)
  ci_low, ci_high = np.percentile(resampled, [2.5, 97.5])
  return dict(mean=float(values.mean()), ci_low=float(ci_low), ci_high=float(ci_high),
              std=float(values.std()), n=int(values.size))


def score_method(name: str, records: Sequence[Mapping], grid: bool) -> list:
  """Per-concept rows of one method: the reported score (`overall`: grid methods, the
  factor picked on the selection ids scored on the eval ids; others, all ids) and the mean
  of each rating over the same records. `factor` is the picked one, else the record's
  `learned_factor` (None for untrained methods)."""
  records = list(records)
  if grid:
    chosen, overall = select_factor(records), score_grid(records)
    keep = [r for r in records if r["factor"] == chosen[r["concept_id"]]
            and r["instruction_id"] in EVAL_IDS]
  else:
    chosen, overall, keep = {}, score_joint(records), records
  rows = []
  for cid in overall:
    mine = [r for r in keep if r["concept_id"] == cid]
    rows.append({"method": name, "concept_id": cid, "concept": mine[0]["concept"],
                 "factor": chosen.get(cid, mine[0].get("learned_factor")), "n": len(mine),
                 **{k: float(np.mean([r[k] for r in mine])) for k in RATINGS},
                 "overall": overall[cid]})
  return rows


def oracle_scores(records: Iterable[Mapping], grid: bool) -> dict:
  """-> {concept_id: score} with the factor picked on every instruction and scored on the
  same ones (the best factor in hindsight); for jointly trained SVs, their plain mean."""
  records = list(records)
  if not grid:
    return score_joint(records)
  ids = sorted({r["instruction_id"] for r in records})
  return score_grid(records, ids, ids)


def concept_split_scores(records: Iterable[Mapping], grid: bool, n_splits: int = 10,
                         seed: int = 0) -> dict:
  """-> {concept_id: [n_splits] scores}: each concept's instructions halved at random
  `n_splits` times, every concept (every SV) drawing its own halvings, as the paper splits
  per SV. A grid method picks its factor on one half and is scored on the other; a jointly
  trained SV is scored on the other half alone."""
  by_concept = defaultdict(list)
  for r in records:
    by_concept[r["concept_id"]].append(r)
  rng = np.random.default_rng(seed)
  out = {}
  for cid in sorted(by_concept, key=repr):
    mine = by_concept[cid]
    ids = np.asarray(sorted({r["instruction_id"] for r in mine}))
    scores = []
    for _ in range(n_splits):
      order = rng.permutation(ids)
      select, held = order[:len(ids) // 2].tolist(), order[len(ids) // 2:].tolist()
      if grid:
        scores.append(score_grid(mine, select, held)[cid])
      else:
        scores.append(score_joint([r for r in mine if r["instruction_id"] in held])[cid])
    out[cid] = np.asarray(scores)
  return out


def split_scores(records: Iterable[Mapping], grid: bool, n_splits: int = 10,
                 seed: int = 0) -> np.ndarray:
  """The overall score (mean over concepts) under each of `n_splits` random halvings,
  drawn per concept (`concept_split_scores`)."""
  per_concept = concept_split_scores(records, grid, n_splits, seed)
  return np.mean(np.stack(list(per_concept.values())), axis=0)


def summarize(name: str, rows: Sequence[Mapping], records: Sequence[Mapping], grid: bool,
              n_splits: int = 10) -> dict:
  """One method's summary over its per-concept rows: mean overall score (the fixed 5/5
  split for grid methods) with a bootstrap 95% CI and the std across concepts, the oracle
  score, the mean and std over `n_splits` random 5/5 splits (the paper's "fair" score
  used 10), the mean of each rating, and the work it took."""
  agg = aggregate({r["concept_id"]: r["overall"] for r in rows})
  splits = split_scores(records, grid, n_splits)
  return {"method": name, "concepts": agg["n"], "overall": agg["mean"],
          "ci_low": agg["ci_low"], "ci_high": agg["ci_high"], "concept_std": agg["std"],
          "oracle": float(np.mean(list(oracle_scores(records, grid).values()))),
          "split_mean": float(splits.mean()), "split_std": float(splits.std()),
          **{k.replace("_score", ""): float(np.mean([r[k] for r in rows])) for k in RATINGS},
          "generations": len(records), "judge_calls": 3 * len(records)}


def _cell(value, digits: int) -> str:
  if value is None:
    return ""
  if isinstance(value, (float, np.floating)):
    return f"{value:.{digits}f}"
  return str(value).replace("|", "\\|")


def results_table(rows: Sequence[Mapping], columns: Optional[Sequence[str]] = None,
                  digits: int = 3) -> str:
  """A markdown table; columns default to the keys of all rows, in first-seen order."""
  if columns is None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
  lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
  for row in rows:
    lines.append("| " + " | ".join(_cell(row.get(c), digits) for c in columns) + " |")
  return "\n".join(lines)
