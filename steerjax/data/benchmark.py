"""The one benchmark shape every evaluation reads: concepts, their training pairs and the
instructions their SVs are tested on."""

from __future__ import annotations

import dataclasses
from typing import Dict, List

N_EVAL = 10   # test instructions per concept: ids 0..4 pick a grid factor, 5..9 score it


@dataclasses.dataclass(frozen=True)
class Concept:
  concept_id: int
  name: str               # what the judge is told the concept is
  ref: str = ""
  key: str = ""           # file-safe name of its SV and result files ('' = the id, 0-padded)


@dataclasses.dataclass
class Benchmark:
  """The concepts of one run with their training pairs and test instructions; a concept may
  come with its own steering prompt (the prompting baseline's request)."""
  concepts: List[Concept]
  pairs: Dict[int, List[tuple]]
  instructions: Dict[int, List[str]]
  steering_prompts: Dict[int, str] = dataclasses.field(default_factory=dict)


def concept_name(concept: Concept) -> str:
  """File-safe name of a concept's SV and result files."""
  return concept.key or f"{concept.concept_id:04d}"
