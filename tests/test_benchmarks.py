"""The accelerator benchmark runs end to end (`--smoke`: a tiny model on whatever backend
is present, here CPU) and reports every number it promises."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_accelerator_benchmark_smoke(tmp_path):
  out = tmp_path / "bench_gpu.json"
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.bench.gpu", "--smoke", "--peak-tflops", "1",
       "--out", str(out)],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  result = json.loads(out.read_text())
  assert len(result["train"]) == 4 and len(result["decode"]) == 3
  for row in result["train"]:
    assert row["step_ms"] > 0 and row["tflops"] > 0 and row["mfu"] > 0, row
    assert abs(row["loss"]) < 1e6, row
  for row in result["decode"]:
    assert row["tok_s"] > 0, row
  assert "train steps" in proc.stdout and "decode:" in proc.stdout


def test_column_benchmark_smoke(tmp_path):
  out = tmp_path / "bench_column.json"
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.bench.column", "--smoke", "--auto", "--peak-tflops",
       "1", "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  result = json.loads(out.read_text())
  assert [r["C"] for r in result["rows"]] == [1, 2]
  for row in result["rows"]:
    for key in ("step_ms", "mfu", "svs_per_hour", "decode_tok_s", "column_h", "vs_paper_poc"):
      assert row[key] > 0, (key, row)
    assert row["decode_batch"] == 10 * row["C"]
    assert abs(row["column_h"] - row["train_column_h"] - row["generate_column_h"]) < 1e-9
  assert result["auto_concepts_per_step"] in (1, 2)
  assert 0 <= result["stacked_vs_alone_rel_diff"] < 0.1   # a bf16 model: bf16 rounding
