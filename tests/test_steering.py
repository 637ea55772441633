"""The steering core: transforms, positions, steered generation, SV files."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from steerjax.checkpoint import load_sv, save_sv
from steerjax.generate import generate, left_pad
from steerjax.models import Decoder, ModelConfig
from steerjax.steering import SteerSpec, init_sv, positions_mask, steer

CFG = ModelConfig(family="llama", vocab_size=97, dim=32, n_layers=3, n_heads=4, n_kv_heads=2,
                  head_dim=8, hidden_dim=64, max_seq_len=128, tie_embeddings=False,
                  stop_ids=(), pad_id=0)
SPEC = SteerSpec(layer=1, positions="f2+l2")


@pytest.fixture(scope="module")
def tiny():
  model = Decoder(CFG)
  params = model.init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"]
  params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape), params)
  tokens = jax.random.randint(jax.random.key(2), (3, 12), 1, CFG.vocab_size)
  return model, params, tokens


def _sv(scale=1.0, factor=3.0):
  sv = init_sv(jax.random.key(5), CFG.dim, beta=1.0, lam=4.0)
  return {"factor": jnp.float32(factor), "direction": sv["direction"] * scale}


def test_zero_factor_is_bit_identical(tiny):
  model, params, tokens = tiny
  mask = jnp.ones(tokens.shape, bool)
  plain = jax.jit(model.apply)({"params": params}, tokens)
  steered = jax.jit(steer(model.apply, SteerSpec(1, "all")))
  out = steered({"params": params}, _sv(factor=0.0), tokens, mask)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(plain))
  eager = steer(model.apply, SteerSpec(1, "all"))({"params": params}, _sv(factor=0.0), tokens, mask)
  np.testing.assert_array_equal(np.asarray(eager), np.asarray(model.apply({"params": params}, tokens)))
  # Differentiated, XLA fuses the program differently, so compare to float rounding.
  def primal_and_grad(sv):
    out, vjp = jax.vjp(lambda s: steered({"params": params}, s, tokens, mask), sv)
    return out, vjp(jnp.ones_like(out))[0]
  out, grad = jax.jit(primal_and_grad)(_sv(factor=0.0))
  np.testing.assert_allclose(np.asarray(out), np.asarray(plain), rtol=0, atol=1e-6)
  assert np.all(np.isfinite(np.asarray(grad["direction"])))


@pytest.mark.parametrize("positions", ["f2+l2", "all", "l3"])
def test_residual_changes_by_alpha_v_only_at_mask(tiny, positions):
  model, params, tokens = tiny
  valid = jnp.ones(tokens.shape, bool).at[0, :4].set(False)   # row 0 left-padded
  mask = positions_mask(positions, valid, valid)
  steered = steer(model.apply, SteerSpec(1, positions))

  def site_before_and_after(sv):
    seen = {}
    def capture(next_fun, args, kwargs, ctx):
      out = next_fun(*args, **kwargs)
      if ctx.method_name == "residual" and ctx.module.path == ("layers_1",):
        seen["before"], seen["after"] = args[0], out
      return out
    with nn.intercept_methods(capture):
      steered({"params": params}, sv, tokens, mask, valid_BT=valid)
    return seen["before"], seen["after"]

  sv = _sv()
  before, after = jax.jit(site_before_and_after)(sv)
  diff = np.asarray(after - before)
  expected = np.asarray(sv["factor"] * sv["direction"])
  m = np.asarray(mask)
  np.testing.assert_allclose(diff[m], np.broadcast_to(expected, diff[m].shape), atol=1e-5)
  assert np.all(diff[~m] == 0.0)
  assert np.abs(diff[m]).max() > 0.1


def test_gradients_flow_only_through_edited_positions(tiny):
  model, params, tokens = tiny
  steered = steer(model.apply, SPEC)
  loss = lambda sv, mask: jnp.sum(steered({"params": params}, sv, tokens, mask) ** 2)
  g_on = jax.jit(jax.grad(loss))(_sv(), jnp.ones(tokens.shape, bool))
  g_off = jax.jit(jax.grad(loss))(_sv(), jnp.zeros(tokens.shape, bool))
  assert float(jnp.abs(g_on["factor"])) > 0 and float(jnp.linalg.norm(g_on["direction"])) > 0
  assert float(g_off["factor"]) == 0.0 and not np.any(np.asarray(g_off["direction"]))


def test_clamp_and_null_ops(tiny):
  model, params, tokens = tiny
  mask = jnp.ones(tokens.shape, bool)
  kw = dict(last_layer=2, head=False)
  base = np.asarray(model.apply({"params": params}, tokens, **kw))
  sv = _sv()
  u = np.asarray(sv["direction"]) / np.linalg.norm(np.asarray(sv["direction"]))
  null = np.asarray(steer(model.apply, SteerSpec(1, "all", "null"))(
      {"params": params}, sv, tokens, mask, **kw))
  assert np.all(null @ u <= 1e-5)                                # no positive component left
  np.testing.assert_allclose(null, base - np.maximum(base @ u, 0)[..., None] * u, atol=1e-5)
  clamp = np.asarray(steer(model.apply, SteerSpec(1, "all", "clamp"))(
      {"params": params}, sv, tokens, mask, **kw))
  np.testing.assert_allclose(clamp @ u, float(sv["factor"]) * np.linalg.norm(sv["direction"]),
                             rtol=1e-4)


def test_stacked_sv_matches_single(tiny):
  model, params, tokens = tiny
  mask = positions_mask("all", jnp.ones(tokens.shape, bool), jnp.ones(tokens.shape, bool))
  stacked = init_sv(jax.random.key(3), CFG.dim, beta=1.0, lam=4.0, concepts=3)
  ids = jnp.array([2, 0, 1])
  steered = steer(model.apply, SteerSpec(1, "all"))
  out = steered({"params": params}, stacked, tokens, mask, concept_ids=ids)
  for b, c in enumerate(ids):
    one = {k: v[c] for k, v in stacked.items()}
    ref = steered({"params": params}, one, tokens[b:b + 1], mask[b:b + 1])
    np.testing.assert_allclose(np.asarray(out[b]), np.asarray(ref[0]), atol=1e-5)
  with pytest.raises(ValueError, match="concept_ids"):
    steered({"params": params}, stacked, tokens, mask)


def test_positions_grammar_and_left_padding():
  prompt = np.array([[0, 0, 1, 1, 1, 1, 1, 0, 0],     # left pad 2, prompt 5, response 2
                     [1, 1, 1, 0, 0, 0, 0, 0, 0]], bool)
  tokens = np.array([[0, 0, 1, 1, 1, 1, 1, 1, 1],
                     [1, 1, 1, 1, 1, 1, 1, 1, 1]], bool)
  m = np.asarray(positions_mask("f2+l2", prompt, tokens))
  assert m[0].tolist() == [0, 0, 1, 1, 0, 1, 1, 0, 0]
  assert m[1].tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0]     # 3-token prompt: each edited once
  assert np.asarray(positions_mask("f1", prompt, tokens))[0].tolist() == [0, 0, 1] + [0] * 6
  assert np.asarray(positions_mask("l1", prompt, tokens))[0].tolist() == [0] * 6 + [1, 0, 0]
  np.testing.assert_array_equal(positions_mask("all", prompt, tokens), tokens)
  np.testing.assert_array_equal(positions_mask("prompt", prompt, tokens), prompt)
  np.testing.assert_array_equal(positions_mask("generation", prompt, tokens), tokens & ~prompt)
  for bad in ["f2+", "first2", "f0", "l2+f2", "", "f-1"]:
    with pytest.raises(ValueError, match="positions="):
      positions_mask(bad, prompt, tokens)
  with pytest.raises(ValueError, match="positions="):
    SteerSpec(layer=0, positions="everything")
  with pytest.raises(ValueError, match="op="):
    SteerSpec(layer=0, op="mul")


def test_bad_layer_is_refused(tiny):
  model, params, tokens = tiny
  with pytest.raises(ValueError, match="no block"):
    steer(model.apply, SteerSpec(layer=7))({"params": params}, _sv(), tokens,
                                           jnp.ones(tokens.shape, bool))


def _full_steered(model, params, spec, sv, prompt, generated, prompt_only):
  seq = jnp.asarray([prompt + generated])
  is_prompt = jnp.arange(seq.shape[1])[None] < len(prompt)
  valid = jnp.ones(seq.shape, bool)
  mask = positions_mask(spec.positions, is_prompt if prompt_only else valid, valid)
  return np.asarray(steer(model.apply, spec)({"params": params}, sv, seq, mask))[0]


@pytest.mark.parametrize("positions", ["all", "f2+l2"])
def test_steered_generation_equals_steered_forward(tiny, positions):
  model, params, _ = tiny
  spec = SteerSpec(1, positions)
  prompts = [[5, 9, 13, 2, 7, 8, 1], [3, 4, 11]]
  sv = _sv()
  outs, logits = generate(model, params, prompts, max_new_tokens=6, sv=sv, spec=spec,
                          return_logits=True)
  plain = generate(model, params, prompts, max_new_tokens=6)
  assert outs != plain, "the SV should change greedy continuations"
  for p, out, lg in zip(prompts, outs, logits):
    full = _full_steered(model, params, spec, sv, p, out, prompt_only=positions != "all")
    np.testing.assert_allclose(lg, full[len(p) - 1:len(p) - 1 + len(out)], atol=1e-4)


def test_generation_needs_sv_and_spec_together(tiny):
  model, params, _ = tiny
  with pytest.raises(ValueError, match="sv and spec"):
    generate(model, params, [[1, 2]], max_new_tokens=2, sv=_sv())
  with pytest.raises(ValueError, match="rng"):
    generate(model, params, [[1, 2]], max_new_tokens=2, temperature=1.0)


def test_sv_file_roundtrip_and_mismatch(tmp_path):
  sv = {"factor": np.float32(12.5), "direction": np.arange(CFG.dim, dtype=np.float32)}
  meta = {"model": "tiny", "model_fingerprint": CFG.fingerprint(), "layer": 1,
          "positions": "f2+l2", "op": "add", "objective": "lang"}
  path = str(tmp_path / "dog.safetensors")
  save_sv(path, sv, meta)
  loaded, got = load_sv(path, model_cfg=CFG)
  np.testing.assert_array_equal(loaded["direction"], sv["direction"])
  assert float(loaded["factor"]) == 12.5 and got["positions"] == "f2+l2"
  assert got["steerjax_version"]
  with pytest.raises(ValueError, match="width 32 does not match the model width 48"):
    load_sv(path, model_cfg=CFG.replace(dim=48))
  with pytest.raises(ValueError, match="fingerprint"):
    load_sv(path, model_cfg=CFG.replace(n_heads=8, n_kv_heads=8, head_dim=4))
  with pytest.raises(ValueError, match="layer 1 is beyond"):
    load_sv(path, model_cfg=CFG.replace(n_layers=1))


def test_init_sv_scales():
  n = 1024
  sv = init_sv(jax.random.key(0), n, beta=2.0, lam=8.0)
  assert float(sv["factor"]) == pytest.approx(2.0 * 32)
  assert float(jnp.var(sv["direction"])) == pytest.approx(8.0 / n, rel=0.15)
  uni = init_sv(jax.random.key(0), n, beta=2.0, lam=8.0, init="uniform")
  assert float(jnp.max(jnp.abs(uni["direction"]))) <= 8.0 / 32
  assert float(jnp.var(uni["direction"])) == pytest.approx(64.0 / (3 * n), rel=0.15)
  with pytest.raises(ValueError, match="init="):
    init_sv(jax.random.key(0), n, 1.0, 1.0, init="xavier")
