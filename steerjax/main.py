"""Entry point: `python -m steerjax.main --config=configs/NAME.py --workdir=DIR`.

Every config field can be overridden on the command line, e.g.
`--config.steer.positions=all --config.optim.lr_factor=10`. The config's `job` field picks
what runs: `train` (steering vectors only) or `demo` (train, generate, judge, report).
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (SVs, metrics, checkpoints).")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str):
  """Run the job a config names; importable so notebooks need no command line."""
  if config.job == "train":
    from steerjax.experiment import train
    return train(config, workdir)
  if config.job == "demo":
    from steerjax.demo import run as run_demo
    return run_demo(config, workdir)
  raise ValueError(f"config.job={config.job!r}; expected 'train' or 'demo'")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # keep library INFO logs out of the progress output
  os.makedirs(_WORKDIR.value, exist_ok=True)
  run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
