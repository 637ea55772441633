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


def baselines(factor_set, grid, lang_batch=12, reps_batch=6):
  """Factor-grid baselines. The paper gives no training values for them; ours: FSSV, lam 1,
  eta_v 0.04, 12 epochs, and the batch of that model's Table 11 FSSV row of the same loss.

  The RePS baseline trains on the target model's own greedy responses, as AxBench's RePS does.
  """
  fssv = dict(positions="all", lam=1.0, lr_direction=0.04, epochs=12)
  return {
      "fssv_lang_fixed": dict(fssv, objective="lang", factor_mode="fixed", fixed_factor=1.0,
                              batch_size=lang_batch, grid=CLASSIC_GRID),
      "fssv_lang_sampled": dict(fssv, objective="lang", factor_mode="sampled",
                                batch_size=lang_batch, factor_set=tuple(factor_set),
                                grid=tuple(grid)),
      "fssv_reps_sampled": dict(fssv, objective="reps", factor_mode="sampled",
                                batch_size=reps_batch, factor_set=tuple(factor_set),
                                grid=tuple(grid), neutral="model"),
      "prompting": dict(kind="prompting"),
      "unsteered": dict(kind="unsteered"),
  }


def make_config(model_path: str, task: str, layer: int, methods: dict, num_concepts: int,
                methods_run=TABLE_METHODS):
  c = base.get_config()
  c.job = "axbench"
  c.model.path = model_path
  c.model.dtype = "bfloat16"
  c.steer.layer = layer
  c.sv.init = "uniform"             # Table 11 was tuned with the authors' uniform init
  c.train.concepts_per_step = 16
  c.train.log_every = 36
  c.cache_dir = ""                  # neutral responses, steering prompts; '' = ~/.cache/steerjax
  c.data.update(dict(
      source="axbench",
      suite="concept500",           # concept500 | concept10
      task=task,                    # 2b_l10 | 2b_l20 | 9b_l20 | 9b_l31
      first_concept=0,              # position in the concept list (= concept_id)
      num_concepts=num_concepts,    # 0 = to the end of the list
      n_train=72,                   # positives per concept (0 = all)
      max_response_tokens=128,      # y_c and y are cut to this, without EOS
      neutral="judge",              # SimPO's y: judge (written by the judge LLM) | model (greedy)
      neutral_max_tokens=128,
  ))
  c.eval = ml_collections.ConfigDict(dict(
      max_new_tokens=128,
      temperature=1.0,
      top_p=1.0,
      batch_size=64,                # generations per device batch
      concepts_per_chunk=16,        # concepts generated and judged together (resume unit)
      prompt_template="{prompt}\n\nQuestion: {instruction}",   # the prompting baseline
  ))
  c.judge = ml_collections.ConfigDict(dict(
      kind="openai",                # openai (any chat-completions server) | local
      base_url="https://api.openai.com/v1",
      model="gpt-4o-mini",
      api_key_env="OPENAI_API_KEY",
      temperature=0.01,
      max_tokens=500,
      concurrency=16,
      max_retries=5,
      timeout_s=60.0,
      cache_dir="",                 # '' = <cache_dir>/judge
      local_path="",                # kind=local: an instruct model steerjax loads ('' = target)
      local_dtype="bfloat16",
      local_max_new_tokens=256,
      local_batch_size=32,
  ))
  c.methods = tuple(methods_run)
  c.method_overrides = ml_collections.ConfigDict(
      {k: ml_collections.ConfigDict(v) for k, v in methods.items()})
  c.results_dir = ""                # '' = <workdir>/results
  return c
