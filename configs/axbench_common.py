"""Shared shape of the AxBench configs (paper Table 2 rows; see docs/axbench.md).

Each model config passes its Table 11 rows (`joint`) and its baseline factor sets; every
method becomes an entry of `config.method_overrides` (keys: steerjax/methods.py). Methods
without `positions` are untrained: `prompting` (a steering prompt written by the judge)
and `unsteered`.
"""

import ml_collections

from configs import base

# AxBench's factor grid for classic SVs (14 values); RePS-style grids are 10x this on Gemma.
CLASSIC_GRID = (0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0, 4.0, 5.0)
GEMMA_FACTOR_SET = tuple(range(2, 21, 2))
GEMMA_GRID = (2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 25, 30, 40, 50)
# Qwen-32B: training factors {20..200}; search {20..400} (our reading: 14 values, like Gemma's).
QWEN_FACTOR_SET = tuple(range(20, 201, 20))
QWEN_GRID = tuple(range(20, 201, 20)) + (250, 300, 350, 400)

# Paper Table 2 order.
TABLE_METHODS = ("prompting", "fssv_lang_sampled", "fssv_lang_fixed", "fssv_lang", "prosv_lang",
                 "fssv_reps_sampled", "fssv_simpo", "prosv_simpo")


def table11(positions, objective, batch, beta, lr_factor, lam, lr_direction, epochs):
  """One jointly trained method from a Table 11 row."""
  return dict(positions=positions, objective=objective, factor_mode="joint", batch_size=batch,
              beta=float(beta), lr_factor=float(lr_factor), lam=float(lam),
              lr_direction=float(lr_direction), epochs=epochs)


def baselines(factor_set, grid, lang_sampled, reps_sampled, train_positions="all-bos"):
  """Factor-grid baselines with their sources' training values (docs/axbench.md).

  fssv_lang_fixed: AxBench's steering-vector baseline, sweep/wuzhengx/{2b/l10,9b/l20}/
    steering_vec.yaml: batch 6, 3 epochs, lr 0.01, weight decay 0, every position but BOS,
    trained at factor 1 from v = 0.01 in every entry; at inference every position, the
    factor (AxBench's 14, 0.2..5.0) in units of the concept's max activation on the latent
    eval data (`scale="max_act"`, steerjax/runtime/session.py).
  fssv_lang_sampled, fssv_reps_sampled: AxBench's ConceptVector (Lang) and PreferenceVector
    (RePS), as AxBench trains them: factors drawn from `factor_set`, a learned bias b
    (`h + (a + b) v`; `relu(h.v + b)` in NullInv), lam 1 (torch's default Linear init),
    every position after `train_positions` in training (AxBench skips the chat prefix), every
    position including BOS at inference, searched over `grid`. `lang_sampled` and
    `reps_sampled` hold each model's batch, accumulation, epochs, lr and dropout (method
    keys); RePS trains with AxBench's loss (`reps_axbench`) on the target model's own greedy
    responses.
  """
  sampled = dict(positions="all", train_positions=train_positions, factor_mode="sampled",
                 bias=True, lam=1.0, factor_set=tuple(factor_set), grid=tuple(grid))
  return {
      "fssv_lang_fixed": dict(positions="all", train_positions="all-bos", objective="lang",
                              factor_mode="fixed", fixed_factor=1.0, init="constant", lam=0.01,
                              scale="max_act", lr_direction=0.01, batch_size=6, epochs=3,
                              grid=CLASSIC_GRID),
      "fssv_lang_sampled": dict(sampled, objective="lang", **lang_sampled),
      "fssv_reps_sampled": dict(sampled, objective="reps_axbench", neutral="model",
                                **reps_sampled),
      "prompting": dict(kind="prompting"),
      "unsteered": dict(kind="unsteered"),
  }


def make_config(model_path: str, task: str, layer: int, methods: dict, num_concepts: int,
                methods_run=TABLE_METHODS):
  c = base.get_config()
  c.job = "axbench"
  c.model.path = model_path
  c.model.dtype = "bfloat16"
  c.model.vocab_chunk = 32768       # Gemma-2's 256k-row head: no [B, 128, V] fp32 logits kept
  c.steer.layer = layer
  c.sv.init = "uniform"             # Table 11 was tuned with the authors' uniform init
  c.sv.param_dtype = "bfloat16"     # the authors' SV storage (docs/axbench.md); float32: the
                                    #   method as written, factors that move at small rates
  c.train.concepts_per_step = 16
  c.train.log_every = 36
  c.data.update(dict(
      source="axbench",
      suite="concept500",
      task=task,
      num_concepts=num_concepts,
      n_train=72,                   # positives per concept (0 = all)
      max_response_tokens=128,      # y_c and y are cut to this, without EOS
      neutral="judge",              # SimPO's y: released (the authors' file; 9b_l20 only) |
                                    #   judge (written by the judge LLM) | model (greedy)
      neutral_max_tokens=128,
      model_neutral_tokens=192,     # RePS's losing answer: greedy, int(128 * 1.5) new tokens
                                    #   (axbench/utils/dataset.py at c01a22a, l. 492-498)
  ))
  c.eval.update(dict(
      sampling="hf",                # the model's generation_config.json as transformers
                                    #   applies it (top-k 50 on Gemma-2-it)
      steering_prompts="released",  # the authors' file
      requests="prosv",             # prompts the file lacks: the authors' requests
  ))
  c.judge.templates = "prosv"       # the authors' templates, pinned
  c.utility.num_concepts = 10       # Table 16's means: the authors' --max_concepts 10
  c.methods = tuple(methods_run)
  c.method_overrides = ml_collections.ConfigDict(
      {k: ml_collections.ConfigDict(v) for k, v in methods.items()})
  return c
