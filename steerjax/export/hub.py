"""Share a folder of SV files as a Hugging Face hub repo with a generated model card.

`push(folder, "org/name")` uploads every `*.safetensors` SV in `folder`, a README.md card
(model, layer, positions, op, objective, factor of each SV, and the scores of a results
file when one is given) and that results file. Anyone then loads an SV by name wherever
steerjax takes an SV path: `load_sv("org/name/dog")` (`datasets/org/name/dog` for a
dataset repo).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from typing import Callable, List, Optional

from steerjax import checkpoint

SV_COLUMNS = ("file", "concept", "model", "layer", "positions", "op", "objective", "factor",
              "width")
# per-concept rows (results.json, per_concept.csv) and summary rows (summary.json / .csv)
SCORE_COLUMNS = ("method", "concept_id", "concept", "concepts", "factor", "n", "concept_score",
                 "instruction_score", "fluency_score", "instruction", "fluency", "overall")


def read_results(path: str) -> List[dict]:
  """Rows of a steerjax results file: results.json / summary.json or a .csv."""
  if path.endswith(".csv"):
    with open(path, newline="", encoding="utf-8") as f:
      return list(csv.DictReader(f))
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  rows = data.get("methods") if isinstance(data, dict) else data
  if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
    raise ValueError(f"{path}: expected a list of result rows (results.json, summary.json "
                     "or a .csv)")
  return rows


def _table(rows: List[dict], columns) -> str:
  columns = [c for c in columns if any(c in r for r in rows)]
  cell = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
  return "\n".join(lines)


def model_card(repo_id: str, svs: List[dict], results: Optional[List[dict]] = None,
               repo_type: str = "model") -> str:
  """README.md for a repo of SVs; `svs`: one header per file, with its `file` name."""
  models = sorted({str(s.get("model", "")) for s in svs} - {""})
  front = ["---", "library_name: steerjax", "tags:", "- steering-vectors", "- steerjax"]
  if len(models) == 1 and models[0].count("/") == 1 and not os.path.exists(models[0]):
    front.append(f"base_model: {models[0]}")   # a hub id, not a local path
  front.append("---")
  prefix = "datasets/" if repo_type == "dataset" else ""
  example = os.path.splitext(svs[0]["file"])[0]
  body = [
      f"# Steering vectors: {repo_id}", "",
      f"{len(svs)} steering vector(s) trained with steerjax. Each file is safetensors "
      "(`factor` scalar, `direction` [width]) with a JSON header under the key `steerjax`. "
      "`layer` is the 0-based decoder block whose output is edited (HF `model.layers[layer]`); "
      "`positions` are the tokens edited (`all`: every token; `fN+lM`: the first N and last "
      "M prompt tokens; `prompt`: the prompt only).", "",
      "```python", "from steerjax.checkpoint import load_sv",
      f'sv, meta = load_sv("{prefix}{repo_id}/{example}")', "```", "",
      "Any SV name works wherever steerjax takes an SV path (e.g. the `steerjax` lm-eval "
      "model's `sv=` argument); `python -m steerjax.export` converts them for llama.cpp, "
      "EasySteer and lm-eval's `steered` model.", "",
      "## Files", "", _table(svs, SV_COLUMNS), ""]
  if results:
    body += ["## Scores", "", _table(results, SCORE_COLUMNS), ""]
  return "\n".join(front + [""] + body)


def push(folder: str, repo_id: str, *, repo_type: str = "model", results: str = "",
         private: Optional[bool] = None, token: Optional[str] = None, api=None,
         log: Callable = print) -> str:
  """Upload the SVs in `folder` (+ card, + results file) to `repo_id`; returns its URL.
  `api`: a `huggingface_hub.HfApi` (the default reads HF_ENDPOINT and the saved token)."""
  if repo_type not in ("model", "dataset"):
    raise ValueError(f"repo_type={repo_type!r}; use 'model' or 'dataset'")
  if repo_id.count("/") != 1:
    raise ValueError(f"repo id {repo_id!r} must look like 'org/name'")
  files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors")) \
      if os.path.isdir(folder) else []
  if not files:
    raise FileNotFoundError(f"no SV files (*.safetensors) in {folder}")
  headers = []
  for name in files:
    _, meta = checkpoint.load_sv(os.path.join(folder, name))
    headers.append(dict(meta, file=name))
  rows = read_results(results) if results else None
  if api is None:
    from huggingface_hub import HfApi
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
  with tempfile.TemporaryDirectory() as staging:
    for name in files:
      shutil.copy2(os.path.join(folder, name), staging)
    if results:
      shutil.copy2(results, staging)
    with open(os.path.join(staging, "README.md"), "w", encoding="utf-8") as f:
      f.write(model_card(repo_id, headers, rows, repo_type))
    try:
      url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
      api.upload_folder(repo_id=repo_id, folder_path=staging, repo_type=repo_type,
                        commit_message=f"steerjax: {len(files)} steering vector(s)")
    except Exception as err:  # offline, no token, no rights: one line, no traceback
      reason = (str(err).strip().splitlines() or [""])[0]
      raise ConnectionError(f"pushing to the hub {repo_type} repo {repo_id} failed "
                            f"({type(err).__name__}: {reason}); check the connection and "
                            "the token (huggingface-cli login or HF_TOKEN)") from None
  log(f"pushed {len(files)} SV(s) to {repo_type} repo {repo_id}")
  return str(url)
