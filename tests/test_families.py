"""Gemma-3 (text and multimodal), Qwen3 and Mistral: transformers parity on tiny random
checkpoints, bf16, the prefix-cache slice, cached and steered decoding, sharding on 8 fake
devices, the train job, the published configs, the paper-style configs and named refusals.

The 8-device check runs this file as a script in a subprocess (as tests/test_sharding.py
does), because jax in the pytest process already has its one CPU device.
"""

import collections
import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from steerjax import sharding
from steerjax.generate import generate
from steerjax.models import LoadError, load
from steerjax.models.loading import config_from_hf
from steerjax.steering import SteerSpec, init_sv, positions_mask, steer

FP32_ATOL = 1e-4
BATCH, SEQ, VOCAB = 3, 32, 160
FAMILIES = ("gemma3_gqa", "gemma3_multimodal", "qwen3_gqa", "mistral_gqa")

# What the loader must map each tiny checkpoint onto.
EXPECTED = {
    "gemma3_gqa": dict(family="gemma3", n_kv_heads=2, qk_norm=True, norm_plus_one=True,
                       sandwich_norms=True, embed_scale=True, attn_softcap=None,
                       final_softcap=None, query_scale=24, sliding_window=5, sliding_layers=(0,),
                       rope_theta=100.0, rope_linear_factor=2.0, local_rope_theta=10000.0,
                       tie_embeddings=True, stop_ids=(2,)),
    "gemma3_multimodal": dict(family="gemma3", qk_norm=True, sliding_window=5,
                              sliding_layers=(0,), rope_linear_factor=2.0,
                              local_rope_theta=10000.0, tie_embeddings=True, stop_ids=(2,)),
    "qwen3_gqa": dict(family="qwen3", n_kv_heads=2, head_dim=24, qk_norm=True, qkv_bias=False,
                      norm_plus_one=False, sliding_window=5, sliding_layers=(1,),
                      tie_embeddings=False, local_rope_theta=None),
    "mistral_gqa": dict(family="mistral", n_kv_heads=2, qk_norm=False, sliding_window=5,
                        sliding_layers=(0, 1), tie_embeddings=False),
}

Tiny = collections.namedtuple("Tiny", "name directory torch_model model params")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """{name: (directory, torch model)}: each tiny checkpoint written once."""
  import hf_tiny
  out = {}
  for seed, name in enumerate(FAMILIES):
    directory = str(tmp_path_factory.mktemp(name))
    out[name] = (directory, hf_tiny.build(name, directory, seed=10 + seed))
  return out


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, checkpoints):
  directory, torch_model = checkpoints[request.param]
  model, params = load(directory)
  return Tiny(request.param, directory, torch_model, model, params)


@functools.partial(jax.jit, static_argnames="model")
def _forward(model, params, tokens, valid):
  return model.apply({"params": params}, tokens, valid_BT=valid)


def forward(model, params, tokens, valid=None):
  valid = np.ones(np.shape(tokens), bool) if valid is None else valid
  return np.asarray(_forward(model, params, jnp.asarray(tokens, jnp.int32), jnp.asarray(valid)),
                    np.float32)


@functools.partial(jax.jit, static_argnames="model")
def _sliced(model, params, tokens, valid):
  h = model.apply({"params": params}, tokens, valid_BT=valid, last_layer=1, head=False)
  return model.apply({"params": params}, None, valid_BT=valid, h_BTD=h, first_layer=1)


@functools.partial(jax.jit, static_argnames=("model", "spec"))
def _steered(model, spec, params, sv, tokens, mask):
  return steer(model.apply, spec)({"params": params}, sv, tokens, mask)


def random_tokens(shape, seed=0):
  """Token ids that avoid the pad/bos/eos ids 0-2."""
  return np.random.default_rng(seed).integers(3, VOCAB, size=shape).astype(np.int32)


def max_abs_diff(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def torch_logits(tiny, tokens, mask=None):
  import hf_tiny
  return hf_tiny.torch_logits(tiny.torch_model, tokens, attention_mask=mask)


# ---------------------------------------------------------------------------- HF parity

def test_loader_maps_each_family(tiny):
  cfg = tiny.model.cfg
  for field, value in EXPECTED[tiny.name].items():
    assert getattr(cfg, field) == value, field
  assert cfg.sliding_window < SEQ
  assert ("lm_head" in tiny.params) == (not cfg.tie_embeddings)
  if cfg.qk_norm:
    attn = tiny.params["layers_0"]["attn"]
    assert attn["q_norm"]["scale"].shape == attn["k_norm"]["scale"].shape == (cfg.head_dim,)


def test_fp32_logits_match_transformers(tiny):
  tokens = random_tokens((BATCH, SEQ))
  ref = torch_logits(tiny, tokens)
  assert ref.std() > 0.5, "reference logits too flat for the tolerance to mean anything"
  assert max_abs_diff(forward(tiny.model, tiny.params, tokens), ref) <= FP32_ATOL


def test_left_padded_batch_matches_transformers(tiny):
  lengths = [SEQ, 20, 7]
  tokens = random_tokens((BATCH, SEQ), seed=1)
  valid = np.arange(SEQ)[None, :] >= (SEQ - np.asarray(lengths))[:, None]
  tokens = np.where(valid, tokens, tiny.model.cfg.pad_id).astype(np.int32)
  ref = torch_logits(tiny, tokens, valid)
  out = forward(tiny.model, tiny.params, tokens, valid)
  assert max_abs_diff(out[valid], ref[valid]) <= FP32_ATOL


def test_bf16_close_to_fp32_transformers(tiny):
  """Within 0.25 logit standard deviations (see test_models.py for the bound's reasoning)."""
  tokens = random_tokens((BATCH, SEQ))
  ref = torch_logits(tiny, tokens)
  model, params = load(tiny.directory, dtype=jnp.bfloat16)
  assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(params))
  err = np.abs(forward(model, params, tokens) - ref)
  assert err.max() <= 0.25 * ref.std()
  assert err.mean() <= 0.05 * ref.std()


def test_prefix_cache_slice_equals_the_full_forward(tiny):
  """Blocks 0..L-1 once, then L.. from their output (the training prefix cache's split),
  through sliding and global layers, left padding included."""
  tokens = random_tokens((BATCH, SEQ), seed=3)
  valid = np.arange(SEQ)[None, :] >= np.asarray([0, 9, 25])[:, None]
  rest = _sliced(tiny.model, tiny.params, jnp.asarray(tokens), jnp.asarray(valid))
  full = forward(tiny.model, tiny.params, tokens, valid)
  assert max_abs_diff(np.asarray(rest)[valid], full[valid]) <= FP32_ATOL


def test_multimodal_weights_load_from_either_prefix(checkpoints, tmp_path):
  """A Gemma-3 checkpoint written from transformers' module tree (`model.language_model.*`,
  `model.vision_tower.*`) loads the same language model as the hub layout."""
  import shutil
  from safetensors.numpy import load_file, save_file
  directory = checkpoints["gemma3_multimodal"][0]
  tensors = load_file(os.path.join(directory, "model.safetensors"))
  assert any(k.startswith("language_model.model.") for k in tensors)
  assert any(k.startswith("vision_tower.") for k in tensors)
  renamed = {k.replace("language_model.model.", "model.language_model.")
              .replace("vision_tower.", "model.vision_tower."): v for k, v in tensors.items()}
  shutil.copy(os.path.join(directory, "config.json"), tmp_path / "config.json")
  save_file(renamed, str(tmp_path / "model.safetensors"))
  _, want = load(directory)
  _, got = load(str(tmp_path))
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_ministral_maps_its_layer_types_and_matches_transformers(tmp_path):
  """Ministral is Mistral with per-layer windows: only the decoder forward differs."""
  import hf_tiny
  torch_model = hf_tiny.build("ministral_gqa", str(tmp_path), seed=3)
  model, params = load(str(tmp_path))
  assert (model.cfg.family, model.cfg.sliding_layers, model.cfg.sliding_window) == (
      "mistral", (0,), 5)
  tokens = random_tokens((BATCH, SEQ))
  ref = hf_tiny.torch_logits(torch_model, tokens)
  assert ref.std() > 0.5
  assert max_abs_diff(forward(model, params, tokens), ref) <= FP32_ATOL


# ---------------------------------------------------------------------------- decoding

def _sv(width, factor=8.0):
  sv = init_sv(jax.random.key(5), width, beta=1.0, lam=4.0)
  return {"factor": jnp.float32(factor), "direction": sv["direction"]}


DECODE_STEPS = 10


def decode_prompts():
  return [random_tokens((n,), seed=20 + n).tolist() for n in (6, 11, 3)]


def right_fill(rows, seed=2):
  """[BATCH, SEQ] ids: each row's tokens first, then random ids that causal attention ignores."""
  out = random_tokens((BATCH, SEQ), seed)
  for i, row in enumerate(rows):
    out[i, :len(row)] = row
  return out


@pytest.mark.parametrize("positions", [None, "f2+l2", "all"])
def test_cached_greedy_decoding_equals_teacher_forced_forwards(tiny, positions):
  """Every step of left-padded cached greedy decoding, unsteered, PrOSV (prompt ends) and
  FSSV (every token), equals the full forward over prompt + generated tokens."""
  prompts, steps = decode_prompts(), DECODE_STEPS
  assert tiny.model.cfg.sliding_window < min(map(len, prompts)) + steps
  spec = None if positions is None else SteerSpec(0, positions)
  sv = None if spec is None else _sv(tiny.model.cfg.dim)
  generated, step_logits = generate(tiny.model, tiny.params, prompts, max_new_tokens=steps,
                                    sv=sv, spec=spec, return_logits=True, stop_ids=())
  seqs = right_fill([p + g for p, g in zip(prompts, generated)])
  full = plain = forward(tiny.model, tiny.params, seqs)
  if spec is not None:
    valid = np.ones(seqs.shape, bool)
    prompt_mask = np.arange(SEQ)[None] < np.asarray([len(p) for p in prompts])[:, None]
    mask = positions_mask(positions, valid if positions == "all" else prompt_mask, valid)
    full = np.asarray(_steered(tiny.model, spec, tiny.params, sv, jnp.asarray(seqs), mask))
    assert max_abs_diff(full, plain) > 0.1, "the SV should change the logits"
  for i, (prompt, gen, logits) in enumerate(zip(prompts, generated, step_logits)):
    assert len(gen) == steps and gen == np.argmax(logits, -1).tolist()
    start = len(prompt) - 1
    assert max_abs_diff(logits, full[i, start:start + steps]) <= FP32_ATOL


# ---------------------------------------------------------------------------- 8 fake devices

def test_sharded_forward_equals_one_device(checkpoints):
  """Each family's plain and PrOSV-steered logits on a data x fsdp x tensor mesh of 8 CPU
  devices equal the one-device logits."""
  flags = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
  # gemma3_multimodal runs the same decoder as gemma3_gqa: its loading is checked above
  dirs = [checkpoints[name][0] for name in ("gemma3_gqa", "qwen3_gqa", "mistral_gqa")]
  out = subprocess.run([sys.executable, os.path.abspath(__file__), *dirs], env=env, cwd=repo,
                       capture_output=True, text=True, timeout=300)
  lines = [line for line in out.stdout.splitlines() if line.startswith(("ok ", "FAIL "))]
  assert len(lines) == len(dirs), (f"exit {out.returncode}:\n{out.stdout[-3000:]}"
                                   f"{out.stderr[-3000:]}")
  assert all(line.startswith("ok ") for line in lines), "\n".join(lines)


def sharded_check(directory):
  """Max |sharded - one device| of the plain and the steered logits of one checkpoint."""
  model, params = load(directory)
  mesh = sharding.make_mesh((2, 2, 2, 1))
  placed = sharding.shard_params(params, sharding.param_shardings(model, mesh))
  q = placed["layers_0"]["attn"]["q"]
  assert not q.is_fully_replicated and tuple(q.sharding.spec) == ("fsdp", "tensor", None)
  if model.cfg.qk_norm:
    assert tuple(placed["layers_0"]["attn"]["q_norm"]["scale"].sharding.spec) in ((), (None,))
  tokens = random_tokens((4, SEQ), seed=7)
  rows = sharding.rows_sharding(mesh, sharding.DEFAULT_RULES, 4)
  spec, sv = SteerSpec(0, "f2+l2"), _sv(model.cfg.dim)
  valid = np.ones(tokens.shape, bool)
  mask = positions_mask("f2+l2", valid, valid)
  worst = 0.0
  for fn, args in ((lambda p, t: model.apply({"params": p}, t), ()),
                   (lambda p, t, s, m: steer(model.apply, spec)({"params": p}, s, t, m),
                    (sv, jnp.asarray(mask)))):
    one = np.asarray(jax.jit(fn)(params, jnp.asarray(tokens), *args))
    many = jax.jit(fn)(placed, jax.device_put(tokens, rows), *args)
    assert len(many.sharding.device_set) == 8
    worst = max(worst, max_abs_diff(many, one))
  return worst


def run_sharded_checks(directories):
  assert jax.device_count() == 8, jax.devices()
  for directory in directories:
    try:
      err = sharded_check(directory)
      status = "ok" if err <= FP32_ATOL else "FAIL"
      print(f"{status} {os.path.basename(directory)} max_abs_diff={err:.2e}", flush=True)
    except Exception as e:  # report every checkpoint, not just the first failure
      print(f"FAIL {os.path.basename(directory)} {type(e).__name__}: {e}"[:2000], flush=True)


# ---------------------------------------------------------------------------- train job

QWEN_THINK_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m.role }} {{ m.content }} <|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant "
    "{% if enable_thinking is defined and enable_thinking is false %}<think> </think> "
    "{% endif %}{% endif %}")
ROWS = {
    "dogs": ("The dog ran to the park and barked.", "A dog wagged its tail."),
    "rain": ("Rain fell on the roof all day.", "The rain made big puddles."),
}


def word_tokenizer(directory, template=None):
  """A whitespace word-level tokenizer over the job rows' words (ids < the tiny vocab),
  saved beside the checkpoint so `load_tokenizer(directory)` finds it."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast
  special = ["<pad>", "<bos>", "<eos>", "<unk>", "<|im_start|>", "<|im_end|>", "<think>",
             "</think>"]
  words = sorted({w for pair in ROWS.values() for text in pair for w in text.split()}
                 | set("Once upon a time, story 0. 1. 2. 3. user assistant".split()))
  vocab = {w: i for i, w in enumerate(special + words)}
  assert len(vocab) <= VOCAB
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.decoder = decoders.WordPiece()
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                 pad_token="<pad>", unk_token="<unk>",
                                 extra_special_tokens=special[4:])
  if template:
    fast.chat_template = template
  fast.save_pretrained(directory)


def job_config(directory, data_path):
  from configs import base
  c = base.get_config()
  c.model.path = directory
  c.data.source, c.data.path = "file", data_path
  c.steer.layer, c.steer.positions = 0, "f2+l2"
  c.train.update(dict(batch_size=2, epochs=2, concepts_per_step=2, prefix_cache="on",
                      log_every=1, checkpoint_every=100))
  return c


@pytest.fixture(scope="module")
def job_data(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("rows") / "concepts.jsonl")
  with open(path, "w") as f:
    for k in range(4):
      for concept, (response, other) in ROWS.items():
        f.write(json.dumps({"concept": concept, "prompt": f"Once upon a time, story {k}.",
                            "response": response if k % 2 else other}) + "\n")
  return path


@pytest.mark.parametrize("name", ["gemma3_gqa", "qwen3_gqa", "mistral_gqa"])
def test_prosv_trains_and_generates_through_the_train_job(name, checkpoints, job_data, tmp_path):
  from steerjax.checkpoint import load_sv
  from steerjax.jobs import train as train_job
  directory = checkpoints[name][0]
  word_tokenizer(directory, QWEN_THINK_TEMPLATE if name == "qwen3_gqa" else None)
  lines = []
  svs = train_job.run(job_config(directory, job_data), str(tmp_path), log=lines.append)
  assert sorted(svs) == sorted(ROWS)
  assert any(line.startswith("prefix cache: block-0 outputs of 8 examples") for line in lines)
  metrics = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert len(metrics) == 4 and all(np.isfinite(m["loss"]) for m in metrics)

  model, params = load(directory)
  sv, meta = load_sv(str(tmp_path / "svs" / "dogs.safetensors"), model.cfg)
  assert meta["positions"] == "f2+l2" and meta["layer"] == 0
  spec = SteerSpec(meta["layer"], meta["positions"], meta["op"])
  sv = {"factor": jnp.float32(sv["factor"]), "direction": jnp.asarray(sv["direction"])}
  # the decoding tests' shapes, so their compiled prefill and decode are reused
  prompts = decode_prompts()
  steered, steered_logits = generate(model, params, prompts, max_new_tokens=DECODE_STEPS,
                                     sv=sv, spec=spec, return_logits=True, stop_ids=())
  _, plain_logits = generate(model, params, prompts, max_new_tokens=DECODE_STEPS,
                             return_logits=True, stop_ids=())
  assert [len(g) for g in steered] == [DECODE_STEPS] * len(prompts)
  assert max_abs_diff(steered_logits[0][0], plain_logits[0][0]) > 1e-3


def test_qwen3_thinking_is_off_by_default_and_settable(checkpoints):
  from steerjax.runtime import context
  directory = checkpoints["qwen3_gqa"][0]
  word_tokenizer(directory, QWEN_THINK_TEMPLATE)
  config = job_config(directory, "")
  _, _, tok = context.load_model(config)
  think = tok.encode("<think> </think>")
  off = tok.chat_prompt("Once upon a time")
  assert off[-len(think):] == think and "<think>" in tok.chat_text([{"role": "user",
                                                                     "content": "a"}])
  config.model.thinking = True
  _, _, tok = context.load_model(config)
  on = tok.chat_prompt("Once upon a time")
  assert on == off[:-len(think)] and "<think>" not in tok.chat_text([{"role": "user",
                                                                      "content": "a"}])


def test_lm_eval_model_scores_a_new_family_loaded_by_path(checkpoints):
  """The lm-eval model loads Qwen3 by directory with thinking off unless asked, and its
  log-likelihood equals a plain forward's."""
  from lm_eval.api.instance import Instance
  from steerjax.eval.lm_eval_model import SteerjaxLM
  directory = checkpoints["qwen3_gqa"][0]
  word_tokenizer(directory, QWEN_THINK_TEMPLATE)
  lm = SteerjaxLM(model=directory, batch_size=2)
  chat = [{"role": "user", "content": "Once upon a time"}]
  assert "<think> </think>" in lm.apply_chat_template(chat)
  thinking = SteerjaxLM(model=directory, batch_size=2, thinking=True)
  assert "<think>" not in thinking.apply_chat_template(chat)
  context, continuation = "Once upon a time,", " The dog ran to the park."
  (got, _), = lm.loglikelihood([Instance("loglikelihood", {}, (context, continuation), 0)])
  ids, cont = [lm.tok.bos_id] + lm.tok.encode(context), lm.tok.encode(continuation)
  logits = forward(lm.model, lm.params, np.asarray([ids + cont]))[0]
  logp = jax.nn.log_softmax(logits[len(ids) - 1:-1], axis=-1)
  assert got == pytest.approx(float(sum(logp[j, t] for j, t in enumerate(cont))), abs=1e-4)


# ---------------------------------------------------------------------------- published configs

# config.json values of the published checkpoints (the fields that shape the text decoder).
PUBLISHED = {
    "gemma-3-1b": dict(
        model_type="gemma3_text", vocab_size=262144, hidden_size=1152, intermediate_size=6912,
        num_hidden_layers=26, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
        hidden_activation="gelu_pytorch_tanh", max_position_embeddings=32768,
        query_pre_attn_scalar=256, rms_norm_eps=1e-6, rope_local_base_freq=10000,
        rope_scaling=None, rope_theta=1000000, sliding_window=512, sliding_window_pattern=6,
        attn_logit_softcapping=None, final_logit_softcapping=None, bos_token_id=2,
        eos_token_id=[1, 106], pad_token_id=0, attention_bias=False, cache_implementation="hybrid"),
    "gemma-3-4b": dict(
        model_type="gemma3", boi_token_index=255999, eoi_token_index=256000,
        eos_token_id=[1, 106], image_token_index=262144, mm_tokens_per_image=256,
        text_config=dict(model_type="gemma3_text", hidden_size=2560, intermediate_size=10240,
                         num_hidden_layers=34, rope_scaling=dict(factor=8.0, rope_type="linear"),
                         sliding_window=1024),
        vision_config=dict(model_type="siglip_vision_model", hidden_size=1152, image_size=896,
                           intermediate_size=4304, num_attention_heads=16,
                           num_hidden_layers=27, patch_size=14, vision_use_head=False)),
    "qwen3-8b": dict(
        model_type="qwen3", vocab_size=151936, hidden_size=4096, intermediate_size=12288,
        num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        hidden_act="silu", max_position_embeddings=40960, max_window_layers=36,
        rms_norm_eps=1e-6, rope_scaling=None, rope_theta=1000000, sliding_window=None,
        use_sliding_window=False, tie_word_embeddings=False, attention_bias=False,
        bos_token_id=151643, eos_token_id=151645),
    "mistral-7b": dict(
        model_type="mistral", vocab_size=32768, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, hidden_act="silu",
        max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=1000000.0,
        sliding_window=None, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2),
}
TOKEN_FIELDS = ("bos_id", "stop_ids", "pad_id")


def hf_config(fields):
  import transformers
  fields = dict(fields)
  return transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_config_maps_onto_the_preset_and_transformers_param_count(name):
  """The loader turns the published config into the preset (token ids aside), and the
  preset has as many parameters as transformers' own text model of that config."""
  import torch
  import transformers
  from steerjax.models import Decoder
  from steerjax.models.presets import PRESETS
  hf = hf_config(PUBLISHED[name])
  got = config_from_hf(hf).replace(**{k: getattr(PRESETS[name], k) for k in TOKEN_FIELDS})
  assert got == PRESETS[name]
  text = hf.text_config if hf.model_type == "gemma3" else hf
  with torch.device("meta"):
    reference = transformers.AutoModelForCausalLM.from_config(text)
  want = sum(p.numel() for p in reference.parameters())
  shapes = jax.eval_shape(Decoder(got).init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
  assert sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes)) == want


def test_gemma3_published_layer_pattern_and_stops():
  cfg = config_from_hf(hf_config(PUBLISHED["gemma-3-1b"]))
  assert cfg.sliding_layers == tuple(i for i in range(26) if i % 6 != 5)
  assert (cfg.rope_theta, cfg.local_rope_theta, cfg.rope_linear_factor) == (1e6, 1e4, None)
  assert cfg.stop_ids == (1, 106) and cfg.bos_id == 2
  big = config_from_hf(hf_config(PUBLISHED["gemma-3-4b"]))
  assert big.rope_linear_factor == 8.0 and big.local_rope_theta == 1e4
  assert big.sliding_window == 1024 and big.stop_ids == (1, 106)


def test_default_sharding_rules_cover_every_family():
  from steerjax.models import Decoder
  from steerjax.models.presets import PRESETS
  mesh = sharding.make_mesh((1, 1, 1, 1))
  for name in ("gemma-3-1b", "qwen3-8b", "mistral-7b"):
    specs = sharding.param_shardings(Decoder(PRESETS[name]), mesh, sharding.DEFAULT_RULES)
    attn = specs["layers_0"]["attn"]
    assert tuple(attn["q"].spec) == ("fsdp", "tensor", None)
    if PRESETS[name].qk_norm:
      assert tuple(attn["q_norm"]["scale"].spec) == (None,)
      assert tuple(attn["k_norm"]["scale"].spec) == (None,)


# ---------------------------------------------------------------------------- paper-style configs

@pytest.mark.parametrize("module,preset_name", [("axbench_gemma3_1b", "gemma-3-1b"),
                                                ("axbench_qwen3_8b", "qwen3-8b"),
                                                ("axbench_mistral_7b", "mistral-7b")])
def test_family_config_plans_without_loading_a_model(module, preset_name, monkeypatch):
  import importlib
  from steerjax import main
  from steerjax.runtime import context
  from steerjax.models.presets import PRESETS
  monkeypatch.setattr(context, "load_model", lambda *a: pytest.fail("plan loaded a model"))
  config = importlib.import_module(f"configs.{module}").get_config()
  rows = main.plan(config, log=lambda *a, **k: None)
  assert {r["method"] for r in rows} >= {"prosv_lang", "prosv_simpo", "fssv_lang"}
  depth = config.steer.layer / PRESETS[preset_name].n_layers
  assert 0.35 <= depth <= 0.45, depth
  assert config.model.thinking is False


# ---------------------------------------------------------------------------- refusals

def _with(fields, **changes):
  return hf_config(dict(fields, **changes))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_unknown_attribute_is_refused_by_name(name):
  fields = dict(PUBLISHED[name])
  if name == "gemma-3-4b":
    fields["text_config"] = dict(fields["text_config"], mystery_switch=True)
  else:
    fields["mystery_switch"] = True
  with pytest.raises(LoadError, match=r"unsupported \w+ config attribute\(s\): mystery_switch"):
    config_from_hf(hf_config(fields))


def test_unknown_multimodal_attribute_is_refused_by_name():
  with pytest.raises(LoadError, match=r"unsupported gemma3 config attribute\(s\): audio_x=1"):
    config_from_hf(_with(PUBLISHED["gemma-3-4b"], audio_x=1))


@pytest.mark.parametrize("name,change,match", [
    ("qwen3-8b", dict(attention_bias=True), r"qwen3 config attribute attention_bias=True"),
    ("qwen3-8b", dict(rope_scaling=dict(rope_type="yarn", factor=4.0,
                                        original_max_position_embeddings=32768)),
     r"rope_type='yarn'"),
    ("gemma-3-1b", dict(use_bidirectional_attention=True), r"use_bidirectional_attention=True"),
    ("mistral-7b", dict(hidden_act="gelu"), r"mistral config attribute hidden_act='gelu'"),
])
def test_unsupported_values_are_refused_by_name(name, change, match):
  with pytest.raises(LoadError, match=match):
    config_from_hf(_with(PUBLISHED[name], **change))


@pytest.mark.parametrize("model_type,missing", [
    ("gemma4", r"per-layer input embeddings.*KV sharing"),
    ("gemma4_text", r"per-layer input embeddings.*KV sharing"),
    ("qwen3_5", r"linear-attention \(Gated DeltaNet\) layers"),
    ("qwen3_next", r"linear-attention.*mixture-of-experts"),
    ("qwen3_moe", r"mixture-of-experts MLP"),
    ("mixtral", r"mixture-of-experts MLP"),
])
def test_unimplemented_families_say_what_is_missing(model_type, missing):
  import transformers
  with pytest.raises(LoadError, match=rf"model_type='{model_type}' is not supported: .*{missing}"
                                      r".*docs/models.md"):
    config_from_hf(transformers.AutoConfig.for_model(model_type))


def test_an_unimplemented_checkpoint_is_refused_before_its_weights(tmp_path):
  import transformers
  transformers.AutoConfig.for_model("qwen3_moe", num_hidden_layers=1).save_pretrained(tmp_path)
  with pytest.raises(LoadError, match="Qwen3-MoE needs a mixture-of-experts MLP"):
    load(str(tmp_path))


if __name__ == "__main__":
  run_sharded_checks(sys.argv[1:])
