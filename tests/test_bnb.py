"""bitsandbytes NF4 checkpoints: a tiny packed checkpoint written here in bitsandbytes'
safetensors layout, dequantized and compared with a reference written from the format's
definition (the NF4 codebook, block absmax, double quantization of the absmax)."""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from steerjax.models import bnb
from steerjax.models.loading import load, params_from_hf, config_from_hf

# NF4 (QLoRA, Dettmers et al. 2023, App. E): the 16 normal-float levels.
NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
                0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], np.float32)
# An 8-bit signed code for the absmax (bitsandbytes uses its dynamic map; any 256 levels
# exercise the lookup).
CODE8 = np.sort(np.concatenate([-np.geomspace(1.0, 1e-3, 128), np.geomspace(1e-3, 1.0, 127),
                                [0.0]])).astype(np.float32)


def pack_nf4(w, block=64, nested_block=256):
  """`w` quantized the way bitsandbytes stores it: {suffix: tensor} plus the plain parts a
  reference needs."""
  flat = np.asarray(w, np.float32).reshape(-1)
  n = flat.size
  blocks = -(-n // block)
  padded = np.zeros(blocks * block, np.float32)
  padded[:n] = flat
  absmax = np.abs(padded.reshape(blocks, block)).max(1)
  codes = np.abs(padded[:, None] / np.repeat(absmax, block)[:, None] - NF4).argmin(1)[:n]
  codes = np.concatenate([codes, [0] * (n % 2)]).astype(np.uint8)
  packed = (codes[0::2] << 4) | codes[1::2]
  offset = float(absmax.mean())
  centred = absmax - offset
  groups = -(-blocks // nested_block)
  nested = np.array([max(np.abs(centred[g * nested_block:(g + 1) * nested_block]).max(), 1e-6)
                     for g in range(groups)], np.float32)
  scaled = centred / np.repeat(nested, nested_block)[:blocks]
  q_absmax = np.abs(scaled[:, None] - CODE8).argmin(1).astype(np.uint8)
  state = {"quant_type": "nf4", "blocksize": block, "dtype": "bfloat16",
           "shape": list(np.shape(w)), "nested_blocksize": nested_block,
           "nested_dtype": "float32", "nested_offset": offset}
  blob = np.frombuffer(json.dumps(state).encode("utf-8"), np.uint8).copy()
  stored = {"": packed.reshape(-1, 1), ".absmax": q_absmax, ".quant_map": NF4.copy(),
            ".nested_absmax": nested, ".nested_quant_map": CODE8.copy(),
            ".quant_state.bitsandbytes__nf4": blob}
  return stored, dict(codes=codes[:n], q_absmax=q_absmax, nested=nested, offset=offset,
                      block=block, nested_block=nested_block)


def reference(w_shape, parts):
  """Element by element from the definition, float32 arithmetic, rounded to bf16."""
  out = np.empty(int(np.prod(w_shape)), np.float32)
  for i, code in enumerate(parts["codes"]):
    j = i // parts["block"]
    scale = (CODE8[parts["q_absmax"][j]] * parts["nested"][j // parts["nested_block"]]
             + np.float32(parts["offset"]))
    out[i] = NF4[code] * np.float32(scale)
  return out.astype(ml_dtypes.bfloat16).reshape(w_shape)


def test_dequantization_equals_the_format_definition():
  rng = np.random.default_rng(0)
  # 600 rows x 3: 1800 values in 29 blocks of 64 (the last one short), 2 nested blocks of
  # 16 absmax codes; and an odd count (3 x 5) whose last byte holds one code.
  for shape, nested_block in (((600, 3), 16), ((3, 5), 256)):
    w = rng.normal(size=shape).astype(np.float32)
    stored, parts = pack_nf4(w, nested_block=nested_block)
    tensors = {f"m.weight{k}": v for k, v in stored.items()}
    tensors["m.bias"] = np.ones(3, np.float32)
    assert bnb.is_quantized(tensors)
    out = bnb.dequantize_tensors(tensors)
    assert sorted(out) == ["m.bias", "m.weight"] and out["m.weight"].dtype == ml_dtypes.bfloat16
    want = reference(shape, parts)
    assert np.array_equal(out["m.weight"].view(np.uint16), want.view(np.uint16))
    # and it is w up to 4-bit rounding: half the widest NF4 gap times the block scale
    err = np.abs(np.asarray(out["m.weight"], np.float32) - w)
    assert err.max() <= 0.17 * np.abs(w).max() and err.mean() < 0.1
    np.testing.assert_array_equal(out["m.bias"], tensors["m.bias"])


def test_single_quantized_absmax_and_bad_inputs():
  w = np.linspace(-2, 2, 128, dtype=np.float32).reshape(2, 64)
  stored, parts = pack_nf4(w)
  absmax = np.abs(w).max(1)                              # plain float32 absmax: no nesting
  state = {"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [2, 64]}
  got = bnb.dequantize(stored[""], state, absmax, NF4)
  np.testing.assert_array_equal(np.asarray(got, np.float32),
                                (NF4[parts["codes"]].reshape(2, 64) * absmax[:, None])
                                .astype(ml_dtypes.bfloat16).astype(np.float32))
  with pytest.raises(ValueError, match="packed weight has 64 bytes; shape"):
    bnb.dequantize(stored[""], dict(state, shape=[4, 64]), absmax, NF4)
  tensors = {f"m.weight{k}": v for k, v in stored.items() if k != ".nested_quant_map"}
  with pytest.raises(ValueError, match=r"lacks \['nested_quant_map'\]"):
    bnb.dequantize_tensors(tensors)
  with pytest.raises(ValueError, match="bnb_4bit_quant_type='fp4'"):
    bnb.check_config({"quant_method": "bitsandbytes", "load_in_4bit": True,
                      "bnb_4bit_quant_type": "fp4"})
  with pytest.raises(ValueError, match="quant_method='gptq'"):
    bnb.check_config({"quant_method": "gptq"})


def test_a_packed_checkpoint_loads_like_its_dequantized_weights(tmp_path):
  """A tiny Qwen2 directory with its linear weights in NF4 (config.json carrying the
  quantization_config) loads to the params of the dequantized tensors."""
  import hf_tiny
  plain = str(tmp_path / "plain")
  hf_tiny.build("qwen2_mqa", plain)
  from safetensors.numpy import load_file
  tensors = load_file(os.path.join(plain, "model.safetensors"))
  quant_dir = tmp_path / "nf4"
  quant_dir.mkdir()
  stored, expected = {}, {}
  for key, value in tensors.items():
    if key.endswith("proj.weight"):
      parts_stored, parts = pack_nf4(value)
      stored.update({key + k: v for k, v in parts_stored.items()})
      expected[key] = reference(value.shape, parts)
    else:
      stored[key] = value
      expected[key] = value
  save_file(stored, str(quant_dir / "model.safetensors"))
  with open(os.path.join(plain, "config.json")) as f:
    config = json.load(f)
  config["quantization_config"] = {
      "quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
      "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": "bfloat16"}
  with open(quant_dir / "config.json", "w") as f:
    json.dump(config, f)
  model, params = load(str(quant_dir))
  from transformers import AutoConfig
  want = params_from_hf(config_from_hf(AutoConfig.from_pretrained(plain)), expected,
                        np.float32)
  import jax
  for got, ref in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
  assert model.cfg.family == "qwen2"
