"""Entry point: `python -m steerjax.main --config=configs/NAME.py --workdir=DIR`.

The config's `job` field picks what runs (see `steerjax.jobs.JOBS`).
Every config field can be overridden on the command line, e.g.
`--config.steer.positions=all --config.optim.lr_factor=10`; `--plan` prints the job's cost
(SVs, train steps, generations, new tokens, judge calls) without loading a model.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (SVs, metrics, checkpoints).")
_PLAN = flags.DEFINE_bool("plan", False, "Print the job's expected cost and exit.")
flags.mark_flags_as_required(["config"])


def run(config, workdir: str, log=print):
  """Run the job a config names; importable so notebooks need no command line."""
  from steerjax import jobs
  return jobs.get(config.job).run(config, workdir, log=log)


def plan(config, log=print):
  """Print the cost table of the job a config names."""
  from steerjax import jobs
  from steerjax.eval.scoring import results_table
  from steerjax.runtime.plans import PLAN_COLUMNS, compute_lines, total_row
  from steerjax.eval.judges import plan_lines
  rows = jobs.get(config.job).plan(config)
  notes = compute_lines(config, rows)
  total = total_row(rows)
  log(results_table(rows + [total], PLAN_COLUMNS))
  for line in notes:
    log(line)
  for line in plan_lines(config, total["judge_calls"]):
    log(line)
  return rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # keep library INFO logs out of the progress output
  try:
    if _PLAN.value:
      plan(_CONFIG.value)
      return
    if not _WORKDIR.value:
      raise app.UsageError("--workdir is required (or pass --plan)")
    os.makedirs(_WORKDIR.value, exist_ok=True)
    run(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError) as err:   # bad input: one line, no traceback
    if os.environ.get("STEERJAX_TRACEBACK"):
      raise
    sys.exit(f"error: {err}  (STEERJAX_TRACEBACK=1 shows where)")


if __name__ == "__main__":
  app.run(main)
