"""AxBench Concept500 on Gemma-2-2B-it, layer 10 (paper Table 2, column G2B L10).

  python -m steerjax.main --config=configs/axbench_gemma2_2b.py --workdir=runs/g2b_l10

Joint methods use the paper's Table 11 values for this model (absolute rates at width 2304).
"""

from configs import axbench_common as common


def get_config(arg=None):
  t11 = common.table11
  joint = {
      "fssv_lang": t11("all", "lang", batch=12, beta=2, lr_factor=1.0, lam=1, lr_direction=0.04,
                       epochs=12),
      "fssv_simpo": t11("all", "simpo", batch=6, beta=2, lr_factor=0.1, lam=1,
                        lr_direction=0.04, epochs=12),
      "prosv_lang": t11("f2+l2", "lang", batch=12, beta=4, lr_factor=10, lam=8,
                        lr_direction=0.04, epochs=12),
      "prosv_simpo": t11("f2+l2", "simpo", batch=6, beta=4, lr_factor=20, lam=8,
                         lr_direction=0.04, epochs=12),
  }
  methods = dict(common.baselines(common.GEMMA_FACTOR_SET, common.GEMMA_GRID), **joint)
  return common.make_config("google/gemma-2-2b-it", "2b_l10", 10, methods, num_concepts=500)
