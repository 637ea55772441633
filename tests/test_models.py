"""Model correctness: transformers parity per family, the stories260K reference run,
cached decoding against the full forward, loader and generate errors, preset sizes."""

import collections
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import hf_tiny
from conftest import STORIES
from steerjax.generate import generate
from steerjax.models import Decoder, LoadError, ModelConfig, load
from steerjax.models.presets import PRESETS, PUBLISHED_PARAMS

STORIES_DIR = os.path.dirname(STORIES)
FP32_ATOL = 1e-4
BATCH, SEQ = 3, 32

# What the loader must map each tiny checkpoint onto (the variant the checkpoint covers).
EXPECTED = {
    "llama_mha": dict(family="llama", n_kv_heads=4, tie_embeddings=False, rope_llama3=None),
    "llama3_gqa": dict(family="llama", n_kv_heads=2, tie_embeddings=True,
                       rope_llama3=(4.0, 1.0, 4.0, 64)),
    "qwen2_mqa": dict(family="qwen2", n_kv_heads=1, tie_embeddings=False, qkv_bias=True),
    "gemma2_gqa": dict(family="gemma2", n_kv_heads=2, tie_embeddings=True, sliding_window=5,
                       sliding_layers=(0,), attn_softcap=3.0, final_softcap=10.0,
                       query_scale=24, norm_plus_one=True),
}

Tiny = collections.namedtuple("Tiny", "name directory torch_model model params forward")


@pytest.fixture(scope="module", params=list(hf_tiny.SPECS))
def tiny(request, tmp_path_factory):
  """A tiny random HF checkpoint on disk, its torch model, and the steerjax load of it."""
  name = request.param
  directory = str(tmp_path_factory.mktemp(name))
  torch_model = hf_tiny.build(name, directory, seed=list(hf_tiny.SPECS).index(name))
  model, params = load(directory)
  return Tiny(name, directory, torch_model, model, params, full_forward(model))


def full_forward(model):
  """Jitted uncached forward: (params, tokens [B, T], valid [B, T] or None) -> fp32 numpy logits."""
  fn = jax.jit(lambda params, tokens, valid: model.apply({"params": params}, tokens, valid_BT=valid))

  def forward(params, tokens, valid=None):
    valid = np.ones(np.shape(tokens), bool) if valid is None else valid
    return np.asarray(fn(params, jnp.asarray(tokens, jnp.int32), jnp.asarray(valid)), np.float32)
  return forward


def random_tokens(shape, seed=0):
  """Token ids that avoid the pad/bos/eos ids 0-2."""
  return np.random.default_rng(seed).integers(3, hf_tiny.VOCAB, size=shape).astype(np.int32)


def right_fill(rows, seed=2):
  """[BATCH, SEQ] ids: each row's tokens first, then random ids that causal attention ignores."""
  out = random_tokens((BATCH, SEQ), seed)
  for i, row in enumerate(rows):
    out[i, :len(row)] = row
  return out


def max_abs_diff(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# ---------------------------------------------------------------------------- HF parity

def test_loader_maps_each_variant(tiny):
  """The tiny checkpoints really are MHA/GQA/MQA, tied/untied, llama3-scaled, softcapped."""
  cfg = tiny.model.cfg
  for field, value in EXPECTED[tiny.name].items():
    assert getattr(cfg, field) == value, field
  assert ("lm_head" in tiny.params) == (not cfg.tie_embeddings)
  if cfg.sliding_window is not None:
    assert cfg.sliding_window < SEQ


def test_fp32_logits_match_transformers(tiny):
  tokens = random_tokens((BATCH, SEQ))
  ref = hf_tiny.torch_logits(tiny.torch_model, tokens)
  assert ref.std() > 0.5, "reference logits too flat for the tolerance to mean anything"
  assert max_abs_diff(tiny.forward(tiny.params, tokens), ref) <= FP32_ATOL


def test_target_log_probs_at_chosen_positions(tiny):
  """`logits_at` + `targets` (the training loss's head) equal log_softmax of full logits,
  through tied/untied heads and Gemma-2's final softcap."""
  tokens = random_tokens((BATCH, SEQ))
  at = np.stack([np.arange(3, 11), np.arange(0, 8), np.arange(SEQ - 8, SEQ)]).astype(np.int32)
  targets = random_tokens(at.shape, seed=5)
  got = tiny.model.apply({"params": tiny.params}, jnp.asarray(tokens), logits_at=jnp.asarray(at),
                         targets=jnp.asarray(targets))
  logp = jax.nn.log_softmax(tiny.forward(tiny.params, tokens), axis=-1)
  want = np.take_along_axis(np.take_along_axis(logp, at[..., None], 1), targets[..., None], 2)
  np.testing.assert_allclose(got, want[..., 0], rtol=1e-5, atol=1e-5)


def test_left_padded_batch_matches_transformers(tiny):
  """Left padding changes nothing at the real positions: equal to torch given the same
  attention mask, and to the unpadded sequences (placed first, causal junk after them)."""
  lengths = [SEQ, 20, 7]
  tokens = random_tokens((BATCH, SEQ), seed=1)
  valid = np.arange(SEQ)[None, :] >= (SEQ - np.asarray(lengths))[:, None]
  tokens = np.where(valid, tokens, tiny.model.cfg.pad_id).astype(np.int32)
  ref = hf_tiny.torch_logits(tiny.torch_model, tokens, attention_mask=valid)
  out = tiny.forward(tiny.params, tokens, valid)
  assert max_abs_diff(out[valid], ref[valid]) <= FP32_ATOL
  unpadded = tiny.forward(tiny.params, right_fill([row[m] for row, m in zip(tokens, valid)]))
  for i, n in enumerate(lengths):
    assert max_abs_diff(out[i, SEQ - n:], unpadded[i, :n]) <= FP32_ATOL


def test_bf16_close_to_fp32_transformers(tiny):
  """bf16 weights and activations stay within 0.25 logit standard deviations of torch fp32.

  bf16 keeps 8 significant bits (unit roundoff 2**-9, about 0.2%). Each logit passes through
  ~10 rounded matmuls and norms per layer with unit-gain weights, so errors of a few percent
  of the logit scale are expected (about 0.1 std is observed); a real mapping or numerics bug
  (norm, RoPE, mask, softcap) moves logits by O(1) std.
  """
  tokens = random_tokens((BATCH, SEQ))
  ref = hf_tiny.torch_logits(tiny.torch_model, tokens)
  model, params = load(tiny.directory, dtype=jnp.bfloat16)
  assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(params))
  out = tiny.forward(params, tokens)
  err = np.abs(out - ref)
  assert err.max() <= 0.25 * ref.std()
  assert err.mean() <= 0.05 * ref.std()


# ---------------------------------------------------------------------------- cached decoding

def test_cached_decoding_matches_full_forward(tiny):
  """Every decode step of left-padded batched generation equals the uncached full forward."""
  steps = 12
  prompts = [random_tokens((n,), seed=10 + n).tolist() for n in (5, 11, 3)]
  if tiny.model.cfg.sliding_window is not None:
    assert tiny.model.cfg.sliding_window < min(map(len, prompts)) + steps
  generated, step_logits = generate(tiny.model, tiny.params, prompts, max_new_tokens=steps,
                                    return_logits=True, stop_ids=())
  full = tiny.forward(tiny.params, right_fill([p + g for p, g in zip(prompts, generated)]))
  for i, (prompt, gen, logits) in enumerate(zip(prompts, generated, step_logits)):
    assert len(gen) == steps and logits.shape == (steps, hf_tiny.VOCAB)
    assert gen == np.argmax(logits, -1).tolist()
    start = len(prompt) - 1
    assert max_abs_diff(logits, full[i, start:start + steps]) <= FP32_ATOL


# ---------------------------------------------------------------------------- stories260K

def stories_reference():
  with open(os.path.join(STORIES_DIR, "reference_values.json")) as f:
    return json.load(f)


def test_stories_greedy_generation_matches_reference(stories):
  model, params, tokenizer = stories
  ref = stories_reference()
  prompt = tokenizer.encode("Once upon a time", bos=True)
  assert prompt == ref["prompt_once_upon_a_time_ids_with_bos"]
  generated, logits = generate(model, params, [prompt], max_new_tokens=252, return_logits=True)
  ids = prompt[1:] + generated[0]
  assert ids == ref["greedy_from_bos_generated_ids"]
  with open(os.path.join(STORIES_DIR, "greedy_t0_from_bos.txt")) as f:
    text = f.read()
  assert text.endswith("\n")
  assert tokenizer.decode(ids) == text[:-1]
  top5 = np.argsort(-logits[0][0])[:5].tolist()
  assert top5 == [i for i, _ in ref["top5_after_prompt"]]


def test_stories_logits_match_reference(stories):
  model, params, tokenizer = stories
  ref = stories_reference()
  prompt = ref["prompt_once_upon_a_time_ids_with_bos"]
  assert prompt[0] == tokenizer.bos_id
  logits = full_forward(model)(params, np.asarray([prompt]))[0]
  assert max_abs_diff(logits[0], ref["logits_pos0_after_bos"]) <= 1e-3
  last = logits[-1]
  ids, values = zip(*ref["top5_after_prompt"])
  assert np.argsort(-last)[:5].tolist() == list(ids)
  assert max_abs_diff(last[list(ids)], values) <= 1e-3


# ---------------------------------------------------------------------------- errors

def small_llama_config(**kw):
  return transformers.LlamaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32, **kw)


def test_missing_directory_is_refused(tmp_path):
  with pytest.raises(LoadError, match="not found"):
    load(str(tmp_path / "absent"))


def test_missing_config_json_is_refused(tmp_path):
  (tmp_path / "model.safetensors").write_bytes(b"")
  with pytest.raises(LoadError, match="has no config.json"):
    load(str(tmp_path))


def test_unsupported_config_value_is_refused_by_name(tmp_path):
  small_llama_config(mlp_bias=True).save_pretrained(tmp_path)
  with pytest.raises(LoadError, match=r"mlp_bias=True"):
    load(str(tmp_path))


def test_unknown_config_key_is_refused_by_name(tmp_path):
  small_llama_config().save_pretrained(tmp_path)
  path = tmp_path / "config.json"
  config = json.loads(path.read_text())
  config["mystery_switch"] = True
  path.write_text(json.dumps(config))
  with pytest.raises(LoadError, match=r"unsupported llama config attribute\(s\): mystery_switch"):
    load(str(tmp_path))


def test_unsupported_rope_type_is_refused_by_name(tmp_path):
  rope = dict(rope_type="linear", rope_theta=10000.0, factor=2.0)
  small_llama_config(rope_parameters=rope).save_pretrained(tmp_path)
  with pytest.raises(LoadError, match=r"rope_type='linear'"):
    load(str(tmp_path))


def test_torch_pickle_only_is_refused(tmp_path):
  small_llama_config().save_pretrained(tmp_path)
  torch.save({"model.norm.weight": torch.ones(16)}, tmp_path / "pytorch_model.bin")
  with pytest.raises(LoadError, match=r"pytorch_model\.bin.*safetensors"):
    load(str(tmp_path))


def test_prompt_longer_than_context_is_refused(stories):
  model, params, _ = stories
  context = model.cfg.max_seq_len
  with pytest.raises(ValueError, match=f"exceeds the model's context of {context} tokens"):
    generate(model, params, [[1, 5], [1] * (context + 1)], max_new_tokens=1)
  with pytest.raises(ValueError, match=f"prompts\\[0\\] has {context - 3} tokens"):
    generate(model, params, [[1] * (context - 3)], max_new_tokens=4)


# ---------------------------------------------------------------------------- presets

@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_param_count_matches_published(name):
  model = Decoder(PRESETS[name])
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
  count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes))
  assert count == PUBLISHED_PARAMS[name]


@pytest.mark.parametrize("chunk", [7, 16, 64])
def test_vocab_chunked_logprobs_equal_the_full_softmax_and_gradients(chunk):
  """The response-window log-probs through a vocabulary-chunked normaliser equal the
  unchunked ones, and so do their gradients, with Gemma-2's final softcap."""
  cfg = ModelConfig(family="gemma2", vocab_size=50, dim=16, n_layers=2, n_heads=2, n_kv_heads=1,
                    head_dim=8, hidden_dim=32, max_seq_len=32, final_softcap=30.0,
                    embed_scale=True, norm_plus_one=True, activation="gelu_tanh")
  full = Decoder(cfg)
  tokens = jax.random.randint(jax.random.key(0), (3, 12), 0, cfg.vocab_size)
  params = full.init(jax.random.key(1), tokens)["params"]
  at = jnp.tile(jnp.arange(4, 11)[None], (3, 1))
  targets = jnp.take_along_axis(tokens, at + 1, axis=1)

  def total(model, p):
    return jnp.sum(model.apply({"params": p}, tokens, logits_at=at, targets=targets))
  want, want_grad = jax.value_and_grad(lambda p: total(full, p))(params)
  chunked = full.clone(vocab_chunk=chunk)
  got, got_grad = jax.value_and_grad(lambda p: total(chunked, p))(params)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for g, w in zip(jax.tree.leaves(got_grad), jax.tree.leaves(want_grad)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
