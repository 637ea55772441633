"""Training: optimizer rules, concept batching, the prefix cache, width transfer, NaN stops."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from steerjax.data.batching import ConceptData, batch_indices
from steerjax.models import Decoder, ModelConfig
from steerjax.optim import label_tree, make_optimizer, scaled_learning_rates
from steerjax.steering import SteerSpec
from steerjax.checkpoint import RunCheckpoints
from steerjax import losses
from steerjax.train import (NonFiniteError, _unsteered_logprobs, fresh_state, prepare_data,
                            train_concepts)
from synthetic import synthetic_concepts, train_configs

from experiments.paper.width_transfer import measure

CFG = ModelConfig(family="llama", vocab_size=64, dim=32, n_layers=3, n_heads=4, n_kv_heads=2,
                  head_dim=8, hidden_dim=64, max_seq_len=64, tie_embeddings=True, pad_id=0)
OPTS = dict(batch_size=4, epochs=2, beta=1.0, lam=4.0, lr_factor=0.5, lr_direction=0.05,
            log_every=100, checkpoint_every=1000)
quiet = lambda *a, **k: None


@pytest.fixture(scope="module")
def tiny():
  model = Decoder(CFG)
  params = model.init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"]
  return model, params


_concepts = synthetic_concepts


def test_optimizer_rules_cover_every_leaf():
  with pytest.raises(ValueError, match="'offset' is covered by no optimizer rule"):
    label_tree({"factor": 1.0, "direction": jnp.zeros(3), "offset": jnp.zeros(3)})
  # AxBench's learned bias trains with the direction
  assert label_tree({"factor": 1.0, "direction": jnp.zeros(3), "bias": 0.0})["bias"] == "direction"
  lr_f, lr_d = scaled_learning_rates(256, 10.0, 0.04, ref_width=64)
  assert lr_f == pytest.approx(20.0) and lr_d == pytest.approx(0.02)
  assert scaled_learning_rates(64, 10.0, 0.04) == (10.0, 0.04)


def test_clipping_is_on_direction_only_and_frozen_factor_stays():
  sv = {"factor": jnp.float32(3.0), "direction": jnp.ones(4)}
  grads = {"factor": jnp.float32(1e6), "direction": jnp.full(4, 1e6)}
  tx, _ = make_optimizer(4, lr_factor=1.0, lr_direction=1.0, total_steps=10, b1=0.0, b2=0.0,
                         eps=0.0)
  # With Adam's moments off, scale_by_adam returns g / |g|; probe the clip by a plain SGD chain.
  from steerjax.optim import clip_rows
  clipped, _ = clip_rows(1.0).update(grads["direction"], None)
  assert float(jnp.linalg.norm(clipped)) == pytest.approx(1.0)
  updates, _ = tx.update(grads, tx.init(sv), sv)
  assert float(updates["factor"]) == pytest.approx(-1.0)
  frozen, _ = make_optimizer(4, lr_factor=1.0, lr_direction=1.0, total_steps=10,
                             train_factor=False)
  updates, _ = frozen.update(grads, frozen.init(sv), sv)
  assert float(updates["factor"]) == 0.0 and float(jnp.abs(updates["direction"]).sum()) > 0


def test_batch_order_is_deterministic_and_covers_each_epoch():
  seen = np.concatenate([batch_indices(12, 4, seed=3, step=s) for s in range(3)])
  assert sorted(seen.tolist()) == list(range(12))
  assert (batch_indices(12, 4, 3, 4) == batch_indices(12, 4, 3, 4)).all()
  assert not (batch_indices(12, 4, 3, 0) == batch_indices(12, 4, 3, 3)).all()


@pytest.mark.parametrize("objective", ["lang", "simpo"])
def test_concept_batched_training_equals_separate_runs(tiny, tmp_path, objective):
  model, params = tiny
  concepts = _concepts()
  spec = SteerSpec(1, "f2+l2")
  opts = train_configs(**dict(OPTS, objective=objective))
  together = train_concepts(model, params, spec, concepts, [0, 1, 2], *opts,
                            str(tmp_path / "all"), log=quiet)
  for k, c in enumerate(concepts):
    alone = train_concepts(model, params, spec, [c], [k], *opts, str(tmp_path / c.name), log=quiet)
    for leaf in ("factor", "direction"):
      np.testing.assert_allclose(together[leaf][k], alone[leaf][0], rtol=1e-5, atol=1e-6)
  assert not np.allclose(together["direction"][0], together["direction"][1])


def _train_both_ways(model, params, spec, concepts, opts, tmp_path):
  out = {}
  for mode in ("on", "off"):
    out[mode] = train_concepts(model, params, spec, concepts, range(len(concepts)),
                               *train_configs(**dict(opts, prefix_cache=mode)),
                               str(tmp_path / mode), log=quiet)
  return out


@pytest.mark.parametrize("objective,positions,n_concepts", [
    ("lang", "f2+l2", 1), ("lang", "all", 2), ("simpo", "f2+l2", 2), ("simpo", "all", 1)])
def test_prefix_cache_gives_the_same_svs(tiny, tmp_path, objective, positions, n_concepts):
  model, params = tiny
  out = _train_both_ways(model, params, SteerSpec(1, positions), _concepts(n_concepts),
                         dict(OPTS, objective=objective), tmp_path)
  for leaf in ("factor", "direction"):
    np.testing.assert_allclose(out["on"][leaf], out["off"][leaf], rtol=1e-5, atol=1e-6)


def test_prefix_cache_on_stories260k(stories, tmp_path):
  model, params, tok = stories
  texts = ["Once upon a time there was a girl.", "The sun was hot and the sky was blue.",
           "Tom had a red ball in the park.", "Mia went to see her friend today."] * 2
  concepts = [ConceptData("dog", [tok.encode(t, bos=True) for t in texts],
                          [tok.encode(" The dog barked at the big dog.")] * 8,
                          [tok.encode(" They played all day.")] * 8)]
  for objective, positions in (("lang", "f2+l2"), ("simpo", "all")):
    out = _train_both_ways(model, params, SteerSpec(2, positions), concepts,
                           dict(OPTS, objective=objective, epochs=1),
                           tmp_path / objective)
    for leaf in ("factor", "direction"):
      np.testing.assert_allclose(out["on"][leaf], out["off"][leaf], rtol=1e-5, atol=1e-6)


def test_response_window_log_probs_equal_full_logits(tiny):
  """The loss's logits-at-the-response-window path gives the log-probs of full logits."""
  model, params = tiny
  data, _ = prepare_data(_concepts(2), "simpo", CFG.pad_id)
  for seq in data.values():
    assert seq["at"].shape[1] < seq["tokens"].shape[1]
    got = _unsteered_logprobs(model, params, seq["tokens"], seq["valid"], seq["at"],
                              seq["target"], seq["target_mask"])
    full = model.apply({"params": params}, seq["tokens"], valid_BT=seq["valid"])
    want, count = losses.response_logprobs(full, seq["tokens"], seq["response"])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_array_equal(seq["target_mask"].sum(1), count)


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tiny, tmp_path):
  model, params = tiny
  good = dict(OPTS, epochs=4, max_steps=3, checkpoint_every=2, log_every=1)
  train_concepts(model, params, SteerSpec(1, "all"), _concepts(1), [0], *train_configs(**good),
                 str(tmp_path), log=quiet)
  ckpts = RunCheckpoints(str(tmp_path / "checkpoints"))
  assert ckpts.latest_step() == 2
  # The door refuses a NaN rate; set it behind the door's back to make the run diverge.
  broken = train_configs(**dict(good, max_steps=0))
  object.__setattr__(broken[1], "lr_factor", float("nan"))
  with pytest.raises(NonFiniteError, match=r"last good checkpoint \(step 2\)"):
    train_concepts(model, params, SteerSpec(1, "all"), _concepts(1), [0], *broken,
                   str(tmp_path), log=quiet)
  assert ckpts.latest_step() == 2
  state, _ = ckpts.restore(fresh_state(*train_configs(**good), CFG.dim, [0], total_steps=8))
  assert int(state["step"]) == 2
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["sv"]))


def test_width_transfer_under_mup_scaling():
  widths = (64, 256, 1024)   # the full sweep 64..1024 is in docs/width_transfer.png
  scaled = measure(widths, scaled=True)
  equal = measure(widths, scaled=False)
  init = [r["init_rms"] for r in scaled]
  step = [r["step_rms"] for r in scaled]
  assert max(init) / min(init) < 2.0
  assert max(step) / min(step) < 2.0
  drift = [r["step_rms"] for r in equal]
  growth = drift[-1] / drift[0]
  assert 0.5 * 4.0 < growth < 2.0 * 4.0, f"equal learning rates should drift like sqrt(n): {drift}"


@pytest.mark.parametrize("objective,factor_mode", [("lang", "joint"), ("simpo", "joint"),
                                                   ("reps", "sampled"),
                                                   ("reps_axbench", "sampled")])
def test_gradient_accumulation_equals_the_big_batch(tiny, objective, factor_mode):
  """Micro-batches give the big batch's loss and gradients, Lang's token mean included
  (the synthetic prompts have unequal lengths)."""
  from steerjax import train
  model, params = tiny
  spec = SteerSpec(1, "f2+l2")
  concepts = _concepts(2)
  data, _ = prepare_data(concepts, objective, CFG.pad_id)
  step1, run = train_configs(**dict(OPTS, objective=objective, factor_mode=factor_mode))
  arrays = train.precompute(model, params, spec, data, step1, run, log=quiet)
  state = fresh_state(step1, run, CFG.dim, [0, 1], total_steps=4)
  idx = jnp.asarray([0, 3, 5, 6, 8, 9, 12, 15], jnp.int32)
  group = jnp.asarray([0, 0, 0, 0, 1, 1, 1, 1], jnp.int32)
  key = jax.random.key(3)
  want_loss, want = jax.value_and_grad(train.loss_fn)(state["sv"], model, spec, step1, 2,
                                                       params, arrays, idx, group, key)
  for k in (2, 4):
    step_k = dataclasses.replace(step1, grad_accum_steps=k)
    loss, got = train.accumulated_loss_and_grad(state["sv"], model, spec, step_k, 2, params,
                                                arrays, idx, group, key)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    for leaf in ("factor", "direction"):
      np.testing.assert_allclose(got[leaf], want[leaf], rtol=1e-5, atol=1e-7)
  assert float(jnp.abs(want["direction"]).max()) > 0


def test_accumulated_training_matches_and_the_authors_schedule_ends_at_half(tiny, tmp_path):
  from steerjax.train_config import schedule_length
  model, params = tiny
  spec, concepts = SteerSpec(1, "all"), _concepts(1)
  big = train_concepts(model, params, spec, concepts, [0], *train_configs(**OPTS),
                       str(tmp_path / "big"), log=quiet)
  small = train_concepts(model, params, spec, concepts, [0],
                         *train_configs(**dict(OPTS, grad_accum_steps=2)),
                         str(tmp_path / "small"), log=quiet)
  for leaf in ("factor", "direction"):
    np.testing.assert_allclose(small[leaf], big[leaf], rtol=1e-5, atol=1e-6)
  step, _ = train_configs(**dict(OPTS, grad_accum_steps=2, schedule_steps="micro_batches"))
  assert schedule_length(step, 4) == 8    # 4 updates decay over 8 steps: the rate ends at 1/2
  with pytest.raises(ValueError, match="grad_accum_steps=3 must be >= 1 and divide"):
    train_configs(**dict(OPTS, grad_accum_steps=3))


def test_bf16_storage_swallows_small_factor_steps(tiny, tmp_path):
  """The authors' bf16 SVs: bf16(96) - 0.1 == 96, so a small factor rate never moves it."""
  model, params = tiny
  opts = dict(OPTS, beta=96 / CFG.dim ** 0.5, lr_factor=0.1, epochs=1)
  spec, concepts = SteerSpec(1, "all"), _concepts(1)
  fp32 = train_concepts(model, params, spec, concepts, [0], *train_configs(**opts),
                        str(tmp_path / "fp32"), log=quiet)
  bf16 = train_concepts(model, params, spec, concepts, [0],
                        *train_configs(**dict(opts, param_dtype="bfloat16")),
                        str(tmp_path / "bf16"), log=quiet)
  assert float(bf16["factor"][0]) == 96.0 and abs(float(fp32["factor"][0]) - 96.0) > 0.05
  d = np.asarray(bf16["direction"])
  assert np.array_equal(d, d.astype(jnp.bfloat16).astype(np.float32))


def test_reps_as_axbench_trains_it():
  """Whole-sequence length normalisation, the reference margin, and the steering and
  NullInv terms averaged (AxBench's `scaled_simpo`), on hand-made log-probs."""
  lp = {("pos", None): np.array([-10.0, -30.0]), ("neg", None): np.array([-20.0, -12.0]),
        ("pos", "null"): np.array([-25.0, -28.0]), ("neg", "null"): np.array([-9.0, -15.0])}
  batch = {"pos": {"ref": np.array([-22.0, -26.0]), "length": np.array([10.0, 20.0])},
           "neg": {"ref": np.array([-18.0, -16.0]), "length": np.array([8.0, 16.0])}}
  logprob = lambda name, op=None: (jnp.asarray(lp[(name, op)]), jnp.ones(2))
  got = losses.OBJECTIVES["reps_axbench"].loss(logprob, batch, jnp.zeros(2, jnp.int32), 1)
  nls = lambda d: np.log1p(np.exp(-d))
  p, n = batch["pos"], batch["neg"]
  steer = (np.maximum(n["ref"] - p["ref"], 1) * lp[("pos", None)] / p["length"]
           - lp[("neg", None)] / n["length"])
  null = (np.maximum(p["ref"] - n["ref"], 1) * lp[("neg", "null")] / n["length"]
          - lp[("pos", "null")] / p["length"])
  np.testing.assert_allclose(got, np.mean(0.5 * (nls(steer) + nls(null))), rtol=1e-6)
  assert losses.OBJECTIVES["reps_axbench"].independent_factors


def test_grid_points_stacked_as_rows_equal_separate_runs(tiny, tmp_path):
  """A search stacks grid points with their own beta, lam and rates as rows of one step."""
  from steerjax.train import LoopConfig
  model, params = tiny
  spec, (c,) = SteerSpec(1, "f2+l2"), _concepts(1)
  step, run = train_configs(**OPTS)
  points = [dataclasses.replace(run, beta=b, lam=lam, lr_factor=lr)
            for b, lam, lr in ((1.0, 4.0, 0.5), (4.0, 1.0, 2.0), (2.0, 8.0, 0.1))]
  assert all(isinstance(p, LoopConfig) for p in points)
  stacked = train_concepts(model, params, spec, [c] * 3, [0, 0, 0], step, run,
                           str(tmp_path / "stacked"), log=quiet, row_loops=points)
  for k, point in enumerate(points):
    alone = train_concepts(model, params, spec, [c], [0], step, point, str(tmp_path / str(k)),
                           log=quiet)
    for leaf in ("factor", "direction"):
      np.testing.assert_allclose(stacked[leaf][k], alone[leaf][0], rtol=1e-5, atol=1e-6)
  assert len({float(f) for f in stacked["factor"]}) == 3


def test_concepts_per_step_from_memory_gives_the_separate_runs_svs(tiny, tmp_path):
  """The compiled step's memory grows with the stacked concepts; a budget between two sizes
  picks the smaller, and the SVs trained at that size equal one-at-a-time training."""
  from steerjax import memory
  model, params = tiny
  spec, concepts = SteerSpec(1, "f2+l2"), _concepts(3)
  step, run = train_configs(**OPTS)
  need = {c: memory.step_bytes(model, params, spec, step, run, concepts[:c]) for c in (1, 2)}
  assert need[2] > need[1] > 0
  budget = (need[1] + need[2]) // 2
  assert memory.pick_concepts_per_step(model, params, spec, step, run, concepts, budget,
                                       log=quiet) == 1
  assert memory.pick_concepts_per_step(model, params, spec, step, run, concepts,
                                       need[2] + 1, log=quiet) == 2
  together = train_concepts(model, params, spec, concepts[:2], [0, 1], step, run,
                            str(tmp_path / "two"), log=quiet)
  for k in range(2):
    alone = train_concepts(model, params, spec, [concepts[k]], [k], step, run,
                           str(tmp_path / str(k)), log=quiet)
    for leaf in ("factor", "direction"):
      np.testing.assert_allclose(together[leaf][k], alone[leaf][0], rtol=1e-5, atol=1e-6)
