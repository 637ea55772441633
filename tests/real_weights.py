"""Checks of a real checkpoint against transformers' load of the same file: logits of
left-padded batches, and greedy continuations."""

from __future__ import annotations

import contextlib

import jax.numpy as jnp
import numpy as np
import torch

from steerjax.generate import generate, left_pad


@contextlib.contextmanager
def torch_one_thread():
  """torch on one thread: on a busy 2-core machine its second thread mostly spins (5x slower)."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    yield
  finally:
    torch.set_num_threads(threads)


def assert_logits_match(model, params, hf_model, prompts, bound: float = 5e-4):
  """Our fp32 logits of `prompts`, as one left-padded batch, within `bound` of
  transformers' on each prompt alone, at every position."""
  tokens, valid = left_pad(prompts, model.cfg.pad_id)
  ours = np.asarray(model.apply({"params": params}, jnp.asarray(tokens),
                                valid_BT=jnp.asarray(valid)))
  for row, ids in enumerate(prompts):
    with torch.no_grad(), torch_one_thread():
      theirs = hf_model(torch.tensor([ids])).logits[0].numpy()
    mine = ours[row, tokens.shape[1] - len(ids):]
    assert np.abs(theirs).max() > 10  # real logits, not a degenerate model
    diff = float(np.abs(mine - theirs).max())
    assert diff < bound, f"prompt of {len(ids)} tokens: max |logit diff| {diff}"


def assert_greedy_matches(model, params, hf_model, tok, prompts, new_tokens: int, ours=None):
  """`new_tokens` greedy tokens per prompt (ours as one batch, or `ours` given), identical
  to transformers' `generate` on each prompt alone; returns ours."""
  ours = generate(model, params, prompts, max_new_tokens=new_tokens) if ours is None else ours
  for ids, mine in zip(prompts, ours):
    with torch.no_grad(), torch_one_thread():
      out = hf_model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False,
                              attention_mask=torch.ones(1, len(ids)))
    theirs = out[0, len(ids):].tolist()
    assert len(theirs) == new_tokens and list(mine) == theirs, (
        f"ours: {tok.decode(mine)!r}\ntransformers: {tok.decode(theirs)!r}")
  return ours


def assert_offline_alias_names_the_pip_command(alias: str, command: str, data_root: str,
                                               monkeypatch):
  """With the package gone and the hub offline, loading `alias` fails in one line that
  gives `command`."""
  import huggingface_hub
  import pytest

  from steerjax.models import LoadError
  from steerjax.models.loading import resolve

  def offline(*args, **kwargs):
    raise OSError("offline")
  monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
  with pytest.raises(LoadError) as err:
    resolve(alias, data_root)
  assert command in str(err.value) and "\n" not in str(err.value)
