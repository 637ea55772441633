"""Your own concepts from a local file: JSON-lines or parquet rows of
`concept, prompt, response` and, optionally, `neutral` (the y SimPO and RePS prefer y_c to).

  {"concept": "the ocean", "prompt": "Describe your morning.", "response": "The waves..."}

Rows of one concept may sit anywhere in the file; concepts keep the order of their first row.
Either every row of a concept has a `neutral` or none has (the job then makes them).
"""

from __future__ import annotations

import json
import os
from typing import List, Optional, Tuple

REQUIRED = ("concept", "prompt", "response")
OPTIONAL = ("neutral",)
FORMATS = (".jsonl", ".parquet")


def _rows(path: str) -> List[Tuple[str, dict]]:
  """(where, row) pairs; `where` names the line (JSONL) or row (parquet) for errors."""
  if path.endswith(".jsonl"):
    out = []
    with open(path, encoding="utf-8") as f:
      for number, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as err:
          raise ValueError(f"{path} line {number}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
          raise ValueError(f"{path} line {number}: expected a JSON object with keys "
                           f"{list(REQUIRED)}, got {type(row).__name__}")
        out.append((f"{path} line {number}", row))
    return out
  import pandas as pd
  frame = pd.read_parquet(path)
  missing = [c for c in REQUIRED if c not in frame.columns]
  if missing:
    raise ValueError(f"{path}: columns {list(frame.columns)} lack {missing}; a concept file "
                     f"needs {list(REQUIRED)} (and optionally {list(OPTIONAL)})")
  records = frame.to_dict("records")
  return [(f"{path} row {i}", {k: v for k, v in r.items() if not _missing(v)})
          for i, r in enumerate(records)]


def _missing(value) -> bool:
  return value is None or (isinstance(value, float) and value != value)


def read_rows(path: str) -> List[dict]:
  """Validated rows of a concept file; a malformed row is refused naming its line."""
  if not path:
    raise ValueError("data.source='file' needs data.path: a .jsonl or .parquet file of rows "
                     f"with {list(REQUIRED)}")
  if not path.endswith(FORMATS):
    raise ValueError(f"data.path={path!r}: expected a {' or '.join(FORMATS)} file")
  if not os.path.exists(path):
    raise FileNotFoundError(f"data.path={path!r} does not exist")
  rows = []
  for where, row in _rows(path):
    unknown = sorted(set(row) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
      raise ValueError(f"{where}: unknown key {unknown[0]!r}; rows have {list(REQUIRED)} and "
                       f"optionally {list(OPTIONAL)}")
    for key in REQUIRED + OPTIONAL:
      if key in row and not (isinstance(row[key], str) and row[key].strip()):
        raise ValueError(f"{where}: {key!r} must be a non-empty string, got {row[key]!r}")
    for key in REQUIRED:
      if key not in row:
        raise ValueError(f"{where}: missing {key!r}; rows need {list(REQUIRED)}")
    rows.append(dict(row, where=where))
  if not rows:
    raise ValueError(f"{path} has no rows")
  return rows


def by_concept(rows: List[dict], limit: int = 0) -> dict:
  """{concept: [(prompt, response, neutral or None)]} in first-appearance order, each list
  cut to `limit` (0: all)."""
  grouped = {}
  for row in rows:
    grouped.setdefault(row["concept"], []).append(row)
  out = {}
  for concept, mine in grouped.items():
    has = ["neutral" in r for r in mine]
    if any(has) and not all(has):
      lacking = next(r for r in mine if "neutral" not in r)
      raise ValueError(f"{lacking['where']}: concept {concept!r} has a 'neutral' in some rows "
                       "but not in this one; give it in every row of the concept or in none")
    pairs = [(r["prompt"], r["response"], r.get("neutral")) for r in mine]
    out[concept] = pairs[:limit] if limit else pairs
  return out


def tokenize(tok, pairs, max_response_tokens: int) -> Tuple[list, list, Optional[list]]:
  """(prompt ids under the chat template, response ids, neutral ids or None); responses
  cut to `max_response_tokens`."""
  prompts = [tok.chat_prompt(x) for x, _, _ in pairs]
  responses = [tok.encode(y)[:max_response_tokens] for _, y, _ in pairs]
  neutral = None
  if pairs[0][2] is not None:
    neutral = [tok.encode(n)[:max_response_tokens] for _, _, n in pairs]
  return prompts, responses, neutral
