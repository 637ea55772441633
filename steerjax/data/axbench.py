"""AxBench steering data: concept lists, training positives, AlpacaEval test instructions.

Files come from the local data root when present (the layout of the AxBench repository:
`axbench/concept10/prod_2b_l10_v1/generate/{train_data.parquet,metadata.jsonl}`,
`axbench/concept500/prod_2b_l10_v1/metadata.jsonl`, `alpaca_eval/alpaca_eval.json`), else
from the hub (`pyvene/axbench-concept500`, layout `2b/l10/train/data.parquet`, and
`tatsu-lab/alpaca_eval`). Training pairs become token ids under the model's chat template;
neutral responses for SimPO are made once and kept in an on-disk store.
"""

from __future__ import annotations

import json
import os
from typing import Callable, List, Optional, Sequence

import pandas as pd

from steerjax import paths, pinned
from steerjax.data.batching import ConceptData
from steerjax.data.benchmark import N_EVAL, Benchmark, Concept, concept_name  # noqa: F401
from steerjax.store import TextStore

HUB_REPOS = {"concept10": "pyvene/axbench-concept10", "concept500": "pyvene/axbench-concept500"}
TASKS = ("2b_l10", "2b_l20", "9b_l20", "9b_l31")
ALPACA_REPO = "tatsu-lab/alpaca_eval"

# AxBench's templates at the commit the paper cites: (repo, commit, path).
AXBENCH_TEMPLATES = ("stanfordnlp/axbench", "c01a22adcc6a2e1d3ec663c7577afac85ae03771",
                     "axbench/templates/prompt_templates.py")
NEUTRAL_REQUEST = """\
Reply to the instruction below the way a helpful assistant would, in at most about 100 \
words. Keep to what the instruction asks about, and do not mention or hint at this \
concept: {concept}

Instruction: {instruction}

Write only the reply itself."""


def _check(suite: str, task: str):
  if suite not in HUB_REPOS:
    raise ValueError(f"data.suite={suite!r}; expected one of {sorted(HUB_REPOS)}")
  if task not in TASKS:
    raise ValueError(f"data.task={task!r}; expected one of {TASKS}")


def _local(data_root, *candidates) -> Optional[str]:
  root = paths.data_root(data_root)
  if not root:
    return None
  for c in candidates:
    if os.path.exists(os.path.join(root, c)):
      return os.path.join(root, c)
  return None


def _hub_file(repo: str, filename: str, local: Sequence[str]) -> str:
  from huggingface_hub import hf_hub_download
  try:
    return hf_hub_download(repo, filename, repo_type="dataset")
  except Exception as err:
    raise FileNotFoundError(
        f"could not fetch {filename} of the hub dataset {repo} ({type(err).__name__}), and "
        f"the data root ({paths.data_root(None) or 'unset; set STEERJAX_DATA'}) has none of "
        f"{list(local)}") from err


def train_frame(suite: str, task: str, data_root: Optional[str] = None) -> pd.DataFrame:
  """The task's train parquet (positives and the shared negatives) as a DataFrame."""
  _check(suite, task)
  size, layer = task.split("_")
  local = (f"axbench/{suite}/prod_{task}_v1/generate/train_data.parquet",
           f"axbench/{suite}/prod_{task}_v1/train_data.parquet",
           f"axbench/{suite}/{size}/{layer}/train/data.parquet")
  path = _local(data_root, *local) or _hub_file(HUB_REPOS[suite],
                                                f"{size}/{layer}/train/data.parquet", local)
  return pd.read_parquet(path)


def latent_frame(suite: str, task: str, data_root: Optional[str] = None) -> pd.DataFrame:
  """The task's latent eval parquet (rows of input, concept_id), from which AxBench takes
  each concept's max activation."""
  _check(suite, task)
  size, layer = task.split("_")
  local = (f"axbench/{suite}/prod_{task}_v1/inference/latent_eval_data.parquet",
           f"axbench/{suite}/{size}/{layer}/inference/latent_eval_data.parquet")
  path = _local(data_root, *local) or _hub_file(
      HUB_REPOS[suite], f"{size}/{layer}/inference/latent_eval_data.parquet", local)
  return pd.read_parquet(path)


def concept_list(suite: str, task: str, data_root: Optional[str] = None,
                 frame: Optional[pd.DataFrame] = None) -> List[Concept]:
  """Concepts in id order: from metadata.jsonl when it is in the data root, else read off
  the positives of the train parquet."""
  _check(suite, task)
  path = _local(data_root, f"axbench/{suite}/prod_{task}_v1/generate/metadata.jsonl",
                f"axbench/{suite}/prod_{task}_v1/metadata.jsonl")
  if path:
    with open(path, encoding="utf-8") as f:
      rows = [json.loads(line) for line in f if line.strip()]
    return [Concept(int(r["concept_id"]), r["concept"], r.get("ref", "")) for r in rows]
  frame = train_frame(suite, task, data_root) if frame is None else frame
  pos = frame[(frame["category"] == "positive") & (frame["concept_id"] >= 0)]
  first = pos.drop_duplicates("concept_id").sort_values("concept_id")
  return [Concept(int(c), str(n)) for c, n in zip(first["concept_id"], first["output_concept"])]


def positives(frame: pd.DataFrame, concept: Concept, limit: int = 0) -> List[tuple]:
  """(instruction, concept response) pairs of one concept, in file order."""
  rows = frame[(frame["category"] == "positive") & (frame["concept_id"] == concept.concept_id)]
  if rows.empty:
    raise ValueError(f"no positive examples for concept {concept.concept_id} in the train data")
  names = set(rows["output_concept"])
  if names != {concept.name}:
    raise ValueError(f"concept {concept.concept_id}: the train data names it {sorted(names)}, "
                     f"the concept list {concept.name!r}; are both from the same task?")
  pairs = list(zip(rows["input"], rows["output"]))
  return pairs[:limit] if limit else pairs


def alpaca_frame(data_root: Optional[str] = None) -> pd.DataFrame:
  """The 805 AlpacaEval rows in file order (their order fixes what `sample` draws)."""
  local = "alpaca_eval/alpaca_eval.json"
  path = _local(data_root, local) or _hub_file(ALPACA_REPO, "alpaca_eval.json", [local])
  with open(path, encoding="utf-8") as f:
    return pd.DataFrame(json.load(f))


def eval_instructions(alpaca: pd.DataFrame, concept_id: int, n: int = N_EVAL) -> List[str]:
  """AxBench's test instructions of a concept: `alpaca.sample(n, random_state=concept_id)`.
  Ids 0..4 pick a factor, 5..9 are the held-out test set."""
  return alpaca.sample(n, random_state=concept_id)["instruction"].tolist()


# ------------------------------------------------------------------------- tokenized pairs

def tokenize_pairs(tok, pairs: Sequence[tuple], max_response_tokens: int = 128):
  """(prompt ids under the chat template, response ids cut to `max_response_tokens`)."""
  prompts = [tok.chat_prompt(x) for x, _ in pairs]
  responses = [tok.encode(y)[:max_response_tokens] for _, y in pairs]
  return prompts, responses


def neutral_request(cache_dir: str = "", local_clone: str = "") -> str:
  """AxBench's request for a concept-neutral response (`T_RESPONSE_WITHOUT_CONCEPT`, the
  paper's Fig. 40), read from its templates at the pinned commit (or a local clone), with
  {concept} and {instruction} placeholders."""
  where = pinned.fetch(*AXBENCH_TEMPLATES, cache_dir, local_clone)
  with open(where, encoding="utf-8") as f:
    text = pinned.constants_of(f.read(), {"neutral": "T_RESPONSE_WITHOUT_CONCEPT"}, where)
  return text["neutral"].replace("{INSTRUCTION}", "{instruction}").replace("{CONCEPT}",
                                                                           "{concept}")


def neutral_responses(store: TextStore, source: str, source_name: str, items: Sequence[tuple],
                      tok, max_tokens: int, make_ids: Callable, make_text: Callable,
                      chunk: int = 1024, request: str = NEUTRAL_REQUEST,
                      kind: str = "neutral") -> List[list]:
  """Neutral response ids y for `items` = [(concept, instruction, prompt ids)], cut to
  `max_tokens` (no EOS).

  `source="model"`: `make_ids(prompt ids) -> greedy ids` of the target model;
  `source="judge"`: `make_text(request prompts) -> replies` of the judge LLM, asked with
  `request` ({concept}, {instruction}). Each y is stored under (`kind`, source, source_name,
  concept, instruction) as soon as its chunk is made, so an interrupted run keeps what it
  has.
  """
  if source not in ("model", "judge"):
    raise ValueError(f"neutral source {source!r}; expected 'model' or 'judge'")
  keys = [store.key(kind, source, source_name, c.name, x, max_tokens) for c, x, _ in items]
  found = [store.get(k) for k in keys]
  todo = [i for i, v in enumerate(found) if v is None]
  for start in range(0, len(todo), chunk):
    part = todo[start:start + chunk]
    if source == "model":
      made = [{"ids": [int(t) for t in ids]} for ids in make_ids([items[i][2] for i in part])]
    else:
      made = [{"text": text} for text in make_text([
          request.format(concept=items[i][0].name, instruction=items[i][1])
          for i in part])]
    for i, value in zip(part, made):
      store.put(keys[i], value)
      found[i] = value
  return [(v["ids"] if "ids" in v else tok.encode(v["text"]))[:max_tokens] for v in found]


def load_benchmark(suite: str, task: str, first: int = 0, count: int = 0, n_train: int = 0,
                   data_root: Optional[str] = None) -> Benchmark:
  """Concepts `first .. first+count-1` of the task's list (count 0: to the end)."""
  frame = train_frame(suite, task, data_root)
  every = concept_list(suite, task, data_root, frame)
  chosen = every[first:first + count] if count else every[first:]
  if not chosen:
    raise ValueError(f"data.first_concept={first}, data.num_concepts={count} select no concept "
                     f"of the {len(every)} in {suite}/{task}")
  alpaca = alpaca_frame(data_root)
  return Benchmark(chosen, {c.concept_id: positives(frame, c, n_train) for c in chosen},
                   {c.concept_id: eval_instructions(alpaca, c.concept_id) for c in chosen})


def training_data(bench: Benchmark, tok, max_response_tokens: int = 128,
                  neutral: Optional[Callable[[List[tuple]], List[list]]] = None
                  ) -> List[ConceptData]:
  """One ConceptData per concept; `neutral([(concept, instruction, prompt ids)]) -> y ids`
  adds the neutral responses SimPO needs (asked once for every concept together)."""
  tokenized = {c.concept_id: tokenize_pairs(tok, bench.pairs[c.concept_id], max_response_tokens)
               for c in bench.concepts}
  ys = {}
  if neutral is not None:
    items = [(c, x, p) for c in bench.concepts
             for (x, _), p in zip(bench.pairs[c.concept_id], tokenized[c.concept_id][0])]
    flat = iter(neutral(items))
    ys = {c.concept_id: [next(flat) for _ in bench.pairs[c.concept_id]] for c in bench.concepts}
  return [ConceptData(concept_name(c), *tokenized[c.concept_id], ys.get(c.concept_id))
          for c in bench.concepts]


def contrast_training_data(concept: Concept, rows, tok, n_train: int = 0,
                           max_response_tokens: int = 128,
                           neutral_max_tokens: int = 128) -> ConceptData:
  """One concept's SimPO triples from the authors' released contrast rows (see
  steerjax.data.released): x = negative_input, y_c = positive_output, y = negative_output."""
  rows = rows.iloc[:n_train] if n_train else rows
  prompts, responses = tokenize_pairs(tok, list(zip(rows["negative_input"],
                                                    rows["positive_output"])),
                                      max_response_tokens)
  neutral = [tok.encode(y)[:neutral_max_tokens] for y in rows["negative_output"]]
  return ConceptData(concept_name(concept), prompts, responses, neutral)
