"""The paper authors' released data (github colored-dye/prosv at a pinned commit), read at
run time (downloaded once and cached, or from a local clone given as `data.released_repo`).

  contrast          SimPO training triples: x = `negative_input`, y_c = `positive_output`,
                    the neutral y = `negative_output` (gpt-4o-mini), 72 rows per concept
  steering_prompts  the prompting baseline's steering prompt, one row per concept
  suppression       each concept's 10 AlpacaEval instructions (`original_prompt`) rewritten
                    to ask that the concept be avoided (`steered_prompt`)
  hp_*              the 3 development concepts of the paper's hyperparameter search

Rows are matched to concepts by `concept_id` and checked by the concept's name, so a file of
another concept list never feeds the wrong concept; concepts a file lacks are reported.
"""

from __future__ import annotations

import json
from typing import Dict, List, Sequence

import pandas as pd

from steerjax import pinned

REPO = "colored-dye/prosv"
COMMIT = "1f315aaf63c98c5fe6f3bca4c825726495f0b499"
FILES = {
    "contrast": "data/concept500_contrast/prod_{task}_v1/generate/contrast_train_data.parquet",
    "steering_prompts": "data/concept500/prod_{task}_v1/generate/steering_prompt_prepend.parquet",
    "suppression": "data/concept500/prod_{task}_v1/generate/suppression_prompt_blended.parquet",
    "hp_train": "data/hp_tuning/train_data.parquet",
    "hp_contrast": "data/hp_tuning/contrast_train_data.parquet",
    "hp_metadata": "data/hp_tuning/metadata.jsonl",
}
CONTRAST_COLUMNS = ("negative_input", "negative_output", "positive_input", "positive_output",
                    "concept_id", "concept", "concept_genre", "category")
COLUMNS = {
    "contrast": CONTRAST_COLUMNS,
    "hp_contrast": CONTRAST_COLUMNS,
    "steering_prompts": ("steering_prompt", "concept", "concept_id"),
    "suppression": ("original_prompt", "concept_id", "steered_prompt", "concept"),
    "hp_train": ("input", "output", "concept_id"),
}
# At COMMIT the contrast file is released for 9b_l20, the others for 2b_l10 and 9b_l20.
# The requests the authors sent the judge to write steering and suppression prompts.
REQUESTS_PATH = "src/reft/llm_judge.py"
REQUEST_NAMES = {"steering_prompt": "T_GENERATE_PREPEND_STEERING_PROMPT",
                 "suppression_prompt": "T_GENERATE_SUPPRESSION_PROMPT_BLEND"}


def requests(cache_dir: str = "", local_clone: str = "") -> Dict[str, str]:
  """{"steering_prompt": request with {concept}, "suppression_prompt": request with
  {concept} and {instruction}}, read from the authors' llm_judge.py (nothing executed)."""
  where = pinned.fetch(REPO, COMMIT, REQUESTS_PATH, cache_dir, local_clone)
  with open(where, encoding="utf-8") as f:
    return pinned.constants_of(f.read(), REQUEST_NAMES, where)


def path(kind: str, task: str = "", cache_dir: str = "", local_clone: str = "") -> str:
  """Local path of one released file."""
  return pinned.fetch(REPO, COMMIT, FILES[kind].format(task=task), cache_dir, local_clone)


def frame(kind: str, task: str = "", cache_dir: str = "", local_clone: str = "") -> pd.DataFrame:
  """A released parquet, refused when its columns are not the released schema."""
  where = path(kind, task, cache_dir, local_clone)
  table = pd.read_parquet(where)
  missing = [c for c in COLUMNS[kind] if c not in table.columns]
  if missing:
    raise ValueError(f"{where}: columns {sorted(table.columns)} are not the released {kind} "
                     f"schema; missing {missing} (expected {list(COLUMNS[kind])})")
  return table


def metadata(cache_dir: str = "", local_clone: str = "") -> List[dict]:
  with open(path("hp_metadata", "", cache_dir, local_clone), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def by_concept(table: pd.DataFrame, concepts: Sequence, log=print, what: str = "") -> Dict:
  """{concept_id: that concept's rows, in file order} for the `concepts` (objects with
  `concept_id` and `name`) the table has under the same id and name; logs the others."""
  out, missing = {}, []
  for c in concepts:
    rows = table[table["concept_id"] == c.concept_id]
    if rows.empty or set(rows["concept"]) != {c.name}:
      missing.append(c.concept_id)
    else:
      out[c.concept_id] = rows
  if missing:
    log(f"released {what}: {len(missing)} concept(s) not in the file (ids {missing[:10]}"
        f"{' ...' if len(missing) > 10 else ''}); the judge writes theirs")
  return out


def hp_tuning_benchmark(n_train: int = 0, cache_dir: str = "", local_clone: str = "",
                        data_root=None):
  """The paper's 3 development concepts (its Table 9) as an AxBench benchmark: their
  released Lang training pairs, and 10 AlpacaEval test instructions each drawn as AxBench
  draws them (`random_state` = the released concept id: our assumption)."""
  from steerjax.data import axbench
  concepts = [axbench.Concept(int(r["concept_id"]), r["concept"])
              for r in metadata(cache_dir, local_clone)]
  table = frame("hp_train", "", cache_dir, local_clone)
  pairs = {}
  for c in concepts:
    rows = table[table["concept_id"] == c.concept_id]
    if rows.empty:
      raise ValueError(f"the released hp_tuning train data has no rows for concept "
                       f"{c.concept_id} ({c.name!r})")
    found = list(zip(rows["input"], rows["output"]))
    pairs[c.concept_id] = found[:n_train] if n_train else found
  alpaca = axbench.alpaca_frame(data_root)
  return axbench.Benchmark(concepts, pairs, {c.concept_id: axbench.eval_instructions(
      alpaca, c.concept_id) for c in concepts})
