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
