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
from configs import axbench_gemma2_2b


def get_config(arg=None):
  gemma2 = axbench_gemma2_2b.get_config()
  joint = {k: gemma2.method_overrides[k].to_dict()
           for k in ("fssv_lang", "fssv_simpo", "prosv_lang", "prosv_simpo")}
  methods = dict(common.baselines(common.QWEN_FACTOR_SET, common.QWEN_GRID), **joint)
  config = common.make_config("Qwen/Qwen3-8B", "9b_l20", 14, methods, num_concepts=100)
  config.model.thinking = False
  config.optim.ref_width = 2304
  config.data.neutral = "released"     # the authors' 9b_l20 contrast data
  return config
