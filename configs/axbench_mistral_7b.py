"""AxBench on Mistral-7B-Instruct-v0.3, layer 13 of 32 (about 40% depth).

  python -m steerjax.main --config=configs/axbench_mistral_7b.py --workdir=runs/m7b_l13

Not a paper column; shaped like the Qwen2.5-32B one: the first 100 concepts of the
Gemma-2-9B L20 list with the authors' contrast data. Joint methods take Gemma-2-2B's
Table 11 values, transferred to width 4096 by the width rule (`optim.ref_width=2304`);
baselines use the Gemma factor sets. Both are untuned here (`job=search` tunes the joint
methods).
"""

from configs.axbench_transfer import transferred


def get_config(arg=None):
  config = transferred("mistralai/Mistral-7B-Instruct-v0.3", "9b_l20", 13, num_concepts=100)
  config.data.neutral = "released"     # the authors' 9b_l20 contrast data
  return config
