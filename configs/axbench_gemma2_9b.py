"""AxBench Concept500 on Gemma-2-9B-it, layer 20 (paper Table 2, column G9B L20).

  python -m steerjax.main --config=configs/axbench_gemma2_9b.py --workdir=runs/g9b_l20

Joint methods use the paper's Table 11 values for this model (width 3584). With
`--config=configs/axbench_gemma2_9b.py:code`, PrOSV SimPO uses the values of the authors'
code instead (beta 2, eta_alpha 10, eta_v 0.08, 12 epochs).
The two sampling baselines use AxBench's sweep files at c01a22a (docs/axbench.md), in
axbench/sweep/wuzhengx/reps/experiments/: c_vector_g2-9b_axbench.yaml lines 24-27 and 30
(Lang: batch 6 x accumulation 2, 12 epochs, lr 0.08, dropout 0), 34 and 38 (all positions,
exclude_bos), 39 (training factors) and 60 (search grid); p_vector_dps_g2-9b_axbench.yaml
lines 24-27 and 40 (RePS: batch 6, 18 epochs, lr 0.08, dropout 0.1), 30 and 34 (positions),
42 and 62 (factors). exclude_bos skips AxBench's get_prefix_length tokens: 4 on Gemma-2
(BOS, <start_of_turn>, user, newline), hence `all-f4`.
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
  lang_sampled = dict(batch_size=12, grad_accum_steps=2, epochs=12, lr_direction=0.08)
  reps_sampled = dict(batch_size=6, epochs=18, lr_direction=0.08, dropout=0.1)
  methods = dict(common.baselines(common.GEMMA_FACTOR_SET, common.GEMMA_GRID, lang_sampled,
                                  reps_sampled, train_positions="all-f4"), **joint)
  config = common.make_config("google/gemma-2-9b-it", "9b_l20", 20, methods, num_concepts=500)
  config.data.neutral = "released"     # the authors' 9b_l20 contrast data
  return config
