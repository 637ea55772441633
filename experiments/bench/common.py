"""Shared pieces of the CPU benchmarks: machine facts, interleaved timing, matmul peak,
identical-weight Gemma-2 models for steerjax and transformers, synthetic data, FLOP counts,
tables and JSON output.

Every benchmark times the frameworks in ONE process and interleaves their repetitions
(A B C, A B C, ...) so that both see the same background load; it reports medians.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

VOCAB = 32768
PROMPT_LEN = 20        # mean prompt length (tokens, BOS included)
SEQ_LEN = 160          # packed training length: prompt + response (+ pad)
BATCH = 12


# ---------------------------------------------------------------------------- machine

def setup_env() -> None:
  """Defaults for a benchmark process; call before torch is imported. STEERJAX_DATA falls
  back to the checkout's sibling shared/assets. torch's OpenMP threads spin at barriers by
  default; on a machine shared with other jobs a descheduled peer makes every barrier wait
  out a scheduler slice (measured here: torch's train step 1.5x and its decode loop up to
  10x slower). Passive waiting removes that; set OMP_WAIT_POLICY yourself to override."""
  os.environ.setdefault("STEERJAX_DATA", os.path.normpath(os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "assets")))
  os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def usable_cores() -> int:
  """Cores this process may run on (XLA:CPU sizes its thread pool by this affinity mask)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def set_threads() -> int:
  """Give torch as many intra-op threads as XLA:CPU uses: all usable cores. Run under
  `taskset -c 0` to compare both frameworks single-threaded."""
  import torch
  n = usable_cores()
  torch.set_num_threads(n)
  return n


def loadavg() -> List[float]:
  with open("/proc/loadavg") as f:
    return [float(x) for x in f.read().split()[:3]]


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def machine() -> dict:
  """What ran the benchmark: CPU, cores, memory, library versions, thread counts."""
  import jax
  info = {"cpu": _cpu_model(), "cores": os.cpu_count(), "usable_cores": usable_cores(), "python": platform.python_version(),
          "jax": jax.__version__, "jax_backend": jax.default_backend(),
          "jax_devices": [str(d) for d in jax.devices()], "loadavg_start": loadavg(),
          "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
          "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}
  try:
    import flax
    info["flax"] = flax.__version__
  except ImportError:
    pass
  try:
    import torch
    import transformers
    info.update(torch=torch.__version__, transformers=transformers.__version__,
                torch_threads=torch.get_num_threads())
  except ImportError:
    pass
  try:
    with open("/proc/meminfo") as f:
      info["mem_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
  except OSError:
    pass
  return info


def wait_for_quiet(max_load: float, timeout_s: float = 120.0, log=print) -> List[float]:
  """Wait (up to timeout_s) until the 1-minute load average is below max_load."""
  t0 = time.time()
  load = loadavg()
  while load[0] > max_load and time.time() - t0 < timeout_s:
    log(f"  load {load[0]:.2f} > {max_load}; waiting")
    time.sleep(10)
    load = loadavg()
  return load


# ---------------------------------------------------------------------------- timing

def time_once(fn: Callable[[], object]) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def interleaved(fns: Dict[str, Callable[[], object]], reps: int, warmup: int = 1,
                log=None) -> Dict[str, List[float]]:
  """Seconds per call of each fn, `reps` rounds after `warmup` rounds. Each round runs every
  fn once; the order rotates by one each round so no fn always follows the same one.
  Each fn must block until its work is done."""
  names = list(fns)
  for _ in range(warmup):
    for name in names:
      fns[name]()
  times = {name: [] for name in names}
  for r in range(reps):
    order = names[r % len(names):] + names[:r % len(names)]
    for name in order:
      times[name].append(time_once(fns[name]))
    if log:
      log(f"  round {r + 1}/{reps}: " + ", ".join(f"{n} {times[n][-1] * 1e3:.0f} ms"
                                                    for n in names))
  return times


def median(xs: Sequence[float]) -> float:
  return float(statistics.median(xs))


def summary(xs: Sequence[float]) -> dict:
  """Median and spread of a list of seconds."""
  return {"median_s": median(xs), "min_s": float(min(xs)), "max_s": float(max(xs)),
          "runs": len(xs)}


# ---------------------------------------------------------------------------- matmul peak

def matmul_peak(n: int = 2048, reps: int = 5) -> dict:
  """fp32 GFLOP/s of an n x n x n matmul in JAX (jnp.dot) and torch (torch.mm), interleaved.
  The best of the two medians is used as the machine's fp32 matmul peak."""
  import jax
  import jax.numpy as jnp
  import torch
  rng = np.random.default_rng(0)
  a = rng.standard_normal((n, n), np.float32)
  b = rng.standard_normal((n, n), np.float32)
  ja, jb = jnp.asarray(a), jnp.asarray(b)
  ta, tb = torch.from_numpy(a), torch.from_numpy(b)
  dot = jax.jit(jnp.dot)
  fns = {"jax": lambda: dot(ja, jb).block_until_ready(), "torch": lambda: torch.mm(ta, tb)}
  times = interleaved(fns, reps, warmup=2)
  flops = 2.0 * n ** 3
  out = {name: flops / median(t) / 1e9 for name, t in times.items()}
  out["peak_gflops"] = max(out["jax"], out["torch"])
  out["n"] = n
  return out


# ---------------------------------------------------------------------------- models

def gemma2_shape(dim: int, layers: int = 8, vocab: int = VOCAB, head_dim: int = 128) -> dict:
  """A Gemma-2 layout scaled to width `dim`: heads = dim / head_dim, kv heads = heads / 2
  (at least 1), MLP 4x (Gemma-2-2B's ratio), query scalar = head_dim."""
  heads = max(dim // head_dim, 1)
  return dict(dim=dim, layers=layers, vocab=vocab, heads=heads, kv_heads=max(heads // 2, 1),
              head_dim=head_dim, hidden=4 * dim)


def gemma2_hf_config(shape: dict):
  import transformers
  cfg = transformers.Gemma2Config(
      vocab_size=shape["vocab"], hidden_size=shape["dim"], num_hidden_layers=shape["layers"],
      num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
      head_dim=shape["head_dim"], intermediate_size=shape["hidden"],
      query_pre_attn_scalar=shape["head_dim"], max_position_embeddings=2048,
      sliding_window=4096, bos_token_id=2, eos_token_id=1, pad_token_id=0,
      tie_word_embeddings=True)
  cfg._attn_implementation = "eager"
  return cfg


def _randomize(model, seed: int) -> None:
  """Weights with O(1) activations: fan-in scaled matrices, embeddings N(0, 1/d),
  norm weights near their identity value. Keeps fp32 values far from denormals."""
  import torch
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in sorted(model.named_parameters()):
      if "norm" in name:
        p.copy_(0.1 * torch.randn(p.shape, generator=gen))   # Gemma norms apply (1 + w)
      elif "embed_tokens" in name:
        p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
      else:
        p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))


def build_pair(shape: dict, seed: int = 0, directory: Optional[str] = None):
  """(torch model, steerjax model, steerjax params) holding the same fp32 weights.

  The torch model is a transformers Gemma2ForCausalLM (eager attention, frozen, eval);
  its checkpoint is written as safetensors and read back by steerjax's HF loader."""
  import torch
  import transformers
  from steerjax.models.loading import load_hf_dir
  torch.manual_seed(seed)
  hf = transformers.AutoModelForCausalLM.from_config(gemma2_hf_config(shape), dtype=torch.float32)
  _randomize(hf, seed)
  hf.eval().requires_grad_(False)
  own = directory is None
  directory = directory or tempfile.mkdtemp(prefix="steerjax_bench_")
  hf.save_pretrained(directory, safe_serialization=True)
  model, params = load_hf_dir(directory)
  if own:
    for f in os.listdir(directory):
      os.remove(os.path.join(directory, f))
    os.rmdir(directory)
  return hf, model, params


# ---------------------------------------------------------------------------- data

def synthetic_pairs(n: int, vocab: int, seq_len: int = SEQ_LEN, prompt_len: int = PROMPT_LEN,
                    response_len: Optional[int] = None, seed: int = 0, bos: int = 2,
                    low: int = 3, neutral: bool = True):
  """n (prompt, response, neutral) token lists of random ids in [low, vocab). Prompts have
  prompt_len +- 4 tokens, BOS included; responses have `response_len` tokens, or by default
  fill each sequence to exactly seq_len (so a packed batch has no padding)."""
  rng = np.random.default_rng(seed)
  prompts, responses, neutrals = [], [], []
  for _ in range(n):
    p = int(rng.integers(prompt_len - 4, prompt_len + 5))
    r = response_len or seq_len - p
    prompts.append([bos] + rng.integers(low, vocab, p - 1).tolist())
    responses.append(rng.integers(low, vocab, r).tolist())
    neutrals.append(rng.integers(low, vocab, r).tolist())
  return prompts, responses, (neutrals if neutral else None)


def concept_data(name: str, n: int, vocab: int, seed: int, **kw):
  from steerjax.data.batching import ConceptData
  prompts, responses, neutrals = synthetic_pairs(n, vocab, seed=seed, **kw)
  return ConceptData(name, prompts, responses, neutrals)


# ---------------------------------------------------------------------------- FLOPs

def block_flops(shape: dict, batch: int, seq: int) -> float:
  """Matmul FLOPs of one decoder block's forward over [batch, seq] tokens (full T x T
  attention, as both frameworks compute it)."""
  d, h, k, e, f = shape["dim"], shape["heads"], shape["kv_heads"], shape["head_dim"], shape["hidden"]
  tokens = batch * seq
  proj = 2 * tokens * d * (2 * h * e + 2 * k * e)     # q, o and k, v
  mlp = 2 * tokens * d * f * 3
  attn = 2 * 2 * batch * h * seq * seq * e            # q k^T and p v
  return float(proj + mlp + attn)


def block_backward_flops(shape: dict, batch: int, seq: int) -> float:
  """Input-gradient matmul FLOPs of one block (frozen weights: no weight gradients).
  Projections cost their forward once more; attention needs four T x T products."""
  fwd = block_flops(shape, batch, seq)
  attn = 2 * 2 * batch * shape["heads"] * seq * seq * shape["head_dim"]
  return fwd + attn


def head_flops(shape: dict, batch: int, seq: int) -> float:
  return float(2 * batch * seq * shape["dim"] * shape["vocab"])


def step_flops(shape: dict, batch: int, seq: int, forward_blocks: int,
               backward_blocks: int, head_positions: Optional[int] = None) -> float:
  """Forward through `forward_blocks` blocks and the head, backward (input gradients)
  through the head and the last `backward_blocks` blocks. The head runs at
  `head_positions` positions per sequence (default: all `seq`)."""
  return (forward_blocks * block_flops(shape, batch, seq)
          + backward_blocks * block_backward_flops(shape, batch, seq)
          + 2 * head_flops(shape, batch, head_positions or seq))


# ---------------------------------------------------------------------------- output

def base_parser(doc: str, default_out: str) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default=default_out, help="JSON results path")
  p.add_argument("--reps", type=int, default=5, help="timed repetitions per variant (>= 5)")
  p.add_argument("--quick", action="store_true", help="smaller sweep for a fast check")
  p.add_argument("--max-load", type=float, default=0.0,
                 help="wait for the 1-min load average to drop below this first (0: don't)")
  return p


def table(rows: List[dict], columns: Sequence[str], floats: str = "{:.3g}") -> str:
  """A plain text table of the given columns."""
  def cell(v):
    if isinstance(v, float):
      return floats.format(v)
    return str(v)
  body = [[cell(r.get(c, "")) for c in columns] for r in rows]
  widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c)
            for i, c in enumerate(columns)]
  line = lambda cells: "  ".join(s.rjust(w) for s, w in zip(cells, widths))
  return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(b) for b in body])


def write_json(path: str, payload: dict) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(payload, f, indent=1, default=float)
  print(f"wrote {path}", flush=True)
