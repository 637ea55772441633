"""A short end-to-end run of the demo job (train, generate, judge, report), and a rerun that
reads every concept back."""

import json
import os

from configs import demo as demo_config
from steerjax.jobs import demo
from steerjax.runtime import session

KEYS = {"concept", "method", "concept_score", "instruction_score", "fluency_score", "overall",
        "factor", "n"}


def test_quick_demo_writes_results_and_resumes_per_concept(tmp_path, monkeypatch):
  config = demo_config.get_config("quick")
  config.data_root = os.environ["STEERJAX_DATA"]
  lines = []
  rows = demo.run(config, str(tmp_path), log=lines.append)
  assert len(rows) == len(config.methods) * len(config.data.concepts)
  saved = json.load(open(tmp_path / "results.json"))
  assert saved == rows
  for row in saved:
    assert KEYS <= set(row)
    for key in ("concept_score", "instruction_score", "fluency_score", "overall"):
      assert 0.0 <= row[key] <= 2.0
  by_method = {r["method"]: r for r in saved}
  assert by_method["prosv_lang"]["n"] == 10          # joint: all ten eval prompts
  assert by_method["fssv_lang_sampled"]["n"] == 5    # grid: test ids 5..9 only
  assert by_method["fssv_lang_sampled"]["factor"] in demo_config.METHODS[
      "fssv_lang_sampled"]["grid"]
  gens = [json.loads(line) for line in open(tmp_path / "generations.jsonl")]
  sampled = [g for g in gens if g["method"] == "fssv_lang_sampled"]
  assert len(sampled) == 14 * 10 * 2                 # factors x prompts x concepts
  assert (tmp_path / "scores.png").stat().st_size > 1000
  assert os.path.exists(tmp_path / "methods" / "prosv_lang" / "train" / "svs" /
                        "tree.safetensors")
  table = "\n".join(lines)
  assert "| prosv_lang |" in table and "| unsteered |" in table
  # The utility column: held-out NLL with the SVs on, beside the unsteered model's.
  summary = {s["method"]: s for s in json.load(open(tmp_path / "summary.json"))["methods"]}
  base = summary["unsteered"]["heldout_nll"]
  assert 0 < base < 10 and summary["prosv_lang"]["heldout_nll"] != base
  assert summary["fssv_lang_sampled"]["heldout_nll"] > 0
  assert "| fluency | generations | judge_calls | heldout_nll |" in open(
      tmp_path / "results.md").read()
  assert (tmp_path / "utility.png").stat().st_size > 1000

  # A rerun finds every concept generated and judged: no training, no generation, same rows.
  def refuse(*a, **k):
    raise AssertionError("the rerun generated again")
  monkeypatch.setattr(session, "generate_many", refuse)
  monkeypatch.setattr(session.training, "train_concepts", refuse)
  (tmp_path / "methods" / "unsteered" / "judged" / "toy.jsonl").unlink()   # judged again
  assert demo.run(config, str(tmp_path), log=lines.append) == rows
