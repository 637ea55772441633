"""AxBench steering benchmark (paper Table 2): train, generate, judge and score every method.

  python -m experiments.axbench --config=configs/axbench_gemma2_2b.py --workdir=runs/g2b_l10
  python -m experiments.axbench --config=configs/axbench_gemma2_2b.py --plan   # cost only

Any config field can be overridden, e.g. `--config.model.path=/data/gemma-2-2b-it`,
`--config.data.first_concept=100 --config.data.num_concepts=100`,
`--config.methods="('prosv_simpo',)"`. Reruns skip finished SVs, generations and ratings.
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "An AxBench config (configs/axbench_*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (SVs, generations, results).")
_PLAN = flags.DEFINE_bool("plan", False, "Print the expected cost and exit.")
flags.mark_flags_as_required(["config"])


def print_plan(config):
  from steerjax.eval.axbench_eval import cost_plan
  from steerjax.eval.scoring import results_table
  rows = cost_plan(config)
  total = {k: sum(r.get(k, 0) for r in rows)
           for k in ("train_tokens", "generations", "new_tokens", "judge_calls")}
  print(results_table(rows + [dict(total, method="total")],
                      ("method", "svs", "steps_per_sv", "train_sequences", "train_tokens",
                       "generations", "new_tokens", "judge_calls")))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _PLAN.value:
    return print_plan(_CONFIG.value)
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required (or pass --plan)")
  logging.set_verbosity(logging.WARNING)
  os.makedirs(_WORKDIR.value, exist_ok=True)
  from steerjax.eval.axbench_eval import run
  run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
