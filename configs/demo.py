"""The embedded default: concept steering on stories260K with TinyStories concepts.

Trains PrOSV (f2+l2) and FSSV (all tokens) with Lang and SimPO under joint factor/direction
training, plus the fixed-factor and RePS-style factor-sampling baselines (factor picked on
eval prompts 0..4, scored on 5..9), generates, judges offline and prints a results table.

  STEERJAX_DATA=../shared/assets python -m steerjax.main --config=configs/demo.py --workdir=runs/demo

Hyperparameters are the paper's Table 11 values for Gemma-2-2B (width 2304), transferred
to stories260K's width 64 by the muP rule (optim.ref_width=2304).
"""

import ml_collections

from configs import base

# name -> overrides of the base config for that method (see steerjax/demo.py).
METHODS = {
    "prosv_lang": dict(positions="f2+l2", objective="lang", factor_mode="joint",
                       beta=4.0, lam=8.0, lr_factor=10.0, lr_direction=0.04, batch_size=12),
    "prosv_simpo": dict(positions="f2+l2", objective="simpo", factor_mode="joint",
                        beta=4.0, lam=8.0, lr_factor=20.0, lr_direction=0.04, batch_size=6),
    "fssv_lang": dict(positions="all", objective="lang", factor_mode="joint",
                      beta=2.0, lam=1.0, lr_factor=1.0, lr_direction=0.04, batch_size=12),
    "fssv_simpo": dict(positions="all", objective="simpo", factor_mode="joint",
                       beta=2.0, lam=1.0, lr_factor=0.1, lr_direction=0.04, batch_size=6),
    # Baselines with a factor grid at inference (selection on ids 0..4, score on 5..9).
    "fssv_lang_fixed": dict(positions="all", objective="lang", factor_mode="fixed",
                            fixed_factor=1.0, lam=1.0, lr_direction=0.04, batch_size=12,
                            grid=(0.5, 1.0, 2.0, 4.0, 8.0, 16.0)),
    "fssv_lang_sampled": dict(positions="all", objective="lang", factor_mode="sampled",
                              lam=1.0, lr_direction=0.04, batch_size=12,
                              grid=(2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 25, 30, 40, 50)),
    # No training: the model as is, and the concept asked for in the prompt.
    "unsteered": dict(),
    "prompting": dict(),
}


def get_config(arg=None):
  config = base.get_config()
  config.job = "demo"
  # The concepts with the most training pairs in the local TinyStories excerpt; the hub's
  # full validation split has 72+ pairs for every concept in steerjax.data.tinystories.
  config.data.concepts = ("tree", "toy", "sun", "bird")
  config.data.n_train = 48
  config.optim.ref_width = 2304
  config.methods = tuple(METHODS)
  config.method_overrides = ml_collections.ConfigDict(
      {k: ml_collections.ConfigDict(v) for k, v in METHODS.items()})
  config.eval = ml_collections.ConfigDict(dict(
      max_new_tokens=128,          # tokens generated per eval prompt
      temperature=1.0,
      top_p=1.0,
      samples_shown=1,             # generations printed per method
      prompt_template="{opening} The story is about {description}.",  # the prompting baseline
  ))
  if arg == "quick":  # a short end-to-end run for tests
    config.data.concepts = ("tree", "toy")
    config.data.n_train = 12
    config.train.epochs = 1
    config.eval.max_new_tokens = 16
    config.methods = ("prosv_lang", "fssv_lang_sampled", "unsteered")
  return config
