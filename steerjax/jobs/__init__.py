"""The jobs a config can name (`config.job`), one file each: setup once, then library calls.

Each entry is a `Job(run, plan)`: `run(config, workdir, log=print)` does the work;
`plan(config)` returns its cost rows without loading a model. A new job is one file here
and one entry in `JOBS`.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Job:
  module: str       # steerjax.jobs.<module> defines run(config, workdir, log) and plan(config)
  summary: str

  def load(self):
    return importlib.import_module(f"steerjax.jobs.{self.module}")

  @property
  def run(self) -> Callable:
    return self.load().run

  @property
  def plan(self) -> Callable:
    return self.load().plan


JOBS = {
    "train": Job("train", "steering vectors for the concepts of data.source"),
    "demo": Job("demo", "every method on TinyStories concepts, offline judge, results table"),
    "axbench": Job("axbench", "the paper's Table 2 protocol on AxBench with an LLM judge"),
    "search": Job("search", "the paper's hyperparameter grid on development concepts"),
    "utility": Job("utility", "tinyMMLU / tinyGSM8K accuracy of steered models"),
    "attack": Job("attack", "steering under concept-suppressing prompts; the trade-off front"),
}


def get(name: str) -> Job:
  if name not in JOBS:
    raise ValueError(f"config.job={name!r} is not a job; jobs: "
                     + ", ".join(f"{k} ({v.summary})" for k, v in JOBS.items()))
  return JOBS[name]
