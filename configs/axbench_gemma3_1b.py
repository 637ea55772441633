"""AxBench Concept500 on Gemma-3-1B-it, layer 10 of 26 (about 40% depth, as the paper's
Gemma-2-2B L10).

  python -m steerjax.main --config=configs/axbench_gemma3_1b.py --workdir=runs/g3_1b_l10

Not a paper column: joint methods take Gemma-2-2B's Table 11 values, transferred to width
1152 by the width rule (`optim.ref_width=2304`), untuned here (`job=search` tunes them).
Baselines use the Gemma factor sets.
"""

from configs import axbench_common as common
from configs import axbench_gemma2_2b


def get_config(arg=None):
  gemma2 = axbench_gemma2_2b.get_config()
  joint = {k: gemma2.method_overrides[k].to_dict()
           for k in ("fssv_lang", "fssv_simpo", "prosv_lang", "prosv_simpo")}
  methods = dict(common.baselines(common.GEMMA_FACTOR_SET, common.GEMMA_GRID), **joint)
  config = common.make_config("google/gemma-3-1b-it", "2b_l10", 10, methods, num_concepts=500)
  config.optim.ref_width = 2304
  return config
