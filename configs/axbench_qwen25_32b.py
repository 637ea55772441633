"""AxBench on Qwen2.5-32B-Instruct, layer 32 (paper Table 2, column Q32B L32).

  python -m steerjax.main --config=configs/axbench_qwen25_32b.py --workdir=runs/q32b_l32

As in the paper: the first 100 concepts of the Gemma-2-9B L20 Concept500 list and its
training data, Table 11 values for width 5120, and baseline factor sets {20..200} (training)
and {20..400} (search). The paper reports no fixed-factor baseline here, so it is not run by
default (add it with `--config.methods`).
"""

from configs import axbench_common as common


def get_config(arg=None):
  t11 = common.table11
  joint = {
      "fssv_lang": t11("all", "lang", batch=6, beta=1, lr_factor=0.1, lam=1, lr_direction=0.04,
                       epochs=12),
      "fssv_simpo": t11("all", "simpo", batch=3, beta=1, lr_factor=0.01, lam=1,
                        lr_direction=0.04, epochs=12),
      "prosv_lang": t11("f2+l2", "lang", batch=6, beta=2, lr_factor=10, lam=8,
                        lr_direction=0.04, epochs=12),
      # batch 6 as 3 x 2 with the authors' schedule length
      # (prosv experiments/axbench/configs/q25_32b_l32_simpo_prosv.sh: GRAD_ACCUM_STEPS=2)
      "prosv_simpo": dict(t11("f2+l2", "simpo", batch=6, beta=1, lr_factor=10, lam=8,
                              lr_direction=0.08, epochs=6),
                          grad_accum_steps=2, schedule_steps="micro_batches"),
  }
  # Table 12: Lang 18 epochs, lr 0.08, batch 6; RePS 12 epochs, lr 0.08, batch 12.
  methods = dict(common.baselines(common.QWEN_FACTOR_SET, common.QWEN_GRID,
                                  dict(batch_size=6, epochs=18, lr_direction=0.08),
                                  dict(batch_size=12, epochs=12, lr_direction=0.08)), **joint)
  run = tuple(m for m in common.TABLE_METHODS if m != "fssv_lang_fixed")
  config = common.make_config("Qwen/Qwen2.5-32B-Instruct", "9b_l20", 32, methods,
                              num_concepts=100, methods_run=run)
  config.train.concepts_per_step = 4
  config.eval.batch_size = 32
  config.data.neutral = "released"     # the authors' 9b_l20 contrast data
  # The authors' Q32B prompting input drops AxBench's leading space
  # (prosv experiments/axbench/inference_axbench.py).
  config.eval.prompt_template = "{prompt}\n\nQuestion: {instruction}"
  # job=search: paper Table 10's Q32B axes (the other axes as for Gemma).
  config.search.epochs = (6, 12, 18)
  config.search.batch_size = (3, 6)
  return config
