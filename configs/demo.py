"""The embedded default: concept steering on stories260K with TinyStories concepts.

Trains PrOSV (f2+l2) and FSSV (all tokens) with Lang and SimPO under joint factor/direction
training, plus the fixed-factor and RePS-style factor-sampling baselines (factor picked on
eval prompts 0..4, scored on 5..9), generates, judges offline (the AxBench protocol on story openings) and prints a results
table with a utility column.

  STEERJAX_DATA=../shared/assets python -m steerjax.main --config=configs/demo.py --workdir=runs/demo

Learning rates are given at stories260K's own width (optim.ref_width=64). The paper's
Gemma-2-2B values (Table 11) transferred by the muP rule (ref_width=2304) are available as
`configs/demo.py:table11`; at this scale they steer less (see docs/tinystories.md).
"""

import ml_collections

from configs import base

_GRID_FIXED = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
_GRID_SAMPLED = (2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 25, 30, 40, 50)

# name -> overrides of the base config for that method (keys: steerjax/methods.py).
METHODS = {
    "prosv_lang": dict(positions="f2+l2", objective="lang", factor_mode="joint",
                       beta=4.0, lam=1.0, lr_factor=1.67, lr_direction=0.04, batch_size=12),
    "prosv_simpo": dict(positions="f2+l2", objective="simpo", factor_mode="joint",
                        beta=4.0, lam=1.0, lr_factor=1.67, lr_direction=0.04, batch_size=6),
    "fssv_lang": dict(positions="all", objective="lang", factor_mode="joint",
                      beta=2.0, lam=1.0, lr_factor=0.167, lr_direction=0.04, batch_size=12),
    "fssv_simpo": dict(positions="all", objective="simpo", factor_mode="joint",
                       beta=2.0, lam=1.0, lr_factor=0.0167, lr_direction=0.04, batch_size=6),
    # Baselines with a factor grid at inference (selection on ids 0..4, score on 5..9).
    "fssv_lang_fixed": dict(positions="all", objective="lang", factor_mode="fixed",
                            fixed_factor=1.0, lam=1.0, lr_direction=0.04, batch_size=12,
                            grid=_GRID_FIXED),
    "fssv_lang_sampled": dict(positions="all", objective="lang", factor_mode="sampled",
                              lam=1.0, lr_direction=0.04, batch_size=12, grid=_GRID_SAMPLED),
    # No training: the model as is, and the concept asked for in the prompt.
    "unsteered": dict(),
    "prompting": dict(kind="prompting"),
}

# The paper's Gemma-2-2B Table 11 values, read at width 2304 and rescaled to width 64.
TABLE11 = {
    "prosv_lang": dict(beta=4.0, lam=8.0, lr_factor=10.0, lr_direction=0.04),
    "prosv_simpo": dict(beta=4.0, lam=8.0, lr_factor=20.0, lr_direction=0.04),
    "fssv_lang": dict(beta=2.0, lam=1.0, lr_factor=1.0, lr_direction=0.04),
    "fssv_simpo": dict(beta=2.0, lam=1.0, lr_factor=0.1, lr_direction=0.04),
}


def get_config(arg=None):
  config = base.get_config()
  config.job = "demo"
  # The concepts with the most training pairs in the local TinyStories excerpt (925 stories);
  # with the hub's full validation split (about 22k stories) every concept has many more.
  config.data.concepts = ("tree", "toy", "sun")
  config.data.n_train = 40
  config.data.prefix_tokens = 64         # shorter sequences keep the demo within minutes
  config.data.continuation_tokens = 24   # y_c starts at the concept's sentence: a dense signal
  config.optim.ref_width = 64
  config.methods = tuple(METHODS)
  methods = {k: dict(v) for k, v in METHODS.items()}
  if arg == "table11":
    config.optim.ref_width = 2304
    for k, v in TABLE11.items():
      methods[k].update(v)
  config.method_overrides = ml_collections.ConfigDict(
      {k: ml_collections.ConfigDict(v) for k, v in methods.items()})
  config.eval.prompt_template = "{instruction} The story is about {prompt}."  # prompting
  config.eval.steering_prompts = "benchmark"   # each concept's description
  config.judge.kind = "offline"
  if arg == "quick":  # a short end-to-end run for tests
    config.data.concepts = ("tree", "toy")
    config.data.n_train = 12
    config.train.epochs = 1
    config.eval.max_new_tokens = 16
    config.methods = ("prosv_lang", "fssv_lang_sampled", "unsteered")
  return config
