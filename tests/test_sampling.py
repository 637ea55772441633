"""Sampling processors equal transformers' own on the same logits, and `eval.sampling=hf`
reads the model's generation config."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

import torch
from transformers import generation as hf

from steerjax.generate import repetition_penalty, top_k_filter, top_p_filter
from steerjax.generate import sampling_options

V = 50


def _logits(seed=0, rows=4):
  rng = np.random.default_rng(seed)
  x = rng.normal(0, 3, (rows, V)).astype(np.float32)
  x[0, :5] = x[0, 5]                      # ties at the edge of the kept set
  x[1] = np.linspace(-4, 4, V)            # a smooth ramp
  return x


def _same(got, want):
  got, want = np.asarray(got), want.numpy()
  np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
  np.testing.assert_allclose(got[~np.isinf(got)], want[~np.isinf(want)], rtol=1e-6)


@pytest.mark.parametrize("penalty", [1.05, 1.3, 0.8])
def test_repetition_penalty_equals_transformers(penalty):
  x = _logits()
  ids = np.random.default_rng(1).integers(0, V, (4, 12))
  seen = np.zeros((4, V), bool)
  for i, row in enumerate(ids):
    seen[i, row] = True
  want = hf.RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor(ids), torch.tensor(x))
  _same(repetition_penalty(jnp.asarray(x), jnp.asarray(seen), penalty), want)


@pytest.mark.parametrize("k", [1, 5, 20, 50])
def test_top_k_equals_transformers(k):
  x = _logits()
  want = hf.TopKLogitsWarper(k)(None, torch.tensor(x))
  _same(top_k_filter(jnp.asarray(x), k), want)


@pytest.mark.parametrize("p", [0.05, 0.5, 0.8, 0.95])
def test_top_p_equals_transformers(p):
  # Equal logits at the nucleus' edge are an order question (torch's sort is not stable):
  # these logits have none.
  for seed in range(3):
    x = np.random.default_rng(seed).normal(0, 1.5, (4, V)).astype(np.float32)
    want = hf.TopPLogitsWarper(p)(None, torch.tensor(x))
    _same(top_p_filter(jnp.asarray(x), p), want)


def test_top_k_then_top_p_as_in_generate():
  x = _logits(4) / 1.5
  t = torch.tensor(x)
  want = hf.TopPLogitsWarper(0.8)(None, hf.TopKLogitsWarper(20)(None, t))
  _same(top_p_filter(top_k_filter(jnp.asarray(x), 20), 0.8), want)


def test_hf_sampling_reads_the_generation_config(tmp_path):
  (tmp_path / "generation_config.json").write_text(json.dumps(
      {"top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05, "temperature": 0.7}))
  assert sampling_options("hf", str(tmp_path)) == dict(top_k=20, top_p=0.8,
                                                       repetition_penalty=1.05)
  (tmp_path / "generation_config.json").write_text(json.dumps({"bos_token_id": 2}))
  # transformers' defaults apply when the model's config leaves a field out (Gemma-2-it)
  assert sampling_options("hf", str(tmp_path)) == dict(top_k=50, top_p=1.0,
                                                       repetition_penalty=1.0)
  assert sampling_options("plain", str(tmp_path)) == {}
  with pytest.raises(ValueError, match="eval.sampling='greedy'"):
    sampling_options("greedy", str(tmp_path))
