"""AxBench on Qwen3-8B, layer 14 of 36 (about 40% depth), thinking off.

  python -m steerjax.main --config=configs/axbench_qwen3_8b.py --workdir=runs/q3_8b_l14

Not a paper column; shaped like the Qwen2.5-32B one: the first 100 concepts of the
Gemma-2-9B L20 list with the authors' contrast data, and the Qwen factor sets. Joint
methods take Gemma-2-2B's Table 11 values, transferred to width 4096 by the width rule
(`optim.ref_width=2304`), untuned here (`job=search` tunes them).

Qwen3's chat template has a thinking switch; `model.thinking=False` (the default) renders
the empty thinking block, so the steered text is the answer itself. Set
`--config.model.thinking=True` to let the model reason first.
"""

from configs import axbench_common as common
from configs.axbench_transfer import transferred


def get_config(arg=None):
  config = transferred("Qwen/Qwen3-8B", "9b_l20", 14, num_concepts=100,
                       factor_set=common.QWEN_FACTOR_SET, grid=common.QWEN_GRID)
  config.model.thinking = False
  config.data.neutral = "released"     # the authors' 9b_l20 contrast data
  return config
