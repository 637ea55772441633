"""Width transfer of the muP-style SV parametrisation (method.md section 3).

On random llama-like models of widths 64..1024, with the same beta, lam and reference
learning rates, measures the coordinate size (RMS over the n entries) of alpha0*v0 and of
the first step's change of alpha*v, under the prescribed scaling (lr_factor * sqrt(n/64),
lr_direction * sqrt(64/n)) and with both learning rates held equal and fixed.

  PYTHONPATH=. python -m experiments.paper.width_transfer --out=docs/width_transfer.png
"""

import argparse
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from steerjax.data.batching import ConceptData
from steerjax.models import Decoder, ModelConfig
from steerjax.steering import SteerSpec
from steerjax.train import LoopConfig, StepConfig, initial_sv, train_concepts

REF_WIDTH = 64
STEP = StepConfig(batch_size=4, epochs=1)
BASE = LoopConfig(beta=1.0, lam=1.0, lr_factor=1.0, lr_direction=0.04, max_steps=1,
                 log_every=1000, checkpoint_every=1000, prefix_cache="on")
EQUAL_LR = 0.04


def _model(width: int):
  cfg = ModelConfig(family="llama", vocab_size=64, dim=width, n_layers=1, n_heads=width // 16,
                    n_kv_heads=width // 16, head_dim=16, hidden_dim=2 * width, max_seq_len=64)
  model = Decoder(cfg)
  return model, model.init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"]


def _data():
  rng = np.random.default_rng(0)
  prompts = [[1] + rng.integers(3, 64, 6).tolist() for _ in range(8)]
  responses = [[7] + rng.integers(3, 64, 6).tolist() for _ in range(8)]
  return [ConceptData("synthetic", prompts, responses)]


def measure(widths, scaled: bool, workdir: str = None):
  """[{width, init_rms, step_rms}] after one Adam step of joint Lang training."""
  import tempfile
  rows = []
  for n in widths:
    run = (dataclasses.replace(BASE, ref_width=REF_WIDTH) if scaled else
           dataclasses.replace(BASE, lr_factor=EQUAL_LR, lr_direction=EQUAL_LR, ref_width=0))
    model, params = _model(n)
    sv0 = initial_sv(STEP, run, n, [0])
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
      sv1 = train_concepts(model, params, SteerSpec(0, "all"), _data(), [0], STEP, run, tmp,
                           log=lambda *a, **k: None)
    z0 = np.asarray(sv0["factor"])[0] * np.asarray(sv0["direction"])[0]
    z1 = sv1["factor"][0] * sv1["direction"][0]
    rows.append({"width": n, "init_rms": float(np.sqrt(np.mean(z0 ** 2))),
                 "step_rms": float(np.sqrt(np.mean((z1 - z0) ** 2)))})
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="docs/width_transfer.png")
  args = parser.parse_args()
  widths = (64, 128, 256, 512, 1024)
  results = {"muP scaling": measure(widths, True), "equal fixed LRs": measure(widths, False)}
  for name, rows in results.items():
    print(name)
    for r in rows:
      print(f"  n={r['width']:5d}  rms(alpha0 v0)={r['init_rms']:.4f}  "
            f"rms(step change of alpha v)={r['step_rms']:.4f}")
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for name, rows in results.items():
    ax.plot([r["width"] for r in rows], [r["step_rms"] for r in rows], "o-", label=name)
  ax.plot(widths, [results["muP scaling"][0]["init_rms"]] * len(widths), "k--",
          label="rms(alpha0 v0)")
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xlabel("width n")
  ax.set_ylabel("coordinate RMS of the first step's change of alpha*v")
  ax.legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  fig.savefig(args.out, dpi=120)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
