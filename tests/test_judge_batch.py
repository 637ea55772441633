"""The judge through the Batch API of a loopback server (`loopback_openai`): batches that
finish out of order, lines that fail, a batch that expires, files split at the line and byte
limits, and a run killed while polling that resumes without submitting anything again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from loopback_openai import API_KEY, LoopbackOpenAI, expected, prompt_hash, scores

from steerjax.eval.judge import KINDS, MissingRatings, OpenAIJudge, render_prompt
from steerjax.eval.judge_batch import STATE_FILE, split_lines

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_items(n, marker="", start=0):
  return [{"concept": f"concept {k}", "instruction": f"Write about topic number {k}.",
           "continuation": f"A continuation numbered {k}. {marker}".strip()}
          for k in range(start, start + n)]


def batch_judge(server, cache_dir, **options):
  return OpenAIJudge(**dict(dict(base_url=server.url, model="judge-test", api_key=API_KEY,
                                 cache_dir=str(cache_dir), mode="batch", batch_poll_s=0.05,
                                 timeout_s=10.0, backoff_base_s=0.05), **options))


def check_exact_and_paid_once(server, items, results):
  assert [scores(r) for r in results] == [expected(it) for it in items]
  assert all(r["ok"] for r in results)
  asked = {prompt_hash(render_prompt(kind, it)) for it in items for kind in KINDS}
  assert set(server.paid) == asked and set(server.paid.values()) == {1}


def uploaded_inputs(server):
  return [f for f in server.files.values() if f["purpose"] == "batch"]


def test_out_of_order_failed_lines_and_an_expired_batch(tmp_path):
  # 10 lines per file: 36 requests -> 4 batches; the second (index 1) expires with half its
  # lines undone, the first finishes last, and <batchfail> lines fail on their first batch.
  items = make_items(8) + make_items(4, "<batchfail>", start=8)
  logs = []
  with LoopbackOpenAI(batch_delays=(0.6, 0.1, 0.3, 0.2), expire_batches={1},
                      max_file_lines=10) as server:
    with batch_judge(server, tmp_path, batch_max_lines=10, log=logs.append) as judge:
      results = judge.rate(items)
    check_exact_and_paid_once(server, items, results)
    inputs = uploaded_inputs(server)
    assert [len(f["content"].splitlines()) for f in inputs[:4]] == [10, 10, 10, 6]
    # Lines that failed or expired went into later batches, never to the online endpoint.
    assert len(inputs) > 4 and server.arrivals == []
    statuses = [b["status"] for b in server.batches.values()]
    assert statuses.count("expired") == 1 and set(statuses) == {"completed", "expired"}
  stats = judge.stats
  assert stats.batch_failed_lines == 5 + 12 and stats.failures == 0
  assert stats.batch_requests == 36 + stats.batch_failed_lines
  assert stats.batch_prompt_tokens > 0 and stats.prompt_tokens == 0
  assert any(" done, ETA " in line for line in logs)   # progress of the slow batch
  # The replies are in the same cache as online ones: a rerun asks nothing.
  with LoopbackOpenAI() as again:
    with batch_judge(again, tmp_path) as judge:
      assert judge.rate(items) == results
    assert again.uploads == 0 and judge.stats.cache_hits == 36


def test_lines_that_keep_failing_go_online(tmp_path):
  items = make_items(3) + make_items(2, "<batchfail>", start=3)
  with LoopbackOpenAI(batch_delays=(0.05,)) as server:
    with batch_judge(server, tmp_path, batch_max_rounds=1) as judge:
      results = judge.rate(items)
    check_exact_and_paid_once(server, items, results)
    assert len(server.arrivals) == 6 and server.batches_created == 1
  assert judge.stats.requests_sent == 6 and judge.stats.prompt_tokens > 0


def test_files_split_at_the_byte_limit():
  lines = [json.dumps({"n": k, "pad": "x" * (k % 7 * 10)}).encode() + b"\n" for k in range(40)]
  groups = split_lines(lines, max_lines=50_000, max_bytes=300)
  assert b"".join(b"".join(g) for g in groups) == b"".join(lines)
  assert all(sum(map(len, g)) <= 300 for g in groups) and len(groups) > 1
  assert [len(g) for g in split_lines(lines, max_lines=15, max_bytes=10 ** 6)] == [15, 15, 10]
  with pytest.raises(ValueError, match="batch_max_bytes"):
    split_lines([b"y" * 400], max_lines=10, max_bytes=300)


def test_the_judge_splits_files_the_server_would_refuse(tmp_path):
  items = make_items(10)
  with LoopbackOpenAI(batch_delays=(0.05,), max_file_bytes=4000) as server:
    with batch_judge(server, tmp_path, batch_max_bytes=4000) as judge:
      results = judge.rate(items)
    check_exact_and_paid_once(server, items, results)
    sizes = [len(f["content"]) for f in uploaded_inputs(server)]
    assert len(sizes) > 1 and max(sizes) <= 4000 and sum(sizes) > 4000


def test_submit_now_collect_later(tmp_path):
  items = make_items(4)
  with LoopbackOpenAI(batch_delays=(0.3,)) as server:
    with batch_judge(server, tmp_path, batch_wait_s=0) as judge:
      with pytest.raises(MissingRatings, match="12 of 12 judge requests have no reply: 12 are still pending in running batches"):
        judge.rate(items)
    time.sleep(0.4)
    with batch_judge(server, tmp_path) as judge:
      results = judge.rate(items)
    check_exact_and_paid_once(server, items, results)
    assert server.uploads == 1 and server.batches_created == 1


KILLED_RUN = textwrap.dedent("""
    import sys
    from steerjax.eval.judge import OpenAIJudge
    url, cache = sys.argv[1], sys.argv[2]
    items = [{"concept": f"concept {k}", "instruction": f"Write about topic number {k}.",
              "continuation": f"A continuation numbered {k}."} for k in range(6)]
    judge = OpenAIJudge(base_url=url, model="judge-test", api_key="sk-loopback",
                        cache_dir=cache, mode="batch", batch_poll_s=0.05, batch_max_lines=8,
                        log=lambda line: print(line, flush=True))
    judge.rate(items)
    print("finished", flush=True)
""")


def test_kill_while_polling_then_rerun_uploads_nothing_new(tmp_path):
  items = make_items(6)
  with LoopbackOpenAI(batch_delays=(0.1,), max_file_lines=8) as server:
    server.hold.clear()      # no batch finishes until the killed run is gone
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, server.url, str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=ROOT)
    try:
      polled = []
      for line in proc.stdout:     # wait until it polls all three batches
        polled.append(line)
        if sum("in_progress" in p for p in polled) >= 3:
          break
      os.kill(proc.pid, signal.SIGKILL)
      proc.wait(timeout=10)
    finally:
      if proc.poll() is None:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not any("finished" in p for p in polled)
    uploads, created = server.uploads, server.batches_created
    assert (uploads, created) == (3, 3)          # 18 requests, 8 lines per file
    server.hold.set()
    with batch_judge(server, tmp_path, batch_max_lines=8) as judge:
      results = judge.rate(items)
    check_exact_and_paid_once(server, items, results)
    assert (server.uploads, server.batches_created) == (uploads, created)
  events = [json.loads(x) for x in open(tmp_path / STATE_FILE)]
  assert sum(e["event"] == "merged" for e in events) == 3


def test_an_upload_whose_batch_was_not_recorded_is_not_submitted_again(tmp_path):
  items = make_items(3)
  with LoopbackOpenAI(batch_delays=(0.1,)) as server:
    with batch_judge(server, tmp_path, batch_wait_s=0) as judge:
      with pytest.raises(MissingRatings):
        judge.rate(items)
    # A kill between creating the batch and writing it down: drop its line from the state.
    path = tmp_path / STATE_FILE
    kept = [x for x in open(path) if json.loads(x)["event"] != "batch"]
    path.write_text("".join(kept))
    with batch_judge(server, tmp_path) as judge:
      results = judge.rate(items)
    check_exact_and_paid_once(server, items, results)
    assert server.uploads == 1 and server.batches_created == 1


def test_polling_survives_passing_errors_and_reports_lasting_ones(tmp_path):
  import openai
  items = make_items(3)
  with LoopbackOpenAI(batch_delays=(0.1,)) as server:
    server.failing_polls = 3
    with batch_judge(server, tmp_path / "passing", max_retries=0) as judge:
      results = judge.rate(items)
    check_exact_and_paid_once(server, items, results)
  with LoopbackOpenAI(batch_delays=(0.1,)) as server:
    server.failing_polls = 10 ** 6
    with batch_judge(server, tmp_path / "lasting", max_retries=0,
                     batch_max_poll_errors=3) as judge:
      with pytest.raises(openai.InternalServerError):
        judge.rate(items)
    assert server.batches_created == 1


def test_batch_mode_needs_a_cache_dir():
  with pytest.raises(ValueError, match="cache_dir"):
    OpenAIJudge(base_url="http://127.0.0.1:9/v1", model="m", api_key="k", cache_dir=None,
                mode="batch")
  with pytest.raises(ValueError, match="mode='offline'"):
    OpenAIJudge(base_url="http://127.0.0.1:9/v1", model="m", api_key="k", mode="offline")
