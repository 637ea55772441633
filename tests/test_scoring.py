"""Scoring: harmonic mean, factor selection on ids 0..4 / report on 5..9, aggregation."""

import numpy as np
import pytest

from steerjax.eval.scoring import (aggregate, harmonic_mean, record_score, results_table,
                                   score_grid, score_joint, select_factor)


def rec(concept_id, instruction_id, factor, c, i, f):
  return dict(concept_id=concept_id, instruction_id=instruction_id, factor=factor,
              concept_score=c, instruction_score=i, fluency_score=f)


def uniform_records(concept_id, factor, ids, rating):
  """Records whose three ratings all equal `rating`, so each scores exactly `rating`."""
  return [rec(concept_id, i, factor, rating, rating, rating) for i in ids]


# ---- harmonic mean ----

def test_harmonic_mean_known_values():
  assert harmonic_mean(2, 2, 2) == 2.0
  assert harmonic_mean(1, 1, 1) == 1.0
  assert harmonic_mean(2, 2, 1) == pytest.approx(3 / (0.5 + 0.5 + 1))   # 1.5
  assert harmonic_mean(2, 1, 1) == pytest.approx(3 / (0.5 + 1 + 1))     # 1.2
  assert isinstance(harmonic_mean(2, 1, 1), float)


@pytest.mark.parametrize("ratings", [(0, 2, 2), (2, 0, 2), (2, 2, 0), (0, 0, 0)])
def test_harmonic_mean_any_zero_is_zero(ratings):
  assert harmonic_mean(*ratings) == 0.0


def test_harmonic_mean_is_symmetric_and_bounded():
  for c in range(3):
    for i in range(3):
      for f in range(3):
        value = harmonic_mean(c, i, f)
        assert value == pytest.approx(harmonic_mean(f, c, i))
        assert 0.0 <= value <= 2.0
        if min(c, i, f) > 0:
          assert min(c, i, f) <= value <= max(c, i, f)


def test_harmonic_mean_vectorised_matches_scalar():
  c = np.array([2, 0, 1, 2, 1])
  i = np.array([2, 2, 1, 1, 2])
  f = np.array([2, 2, 0, 1, 1])
  out = harmonic_mean(c, i, f)
  assert isinstance(out, np.ndarray) and out.shape == (5,)
  np.testing.assert_allclose(out, [harmonic_mean(*t) for t in zip(c, i, f)])
  np.testing.assert_allclose(out, [2.0, 0.0, 0.0, 1.2, 1.2])


@pytest.mark.parametrize("bad", [(3, 2, 2), (-1, 2, 2), (float("nan"), 1, 1)])
def test_harmonic_mean_refuses_out_of_range(bad):
  with pytest.raises(ValueError):
    harmonic_mean(*bad)


# ---- factor selection on ids 0..4, report on 5..9 ----

def grid_with_known_answer():
  """Concept 'a': factor 4 best on ids 0..4, factor 8 would be best on ids 5..9."""
  records = []
  records += uniform_records("a", 2.0, range(0, 5), 0) + uniform_records("a", 2.0, range(5, 10), 0)
  records += uniform_records("a", 4.0, range(0, 5), 2) + uniform_records("a", 4.0, range(5, 10), 1)
  records += uniform_records("a", 8.0, range(0, 5), 1) + uniform_records("a", 8.0, range(5, 10), 2)
  return records


def test_selection_uses_ids_0_to_4_and_reports_5_to_9():
  records = grid_with_known_answer()
  assert select_factor(records) == {"a": 4.0}
  assert score_grid(records) == {"a": 1.0}     # factor 4 on ids 5..9, not factor 8's 2.0


def test_selection_mixed_ratings_per_concept():
  # Concept 'b': factor 1 scores 1.5 on id 0 and 0 elsewhere; factor 3 scores 1.2 on ids 0,1.
  records = [rec("b", 0, 1.0, 2, 2, 1)] + uniform_records("b", 1.0, range(1, 10), 0)
  records += [rec("b", 0, 3.0, 2, 1, 1), rec("b", 1, 3.0, 1, 2, 1)]
  records += uniform_records("b", 3.0, range(2, 5), 0)
  records += [rec("b", 5, 3.0, 2, 2, 2), rec("b", 6, 3.0, 2, 2, 1)]
  records += uniform_records("b", 3.0, range(7, 10), 0)
  # Selection means: factor 1 = 1.5/5 = 0.3, factor 3 = 2.4/5 = 0.48 -> factor 3.
  assert select_factor(records) == {"b": 3.0}
  assert score_grid(records)["b"] == pytest.approx((2.0 + 1.5) / 5)


def test_selection_tie_goes_to_smallest_factor():
  records = []
  for factor in (16.0, 0.5, 4.0):   # unsorted on purpose
    records += uniform_records("t", factor, range(0, 5), 1)
  records += uniform_records("t", 16.0, range(5, 10), 2)
  records += uniform_records("t", 0.5, range(5, 10), 0)
  records += uniform_records("t", 4.0, range(5, 10), 1)
  assert select_factor(records) == {"t": 0.5}
  assert score_grid(records) == {"t": 0.0}


def test_selection_is_per_concept_and_order_free():
  records = grid_with_known_answer()
  records += uniform_records("z", 2.0, range(10), 2) + uniform_records("z", 4.0, range(10), 1)
  shuffled = [records[i] for i in np.random.default_rng(1).permutation(len(records))]
  assert select_factor(shuffled) == {"a": 4.0, "z": 2.0}
  assert score_grid(shuffled) == {"a": 1.0, "z": 2.0}


def test_grid_refuses_duplicates_missing_splits_and_uneven_coverage():
  records = grid_with_known_answer()
  with pytest.raises(ValueError, match="duplicate"):
    score_grid(records + [records[0]])
  with pytest.raises(ValueError, match="evaluation ids"):
    score_grid([r for r in records if r["instruction_id"] < 5])
  with pytest.raises(ValueError, match="selection ids"):
    score_grid([r for r in records if r["instruction_id"] >= 5])
  with pytest.raises(ValueError, match="different instruction ids"):
    score_grid([r for r in records if not (r["factor"] == 8.0 and r["instruction_id"] == 9)])
  with pytest.raises(ValueError, match="need a factor"):
    score_grid(uniform_records("j", None, range(10), 2))


# ---- joint ----

def test_score_joint_means_all_ids():
  records = uniform_records("x", None, range(0, 5), 2) + uniform_records("x", None, range(5, 10), 1)
  records += [rec("y", i, None, 2, 2, 1) for i in range(10)]
  scores = score_joint(records)
  assert scores["x"] == pytest.approx(1.5)
  assert scores["y"] == pytest.approx(1.5)
  assert record_score(records[0]) == 2.0


def test_score_joint_refuses_duplicates_and_several_factors():
  records = uniform_records("x", None, range(10), 2)
  with pytest.raises(ValueError, match="duplicate"):
    score_joint(records + [records[3]])
  with pytest.raises(ValueError, match="one factor"):
    score_joint(records + uniform_records("x", 2.0, range(10), 1))


# ---- aggregation ----

def test_aggregate_known_data():
  out = aggregate({"a": 0.0, "b": 1.0, "c": 2.0, "d": 1.0})
  assert out["n"] == 4
  assert out["mean"] == pytest.approx(1.0)
  assert out["std"] == pytest.approx(np.sqrt(0.5))
  assert out["ci_low"] < out["mean"] < out["ci_high"]
  assert 0.0 <= out["ci_low"] and out["ci_high"] <= 2.0


def test_aggregate_bootstrap_matches_direct_resampling():
  values = np.array([0.2, 0.4, 1.1, 1.9, 0.0, 1.3, 0.7])
  out = aggregate(list(values), n_boot=500, seed=7)
  rng = np.random.default_rng(7)
  means = values[rng.integers(0, len(values), size=(500, len(values)))].mean(axis=1)
  assert out["ci_low"] == pytest.approx(np.percentile(means, 2.5))
  assert out["ci_high"] == pytest.approx(np.percentile(means, 97.5))


def test_aggregate_is_seeded_and_degenerate_cases():
  values = list(np.linspace(0, 2, 30))
  assert aggregate(values, seed=3) == aggregate(values, seed=3)
  assert aggregate(values, seed=3)["ci_low"] != aggregate(values, seed=4)["ci_low"]
  constant = aggregate([1.2] * 5)
  assert constant["ci_low"] == pytest.approx(1.2) and constant["ci_high"] == pytest.approx(1.2)
  assert constant["std"] == 0.0
  single = aggregate([0.7])
  assert (single["mean"], single["ci_low"], single["ci_high"], single["n"]) == (0.7, 0.7, 0.7, 1)
  with pytest.raises(ValueError):
    aggregate([])


def test_aggregate_ci_narrows_with_more_concepts():
  rng = np.random.default_rng(0)
  few = aggregate(rng.uniform(0, 2, 10))
  many = aggregate(rng.uniform(0, 2, 1000))
  assert many["ci_high"] - many["ci_low"] < few["ci_high"] - few["ci_low"]
  assert many["ci_low"] < 1.0 < many["ci_high"]


# ---- table ----

def test_results_table():
  rows = [dict(method="prosv", **aggregate([1.0, 2.0])), dict(method="a|b", mean=0.5, note=None)]
  table = results_table(rows, columns=["method", "mean", "n", "note"])
  lines = table.splitlines()
  assert lines[0] == "| method | mean | n | note |"
  assert lines[1] == "|---|---|---|---|"
  assert lines[2] == "| prosv | 1.500 | 2 |  |"
  assert lines[3] == "| a\\|b | 0.500 |  |  |"
  default = results_table([{"x": 1}, {"y": 0.25}], digits=2).splitlines()
  assert default[0] == "| x | y |" and default[3] == "|  | 0.25 |"


# ---- oracle and random-split scores ----

def _rated(cid, factor, iid, score):
  """A record whose harmonic mean is `score` (0, 1, 1.5 or 2)."""
  ratings = {0: (0, 2, 2), 1: (1, 1, 1), 1.5: (1, 2, 2), 2: (2, 2, 2)}[score]
  return dict(concept_id=cid, factor=factor, instruction_id=iid, concept="c",
              **dict(zip(("concept_score", "instruction_score", "fluency_score"), ratings)))


def test_oracle_and_random_splits_on_known_ratings():
  from steerjax.eval.scoring import oracle_scores, score_grid, split_scores
  # factor 1: 2 on ids 0..4 and 0 on 5..9; factor 2: 1.5 everywhere.
  records = ([_rated(0, 1.0, i, 2 if i < 5 else 0) for i in range(10)]
             + [_rated(0, 2.0, i, 1.5) for i in range(10)])
  assert score_grid(records) == {0: 0.0}              # fixed split: picks 1, scores 0
  assert oracle_scores(records, grid=True) == {0: 1.5}
  # Over all 252 halvings: factor 1 wins the selection half only with >= 4 of ids 0..4
  # in it (1 + 25 halvings), then scores 0 or 0.4 on the other half; else factor 2: 1.5.
  expected = (1 * 0.0 + 25 * 0.4 + 226 * 1.5) / 252
  splits = split_scores(records, grid=True, n_splits=4000, seed=1)
  assert abs(splits.mean() - expected) < 0.02 and splits.std() > 0
  # Scores that do not depend on the instruction: every protocol agrees, with no spread.
  flat = [_rated(0, f, i, s) for f, s in ((1.0, 1), (2.0, 2)) for i in range(10)]
  assert score_grid(flat) == oracle_scores(flat, grid=True) == {0: 2.0}
  assert set(split_scores(flat, grid=True, n_splits=20).tolist()) == {2.0}
  joint = [_rated(0, None, i, 2 if i % 2 else 1) for i in range(10)]
  assert oracle_scores(joint, grid=False) == {0: 1.5}
  assert abs(split_scores(joint, grid=False, n_splits=4000).mean() - 1.5) < 0.02


def test_random_splits_are_drawn_per_sv():
  from steerjax.eval.scoring import concept_split_scores, split_scores
  # Two concepts with the same ratings: one shared halving would give them equal scores in
  # every split; the paper's per-SV halvings make them differ, with the same distribution.
  records = [_rated(c, f, i, s) for c in (0, 1)
             for f, s_of in ((1.0, lambda i: 2 if i < 5 else 0), (2.0, lambda i: 1.5))
             for i in range(10) for s in [s_of(i)]]
  per = concept_split_scores(records, grid=True, n_splits=600, seed=3)
  assert sorted(per) == [0, 1] and per[0].shape == (600,)
  assert np.mean(per[0] != per[1]) > 0.05
  expected = (1 * 0.0 + 25 * 0.4 + 226 * 1.5) / 252
  assert abs(per[0].mean() - expected) < 0.05 and abs(per[1].mean() - expected) < 0.05
  overall = split_scores(records, grid=True, n_splits=600, seed=3)
  np.testing.assert_allclose(overall, (per[0] + per[1]) / 2)
  # Independent halvings average out: the spread of the mean is about 1/sqrt(2) of one SV's.
  assert 0.6 < overall.std() / per[0].std() < 0.82
  joint = [_rated(c, None, i, 2 if i % 2 else 1) for c in (0, 1) for i in range(10)]
  per_joint = concept_split_scores(joint, grid=False, n_splits=200)
  assert np.mean(per_joint[0] != per_joint[1]) > 0.3
