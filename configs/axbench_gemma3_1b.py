"""AxBench Concept500 on Gemma-3-1B-it, layer 10 of 26 (about 40% depth, as the paper's
Gemma-2-2B L10).

  python -m steerjax.main --config=configs/axbench_gemma3_1b.py --workdir=runs/g3_1b_l10

Not a paper column: joint methods take Gemma-2-2B's Table 11 values, transferred to width
1152 by the width rule (`optim.ref_width=2304`), untuned here (`job=search` tunes them).
Baselines use the Gemma factor sets.
"""

from configs.axbench_transfer import transferred


def get_config(arg=None):
  return transferred("google/gemma-3-1b-it", "2b_l10", 10, num_concepts=500,
                     train_positions="all-f4")   # <bos><start_of_turn>user\n, as Gemma-2
