"""bitsandbytes 4-bit NF4 checkpoints (e.g. `unsloth/Qwen2.5-32B-Instruct-bnb-4bit`),
dequantized to bf16 at load, the values bitsandbytes computes with.

A quantized `Linear4bit` weight `<w>` is stored in safetensors as
  `<w>`                                    uint8, two 4-bit codes per byte (first the high
                                           nibble), the weight flattened in row-major order;
  `<w>.quant_map`                          float32 [16], the codebook (NF4);
  `<w>.absmax`                             one scale per `blocksize` values: float32, or
                                           uint8 codes when double-quantized;
  `<w>.quant_state.bitsandbytes__nf4`      uint8, JSON bytes of {quant_type, blocksize,
                                           dtype, shape} and, double-quantized,
                                           {nested_blocksize, nested_dtype, nested_offset};
  `<w>.nested_absmax`, `<w>.nested_quant_map`   double quantization: float32 scales, one per
                                           `nested_blocksize` absmax codes, and the 256-entry
                                           8-bit codebook.
Value i is `quant_map[code_i] * absmax[i // blocksize]`; a double-quantized
`absmax[j] = nested_quant_map[q_j] * nested_absmax[j // nested_blocksize] + nested_offset`.
Tensors without a quant state (embeddings, norms, skipped modules) pass through.
"""

from __future__ import annotations

import json
from typing import Mapping

import ml_dtypes
import numpy as np

STATE_KEY = ".quant_state.bitsandbytes__"
PARTS = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")


class BnbError(ValueError):
  """A bitsandbytes checkpoint steerjax cannot dequantize, with what is wrong."""


def check_config(quantization_config) -> None:
  """Accept `config.json`'s quantization_config only for bitsandbytes 4-bit NF4."""
  q = quantization_config if isinstance(quantization_config, Mapping) \
      else quantization_config.to_dict()
  method, four_bit = q.get("quant_method"), q.get("load_in_4bit")
  kind = q.get("bnb_4bit_quant_type", "fp4")
  if method != "bitsandbytes" or not four_bit or kind != "nf4":
    raise BnbError(f"config.json quantization_config (quant_method={method!r}, load_in_4bit="
                   f"{four_bit!r}, bnb_4bit_quant_type={kind!r}) is not supported; steerjax "
                   "loads bitsandbytes 4-bit NF4 checkpoints, or unquantized ones")


def _state(tensors: Mapping, name: str) -> dict:
  keys = [k for k in tensors if k.startswith(name + STATE_KEY)]
  state = json.loads(bytes(np.asarray(tensors[keys[0]], np.uint8)).decode("utf-8"))
  if state.get("quant_type") != "nf4":
    raise BnbError(f"{name}: quant_type={state.get('quant_type')!r}; only nf4 is supported")
  return state


def dequantize(packed, state: Mapping, absmax, quant_map, nested_absmax=None,
               nested_quant_map=None, dtype=ml_dtypes.bfloat16) -> np.ndarray:
  """One weight from its packed codes and quant state, as `dtype` in `state["shape"]`."""
  shape = tuple(state["shape"])
  n = int(np.prod(shape))
  packed = np.asarray(packed, np.uint8).reshape(-1)
  if packed.size != (n + 1) // 2:
    raise BnbError(f"packed weight has {packed.size} bytes; shape {shape} needs {(n + 1) // 2}")
  codes = np.stack([packed >> 4, packed & 0x0F], axis=1).reshape(-1)[:n]
  scales = np.asarray(absmax)
  if "nested_offset" in state:   # double quantization: the scales are 8-bit codes themselves
    block2 = int(state["nested_blocksize"])
    nested = np.asarray(nested_absmax, np.float32)
    scales = (np.asarray(nested_quant_map, np.float32)[scales.astype(np.int64)]
              * nested[np.arange(scales.size) // block2]
              + np.float32(state["nested_offset"]))
  scales = scales.astype(np.float32)
  block = int(state["blocksize"])
  if scales.size != -(-n // block):
    raise BnbError(f"absmax has {scales.size} scales; {n} values in blocks of {block} need "
                   f"{-(-n // block)}")
  values = np.asarray(quant_map, np.float32)[codes] * scales[np.arange(n) // block]
  return values.astype(dtype).reshape(shape)


def is_quantized(tensors: Mapping) -> bool:
  return any(STATE_KEY in k for k in tensors)


def dequantize_tensors(tensors: Mapping, dtype=ml_dtypes.bfloat16) -> dict:
  """The checkpoint's tensors with every 4-bit weight dequantized and its quant state
  removed; other tensors unchanged."""
  names = sorted({k.split(STATE_KEY)[0] for k in tensors if STATE_KEY in k})
  out = dict(tensors)
  for name in names:
    state = _state(tensors, name)
    parts = {p: tensors.get(f"{name}.{p}") for p in PARTS}
    missing = [p for p in ("absmax", "quant_map") if parts[p] is None]
    if "nested_offset" in state:
      missing += [p for p in ("nested_absmax", "nested_quant_map") if parts[p] is None]
    if name not in tensors or missing:
      raise BnbError(f"4-bit weight {name!r} lacks {missing or ['its packed data']} in the "
                     "checkpoint")
    out[name] = dequantize(tensors[name], state, dtype=dtype, **parts)
    for key in [k for k in out if k.startswith(name + ".")]:
      del out[key]
  return out
