"""RePS as AxBench trains it: the learned bias, dropout on v, the chat-prefix skip, and the
Gemma baseline rows of AxBench's sweep files."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from steerjax import train
from steerjax.models import Decoder, ModelConfig
from steerjax.optim import clip_rows
from steerjax.steering import (SteerSpec, add_op, chat_prefix_length, edit, null_op,
                               positions_mask)
from synthetic import synthetic_concepts, train_configs

CFG = ModelConfig(family="llama", vocab_size=64, dim=32, n_layers=3, n_heads=4, n_kv_heads=2,
                  head_dim=8, hidden_dim=64, max_seq_len=64, tie_embeddings=True, pad_id=0)
OPTS = dict(objective="reps_axbench", factor_mode="sampled", factor_set=(2.0, 4.0, 6.0),
            batch_size=4, epochs=2, beta=1.0, lam=1.0, lr_factor=0.0, lr_direction=0.05,
            direction_init="uniform", log_every=100, checkpoint_every=1000)
quiet = lambda *a, **k: None


@pytest.fixture(scope="module")
def tiny():
  model = Decoder(CFG)
  params = model.init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"]
  return model, params


def test_bias_and_dropout_edit_as_axbench_writes_them():
  """PreferenceVectorIntervention: add h + (a + b) v', null h - relu(h.v + b) v' / ||v||^2,
  with v' = dropout(v); the latent h.v uses v itself."""
  rng = np.random.default_rng(0)
  h = rng.normal(size=(2, 5, 8)).astype(np.float32)
  v = rng.normal(size=(2, 8)).astype(np.float32)
  a, b = np.array([3.0, 5.0], np.float32), np.array([0.7, -40.0], np.float32)
  keep = (rng.random((2, 8)) > 0.5).astype(np.float32) / 0.5
  sv = {"factor": a, "direction": v, "bias": b, "keep": keep}
  ids, mask = jnp.arange(2), np.ones((2, 5), bool)
  got_add = np.asarray(edit(jnp.asarray(h), sv, mask, "add", ids))
  want_add = h + (a + b)[:, None, None] * (v * keep)[:, None, :]
  np.testing.assert_allclose(got_add, want_add, rtol=1e-5, atol=1e-5)
  got_null = np.asarray(edit(jnp.asarray(h), sv, mask, "null", ids))
  latent = np.maximum(np.einsum("btd,bd->bt", h, v) + b[:, None], 0.0)
  want_null = h - (latent / np.sum(v * v, -1)[:, None])[..., None] * (v * keep)[:, None, :]
  np.testing.assert_allclose(got_null, want_null, rtol=1e-5, atol=1e-5)
  assert np.array_equal(got_null[1], h[1])          # b = -40: relu(h.v + b) = 0, h untouched
  # b = 0 and no dropout: the plain AddInv and NullInv
  plain = {"factor": a, "direction": v, "bias": np.zeros(2, np.float32)}
  for op, fn in (("add", add_op), ("null", null_op)):
    want = fn(jnp.asarray(h), jnp.asarray(a)[:, None, None], jnp.asarray(v)[:, None, :])
    np.testing.assert_allclose(edit(jnp.asarray(h), plain, mask, op, ids), want, rtol=1e-5,
                               atol=1e-5)
  # a stacked SV's bias is picked per concept like its direction
  stacked = {"factor": a, "direction": v, "bias": b}
  np.testing.assert_allclose(edit(jnp.asarray(h), stacked, mask, "add", jnp.asarray([1, 1])),
                             h + (a[1] + b[1]) * v[1], rtol=1e-5, atol=1e-4)


def test_training_skips_the_chat_prefix_and_inference_steers_every_position():
  # left-padded prompts of 6 and 5 tokens, then 3 response tokens each
  valid = np.array([[1] * 9, [0] + [1] * 8], bool)
  prompt = np.array([[1] * 6 + [0] * 3, [0] + [1] * 5 + [0] * 3], bool)
  skip = np.asarray(positions_mask("all-f4", prompt, valid))
  assert skip[0].tolist() == [False] * 4 + [True] * 5
  assert skip[1].tolist() == [False] * 5 + [True] * 4
  assert np.asarray(positions_mask("all-f1", prompt, valid)).tolist() == \
      np.asarray(positions_mask("all-bos", prompt, valid)).tolist()
  spec = SteerSpec(3, positions="all", train_positions="all-f4")
  assert spec.training_positions == "all-f4" and spec.acts_on_generation
  assert SteerSpec(3, "all-f4").acts_on_generation and SteerSpec(3, "all").training_positions == "all"
  with pytest.raises(ValueError, match="positions='all-fx' is not valid"):
    SteerSpec(3, "all", train_positions="all-fx")
  # AxBench's get_prefix_length: the templated chats "1" and "2" part after the prefix
  gemma = {"<bos>": 2, "<start_of_turn>": 106, "user": 1645, "\n": 108, "<end_of_turn>": 107}
  def gemma_chat(messages):
    words = ["<bos>", "<start_of_turn>", "user", "\n", messages[0]["content"], "<end_of_turn>",
             "\n"]
    return [gemma.get(w, 235274 + int(w) if w.isdigit() else 0) for w in words]
  assert chat_prefix_length(gemma_chat) == 4


def _hand_loss(model, params, arrays, idx, group, sv, step, spec, key):
  """AxBench's RePS loss written out: each sequence edited by the hand formula at the
  training positions, response log-probs summed, scaled SimPO on whole-sequence lengths."""
  lps = {}
  for name in ("pos", "neg"):
    seq = {k: v[idx] for k, v in arrays[name].items()}
    base = train._example_svs(sv, step, group, key, name)
    h = model.apply({"params": params}, seq["tokens"], valid_BT=seq["valid"],
                    last_layer=spec.layer + 1, head=False).astype(jnp.float32)
    mask = positions_mask(spec.training_positions, seq["prompt"], seq["valid"])[..., None]
    for op in ("add", "null"):
      v = base["direction"][:, None, :]
      applied = v * train._with_dropout(base, step, key, name, op).get("keep", 1.0)[:, None, :]
      b = base["bias"][:, None, None]
      if op == "add":
        new = h + (base["factor"][:, None, None] + b) * applied
      else:
        latent = jax.nn.relu(jnp.sum(h * v, -1, keepdims=True) + b)
        new = h - latent / jnp.sum(v * v, -1, keepdims=True) * applied
      lp = model.apply({"params": params}, None, valid_BT=seq["valid"],
                       h_BTD=jnp.where(mask, new, h), first_layer=spec.layer + 1,
                       logits_at=seq["at"], targets=seq["target"])
      lps[(name, op)] = jnp.sum(lp * seq["target_mask"], 1)
  pos, neg = ({k: arrays[n][k][idx] for k in ("ref", "length")} for n in ("pos", "neg"))
  steer = (jnp.maximum(neg["ref"] - pos["ref"], 1) * lps[("pos", "add")] / pos["length"]
           - lps[("neg", "add")] / neg["length"])
  null = (jnp.maximum(pos["ref"] - neg["ref"], 1) * lps[("neg", "null")] / neg["length"]
          - lps[("pos", "null")] / pos["length"])
  return jnp.mean(0.5 * (-jax.nn.log_sigmoid(steer) - jax.nn.log_sigmoid(null)))


def test_reps_loss_with_bias_dropout_and_prefix_skip_follows_the_formula(tiny):
  model, params = tiny
  spec = SteerSpec(1, "all", train_positions="all-f4")
  step, run = train_configs(**dict(OPTS, bias=True, dropout=0.25))
  data, _ = train.prepare_data(synthetic_concepts(1), step.objective, CFG.pad_id)
  arrays = train.precompute(model, params, spec, data, step, run, log=quiet)
  state = train.fresh_state(step, run, CFG.dim, [0], total_steps=4)
  assert np.array_equal(state["sv"]["bias"], [0.0])               # AxBench starts b at 0
  sv = dict(state["sv"], bias=jnp.asarray([0.6]))
  idx, group, key = jnp.asarray([0, 2, 5, 7]), jnp.zeros(4, jnp.int32), jax.random.key(5)
  loss, grads = jax.value_and_grad(train.loss_fn)(sv, model, spec, step, 1, params, arrays,
                                                  idx, group, key)
  np.testing.assert_allclose(loss, _hand_loss(model, params, arrays, idx, group, sv, step, spec,
                                               key), rtol=1e-5)
  assert abs(float(grads["bias"][0])) > 0                         # the bias learns
  # micro-batches draw the same masks: accumulation still equals the big batch
  acc_loss, acc = train.accumulated_loss_and_grad(
      sv, model, spec, dataclasses.replace(step, grad_accum_steps=2), 1, params, arrays, idx,
      group, key)
  np.testing.assert_allclose(acc_loss, loss, rtol=1e-5)
  for leaf in ("direction", "bias"):
    np.testing.assert_allclose(acc[leaf], grads[leaf], rtol=1e-4, atol=1e-7)
  # each of bias, dropout and the prefix skip moves the loss
  for changed_sv, changed_step, changed_spec in (
      (dict(sv, bias=jnp.zeros(1)), step, spec),
      (sv, dataclasses.replace(step, dropout=0.0), spec),
      (sv, step, SteerSpec(1, "all", train_positions="all-bos"))):
    other = train.loss_fn(changed_sv, model, changed_spec, changed_step, 1, params, arrays, idx,
                          group, key)
    assert abs(float(other) - float(loss)) > 1e-6
  # dropout masks: 0 or 1/(1-p), about p of them 0, new for each sequence and op
  masks = [np.asarray(train._with_dropout(train._example_svs(sv, step, group, key, n), step,
                                          key, n, op)["keep"])
           for n in ("pos", "neg") for op in ("add", "null")]
  assert all(set(np.unique(m)) <= {0.0, np.float32(1 / 0.75)} for m in masks)
  assert 0.15 < np.mean([np.mean(m == 0) for m in masks]) < 0.35
  assert len({m.tobytes() for m in masks}) == 4


def test_bias_and_direction_clip_as_one_norm_and_train(tiny, tmp_path):
  g = {"direction": jnp.asarray([[3.0, 0.0], [0.3, 0.0]]), "bias": jnp.asarray([4.0, 0.4])}
  got, _ = clip_rows(1.0).update(g, None)
  np.testing.assert_allclose(got["direction"], [[0.6, 0.0], [0.3, 0.0]], rtol=1e-6)
  np.testing.assert_allclose(got["bias"], [0.8, 0.4], rtol=1e-6)   # row 0: norm 5 -> 1
  model, params = tiny
  spec = SteerSpec(1, "all", train_positions="all-f2")
  out = train.train_concepts(model, params, spec, synthetic_concepts(2), [0, 1],
                             *train_configs(**dict(OPTS, bias=True, dropout=0.1)),
                             str(tmp_path / "run"), log=quiet)
  assert out["bias"].shape == (2,) and np.all(out["bias"] != 0)
  assert np.all(np.isfinite(out["direction"]))
  with pytest.raises(ValueError, match="sv.dropout=1.0 must be in"):
    train_configs(**dict(OPTS, dropout=1.0))


def test_gemma_baselines_follow_axbench_sweep_files():
  """c_vector_g2-{2b,9b}_axbench.yaml and p_vector_dps_g2-{2b,9b}_axbench.yaml at c01a22a."""
  from configs import axbench_gemma2_2b, axbench_gemma2_9b
  from steerjax import methods
  want = {  # (batch per update, accumulation, epochs, lr, dropout)
      ("2b", "fssv_lang_sampled"): (12, 2, 6, 0.04, 0.0),
      ("9b", "fssv_lang_sampled"): (12, 2, 12, 0.08, 0.0),
      ("2b", "fssv_reps_sampled"): (6, 1, 18, 0.04, 0.0),
      ("9b", "fssv_reps_sampled"): (6, 1, 18, 0.08, 0.1)}
  for size, module in (("2b", axbench_gemma2_2b), ("9b", axbench_gemma2_9b)):
    config = module.get_config()
    for name in ("fssv_lang_sampled", "fssv_reps_sampled"):
      m = methods.from_config(config, name)
      got = (m.step.batch_size, m.step.grad_accum_steps, m.step.epochs, m.loop.lr_direction,
             m.step.dropout)
      assert got == want[(size, name)], (size, name)
      assert m.step.bias and m.step.factor_mode == "sampled" and m.loop.lam == 1.0
      assert (m.spec.positions, m.spec.training_positions) == ("all", "all-f4")
      assert m.step.factor_set == tuple(range(2, 21, 2)) and len(m.grid) == 14


def test_q32b_search_grid_is_table_10s():
  """Table 10 searches Q32B over epochs {6, 12, 18} and batch {3, 6}."""
  from configs import axbench_qwen25_32b
  from steerjax.jobs import search      # the job's grid builder (tests may import jobs)
  points = search.grid(axbench_qwen25_32b.get_config())
  assert sorted({(p["batch_size"], p["epochs"]) for p in points}) == [
      (b, e) for b in (3, 6) for e in (6, 12, 18)]
  assert len(points) == 4 * 4 * 2 * 2 * 3 * 2
