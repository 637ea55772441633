"""The shared setting of the paper's ablations (Fig. 3, Table 1): the `search` job on the
10 Concept10 concepts of a model's AxBench task, one jointly trained Lang method at
lambda = 8 (`ablation`), 6 epochs, batch 12, eta_v 0.04, seeds 42, 43, 44 (paper
App. G), every other value as in the model's AxBench config."""

import ml_collections

from configs import axbench_gemma2_2b, axbench_gemma2_9b, axbench_qwen25_32b

# model -> (its AxBench config, the Table 11 PrOSV Lang beta and eta_alpha)
MODELS = {"g2b": (axbench_gemma2_2b, 4.0, 10.0), "g9b": (axbench_gemma2_9b, 2.0, 0.1),
          "q32b": (axbench_qwen25_32b, 2.0, 10.0)}
SEEDS = (42, 43, 44)


def make_config(model: str, positions: str):
  if model not in MODELS:
    raise ValueError(f"config argument {model!r}: use one of {sorted(MODELS)}, e.g. "
                     "--config=configs/paper_fig3.py:g2b")
  module, beta, lr_factor = MODELS[model]
  c = module.get_config()
  c.job = "search"
  c.data.update(suite="concept10", first_concept=0, num_concepts=10)
  c.methods = ("ablation",)
  c.method_overrides.ablation = ml_collections.ConfigDict(dict(
      positions=positions, objective="lang", factor_mode="joint", batch_size=12, epochs=6,
      beta=beta, lr_factor=lr_factor, lam=8.0, lr_direction=0.04))
  # empty axes keep the method's values
  c.search.update(method="ablation", concepts="config", beta=(), lr_factor=(), lam=(),
                  lr_direction=(), epochs=(), batch_size=(), positions=(), seeds=SEEDS)
  return c
