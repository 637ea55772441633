"""AxBench Concept500 on Gemma-2-9B-it, layer 20 (paper Table 2, column G9B L20).

  python -m steerjax.main --config=configs/axbench_gemma2_9b.py --workdir=runs/g9b_l20

Joint methods use the paper's Table 11 values for this model (width 3584). With
`--config=configs/axbench_gemma2_9b.py:code`, PrOSV SimPO uses the values of the authors'
code instead (beta 2, eta_alpha 10, eta_v 0.08, 12 epochs).
"""

from configs import axbench_common as common


def get_config(arg=None):
  t11 = common.table11
  joint = {
      "fssv_lang": t11("all", "lang", batch=12, beta=2, lr_factor=0.1, lam=8, lr_direction=0.04,
                       epochs=18),
      "fssv_simpo": t11("all", "simpo", batch=6, beta=2, lr_factor=0.1, lam=8,
                        lr_direction=0.08, epochs=12),
      "prosv_lang": t11("f2+l2", "lang", batch=12, beta=2, lr_factor=0.1, lam=8,
                        lr_direction=0.04, epochs=12),
      "prosv_simpo": t11("f2+l2", "simpo", batch=6, beta=4, lr_factor=20, lam=8,
                         lr_direction=0.04, epochs=24),
  }
  if arg == "code":
    joint["prosv_simpo"] = t11("f2+l2", "simpo", batch=6, beta=2, lr_factor=10, lam=8,
                               lr_direction=0.08, epochs=12)
  methods = dict(common.baselines(common.GEMMA_FACTOR_SET, common.GEMMA_GRID), **joint)
  config = common.make_config("google/gemma-2-9b-it", "9b_l20", 20, methods, num_concepts=500)
  config.data.neutral = "released"     # the authors' 9b_l20 contrast data
  return config
