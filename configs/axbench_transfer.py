"""Paper-style AxBench configs for models the paper did not run (Gemma-3, Qwen3, Mistral).

Every method takes Gemma-2-2B's values (configs/axbench_gemma2_2b.py): the joint rows'
Table 11 rates carried to the model's width by the width rule (`optim.ref_width=2304`), the
baselines their AxBench sweep values. Untuned for the new model: `job=search` tunes the
joint rows.
"""

from configs import axbench_common as common
from configs import axbench_gemma2_2b


def transferred(model_path: str, task: str, layer: int, num_concepts: int,
                factor_set=common.GEMMA_FACTOR_SET, grid=common.GEMMA_GRID,
                train_positions: str = "all-bos"):
  """The config of `model_path` at `layer`; `factor_set` / `grid` are the sampling
  baselines' factors, `train_positions` the positions they train on (AxBench skips the chat
  template's prefix: all-f4 on Gemma, BOS alone elsewhere)."""
  gemma2 = axbench_gemma2_2b.get_config()
  methods = {k: v.to_dict() for k, v in gemma2.method_overrides.items()}
  for name in ("fssv_lang_sampled", "fssv_reps_sampled"):
    methods[name].update(factor_set=tuple(factor_set), grid=tuple(grid),
                         train_positions=train_positions)
  config = common.make_config(model_path, task, layer, methods, num_concepts=num_concepts)
  config.optim.ref_width = 2304
  return config
