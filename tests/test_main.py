"""The training entry point on stories260K: resume after SIGKILL, and learning that shows."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from steerjax.checkpoint import load_sv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--config=configs/base.py", "--config.data.concepts=('dog',)",
        "--config.data.n_train=20", "--config.train.batch_size=5", "--config.train.epochs=40",
        "--config.train.checkpoint_every=4", "--config.train.log_every=1"]


def _cmd(workdir, *extra):
  return [sys.executable, "-m", "steerjax.main", f"--workdir={workdir}", *ARGS, *extra]


def _env():
  return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _run(workdir, *extra):
  out = subprocess.run(_cmd(workdir, *extra), cwd=REPO, env=_env(), capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout + out.stderr


def test_killed_run_resumes_to_the_same_sv(tmp_path):
  killed = tmp_path / "killed"
  proc = subprocess.Popen(_cmd(killed), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  ckpt_dir = killed / "groups" / "0000" / "checkpoints"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if ckpt_dir.is_dir() and any(p.name.isdigit() for p in ckpt_dir.iterdir()):
      break
    time.sleep(0.01)
  assert proc.poll() is None, "the run ended before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed / "svs").exists()

  log = _run(killed)
  resumed = [int(line.split("resumed from step ")[1].split()[0])
             for line in log.splitlines() if "resumed from step" in line]
  assert resumed and 0 < resumed[0] < 160, log[-2000:]
  _run(tmp_path / "straight")
  a, meta = load_sv(str(killed / "svs" / "dog.safetensors"))
  b, _ = load_sv(str(tmp_path / "straight" / "svs" / "dog.safetensors"))
  np.testing.assert_allclose(a["direction"], b["direction"], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(a["factor"], b["factor"], rtol=1e-6)
  assert meta["positions"] == "f2+l2" and meta["objective"] == "lang" and meta["layer"] == 2

  # Joint PrOSV training learns: the Lang loss falls well below its start, alpha moves.
  steps = [json.loads(line) for line in open(tmp_path / "straight" / "metrics.jsonl")]
  assert steps[-1]["step"] == 160
  start, end = steps[0]["loss"], np.mean([s["loss"] for s in steps[-20:]])
  assert end < 0.9 * start, (start, end)
  alpha0 = 4.0 * 8.0
  assert abs(float(b["factor"]) - alpha0) > 0.1 * alpha0

  # A rerun finds the SV and trains nothing.
  assert "skipping ['dog']" in _run(tmp_path / "straight")


def test_typo_in_override_is_an_error(tmp_path):
  out = subprocess.run(_cmd(tmp_path, "--config.steer.positon=all"), cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=300)
  assert out.returncode != 0 and "positon" in out.stderr


def test_sample_cli_prints_the_reference_greedy_story():
  out = subprocess.run(
      [sys.executable, "-m", "steerjax.sample", "--model=stories260K",
       "--prompt=Once upon a time", "--max_new_tokens=252", "--temperature=0"],
      cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  reference = os.path.join(os.environ["STEERJAX_DATA"], "stories260K", "greedy_t0_from_bos.txt")
  assert out.stdout == open(reference).read()
