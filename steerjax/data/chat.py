"""The chat concept benchmark: AxBench's shape at CPU scale on a real instruct model.

Concepts are concrete topics a word count can rate (`CONCEPTS`). Instructions come from
AlpacaEval, split once by `data.seed` into disjoint pools: training instructions (the same
candidates for every concept), test instructions (`n_eval` per concept, different for each)
and the utility set (instructions with AlpacaEval's reference answers, scored as NLL). The
model itself writes the concept responses y_c, asked with `REQUEST` appended to the user
turn; the runtime keeps those its judge finds the concept in (steerjax.runtime.chat). This
module only chooses text: it never runs the model.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from steerjax.data.tinystories import Concept

# What the model is asked to make y_c, appended to the user turn; also the prompting
# baseline's request ({prompt} = the concept's description).
STEERING = "In your answer, talk about {prompt}."
REQUEST = "{instruction} " + STEERING

# name -> (what the request asks for, the words that show the concept). Words are whole words
# matched in any case; ambiguous ones ("bark", "brew", "beans", "space", "star") are left out.
_CONCEPTS = {
    "ocean": ("the ocean", "ocean oceans oceanic sea seas seawater marine beach beaches coral "
                           "reef reefs tide tides underwater seashore shore shores"),
    "coffee": ("coffee", "coffee coffees espresso espressos latte lattes cappuccino cappuccinos "
                         "caffeine barista baristas mocha arabica"),
    "dogs": ("dogs", "dog dogs puppy puppies pup pups canine canines doggy doggie"),
    "space": ("outer space", "spacecraft spaceship astronaut astronauts galaxy galaxies "
                             "planet planets cosmos cosmic universe nasa orbit orbits astronomy "
                             "telescope"),
    "music": ("music", "music musical musician musicians song songs melody melodies guitar "
                       "piano rhythm concert concerts"),
}
CONCEPTS = {name: Concept(name, description, frozenset(words.split()))
            for name, (description, words) in _CONCEPTS.items()}


@dataclasses.dataclass(frozen=True)
class Split:
  """Disjoint AlpacaEval instruction pools of one benchmark."""
  train: List[str]                    # candidates for every concept's training pairs
  test: Dict[str, List[str]]          # concept -> its test instructions
  utility: List[tuple]                # (instruction, AlpacaEval's reference answer)


def concepts(names: Sequence[str]) -> List[Concept]:
  unknown = [n for n in names if n not in CONCEPTS]
  if unknown:
    raise ValueError(f"data.concepts: {unknown} are not chat concepts; use names from "
                     f"{sorted(CONCEPTS)}")
  return [CONCEPTS[n] for n in names]


def short_instructions(alpaca: pd.DataFrame, tok, max_tokens: int) -> pd.DataFrame:
  """AlpacaEval rows whose instruction is at most `max_tokens` tokens, in file order."""
  keep = [len(tok.encode(x)) <= max_tokens for x in alpaca["instruction"]]
  return alpaca[np.asarray(keep, bool)].reset_index(drop=True)


def split(alpaca: pd.DataFrame, names: Sequence[str], n_candidates: int, n_eval: int,
          n_utility: int, seed: int) -> Split:
  """Shuffle the rows with `seed`, then take training candidates, each concept's test
  instructions and the utility set from consecutive, non-overlapping slices."""
  need = n_candidates + n_eval * len(names) + n_utility
  if need > len(alpaca):
    raise ValueError(f"the chat benchmark needs {need} instructions (data.n_candidates + "
                     f"data.n_eval x concepts + utility.reference_answers), AlpacaEval has "
                     f"{len(alpaca)} short enough")
  rows = alpaca.iloc[np.random.default_rng(seed).permutation(len(alpaca))]
  x, y = rows["instruction"].tolist(), rows["output"].tolist()
  at = n_candidates
  test = {}
  for name in names:
    test[name], at = x[at:at + n_eval], at + n_eval
  return Split(x[:n_candidates], test, list(zip(x[at:at + n_utility], y[at:at + n_utility])))


def request(concept: Concept, instruction: str) -> str:
  return REQUEST.format(instruction=instruction, prompt=concept.description)


def steering_sentence(description: str) -> str:
  """The request on its own, as the prompting baseline puts it before an MMLU prompt."""
  return STEERING.format(prompt=description)


def keep_pairs(instructions: Sequence[str], responses: Sequence[str], ratings: Sequence[dict],
               n_train: int) -> List[tuple]:
  """The first `n_train` (instruction, y_c) pairs whose y_c the judge finds the concept in."""
  kept = [(x, y) for x, y, r in zip(instructions, responses, ratings) if r["concept_score"] >= 1]
  return kept[:n_train]


def missing_pairs_error(name: str, found: int, n_train: int, candidates: int) -> Optional[str]:
  if found >= n_train:
    return None
  return (f"concept {name!r}: only {found} of {candidates} candidate answers mention it, "
          f"data.n_train={n_train}; raise data.n_candidates or lower data.n_train")
