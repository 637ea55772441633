"""The jobs a config can name (`config.job`), one module each: set up once, then call the
runtime (`steerjax.runtime`) and the library.

Each module defines `run(config, workdir, log=print)`, which does the work, and
`plan(config)`, which returns its cost rows without loading a model. A new job is one
module here and one entry in `JOBS`.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType

from steerjax.jobs import attack, axbench, chat, demo, search, train, utility


@dataclasses.dataclass(frozen=True)
class Job:
  module: ModuleType   # defines run(config, workdir, log) and plan(config)
  summary: str
  example: str         # the command-line arguments of an example run

  @property
  def run(self):
    return self.module.run

  @property
  def plan(self):
    return self.module.plan


_G2B = "--config=configs/axbench_gemma2_2b.py"
JOBS = {
    "train": Job(train, "steering vectors for the concepts of data.source",
                 "--config=configs/base.py"),
    "demo": Job(demo, "every method on TinyStories concepts, offline judge, results table",
                "--config=configs/demo.py"),
    "chat": Job(chat, "every method on a real chat model's concept answers, offline judge, "
                "utility", "--config=configs/chat_smollm2.py"),
    "axbench": Job(axbench, "the paper's Table 2 protocol on AxBench with an LLM judge", _G2B),
    "search": Job(search, "the paper's hyperparameter grid on development concepts",
                  f"{_G2B} --config.job=search"),
    "utility": Job(utility, "tinyMMLU / tinyGSM8K accuracy of steered models",
                   f"{_G2B} --config.job=utility --config.utility.svs_from=runs/g2b_l10"),
    "attack": Job(attack, "steering under concept-suppressing prompts; the trade-off front",
                  f"{_G2B} --config.job=attack --config.attack.svs_from=runs/g2b_l10"),
}


def get(name: str) -> Job:
  if name not in JOBS:
    raise ValueError(f"config.job={name!r} is not a job; jobs: "
                     + ", ".join(f"{k} ({v.summary})" for k, v in JOBS.items()))
  return JOBS[name]
