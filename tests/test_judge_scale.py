"""The online judge at an account's rate limits, its background queue and its cost numbers.

A loopback server (`loopback_openai`) enforces RPM and TPM limits with OpenAI's headers and
answers 429 past them. These are scaled-down versions (higher limits, fewer ratings, the same
assertions) of `experiments/bench/judge_rate_limits.py`, whose full-size numbers are in
docs/judge.md.
"""

from __future__ import annotations

import threading
import time

import pytest
from loopback_openai import (API_KEY, LoopbackOpenAI, count_tokens, expected, prompt_hash,
                             scores)

from steerjax.eval import judge_cost
from steerjax.eval.judge import KINDS, OpenAIJudge, rate_behind, render_prompt



def make_items(n, start=0):
  return [{"concept": f"concept {k}", "instruction": f"Write about topic number {k}.",
           "continuation": f"A continuation numbered {k} that goes on for a few words."}
          for k in range(start, start + n)]


def judge_for(server, cache_dir, **options):
  return OpenAIJudge(**dict(dict(base_url=server.url, model="judge-test", api_key=API_KEY,
                                 cache_dir=str(cache_dir), timeout_s=10.0,
                                 backoff_base_s=0.05, backoff_max_s=2.0), **options))


def check_exact_and_paid_once(server, items, results):
  assert [scores(r) for r in results] == [expected(it) for it in items]
  assert all(r["ok"] for r in results)
  asked = {prompt_hash(render_prompt(kind, it)) for it in items for kind in KINDS}
  assert set(server.paid) == asked and set(server.paid.values()) == {1}


def test_requests_per_minute_limit_is_met_without_a_429_storm(tmp_path):
  rpm = 4000
  items = make_items(80)                # 240 requests, about 4 s at 63 requests/s
  with LoopbackOpenAI(rpm=rpm, tpm=10 ** 9, latency_s=(0.2, 0.5)) as server:
    with judge_for(server, tmp_path) as judge:
      results = judge.rate(items)
    check_exact_and_paid_once(server, items, results)
    throughput = server.throughput_per_minute()
    answered = len(server.arrivals)
  assert 0.9 * rpm <= throughput <= rpm * 1.02, throughput
  assert server.rejected < 0.05 * (answered + server.rejected), server.rejected
  stats = judge.stats
  assert stats.requests_sent == answered + server.rejected
  assert stats.rate_limited == server.rejected and stats.failures == 0
  # usage counted from the replies: what the server says it served
  assert stats.prompt_tokens == sum(count_tokens(render_prompt(k, it))
                                    for it in items for k in KINDS)
  assert stats.completion_tokens > 0


def test_tokens_per_minute_limit_is_met(tmp_path):
  # max_tokens=100 and ~200-token prompts: about 300 tokens charged per request, so a TPM
  # of 1.2M allows ~65 requests/s while the RPM would allow 500/s.
  tpm = 1_200_000
  items = make_items(60)
  with LoopbackOpenAI(rpm=30000, tpm=tpm, latency_s=(0.2, 0.5)) as server:
    with judge_for(server, tmp_path, max_tokens=100) as judge:
      results = judge.rate(items)
    check_exact_and_paid_once(server, items, results)
    charged = server.tokens_per_minute()
    answered = len(server.arrivals)
    assert server.throughput_per_minute() < 0.5 * 30000   # the token limit binds
  assert 0.9 * tpm <= charged <= tpm * 1.02, charged
  assert server.rejected < 0.05 * (answered + server.rejected), server.rejected


def test_the_in_flight_cap_and_the_pending_bound_hold(tmp_path):
  items = make_items(20)
  with LoopbackOpenAI(latency_s=(0.05, 0.1)) as server:   # no limits, no headers
    with judge_for(server, tmp_path / "a", concurrency=6) as judge:
      check_exact_and_paid_once(server, items, judge.rate(items))
    assert 2 <= server.max_in_flight <= 6
  with LoopbackOpenAI(latency_s=(0.05, 0.1)) as server:
    with judge_for(server, tmp_path / "b", max_pending=4) as judge:
      check_exact_and_paid_once(server, items, judge.rate(items))
    assert 2 <= server.max_in_flight <= 4


def test_rate_behind_overlaps_making_and_judging(tmp_path):
  batches = [make_items(4, start=4 * k) for k in range(4)]
  make_s = 0.3

  def made():
    for k, items in enumerate(batches):
      time.sleep(make_s)                # the chip's work on batch k
      yield k, items

  with LoopbackOpenAI(latency_s=(0.3, 0.35)) as server:
    with judge_for(server, tmp_path / "sequential", concurrency=12) as judge:
      started = time.monotonic()
      sequential = [judge.rate(items) for items in batches]
      judging = time.monotonic() - started
    with judge_for(server, tmp_path / "overlapped", concurrency=12) as judge:
      started = time.monotonic()
      overlapped = list(rate_behind(judge, made(), depth=1))
      wall = time.monotonic() - started
  assert [tag for tag, _ in overlapped] == list(range(4))
  assert [ratings for _, ratings in overlapped] == sequential
  # Making alone takes 4 x 0.3 s and judging alone `judging` (about 4 x 0.33 s); overlapped
  # takes about the larger of the two, not their sum.
  making = len(batches) * make_s
  assert wall < 0.8 * (making + judging), (wall, making, judging)


def test_rate_behind_bounds_what_waits_on_the_judge(tmp_path):
  release = threading.Event()

  class SlowJudge:
    name = "slow"

    def __init__(self):
      self.submitted = []

    def submit(self, items):
      self.submitted.append(len(items))
      judge = self

      class Handle:
        def result(self, timeout=None, allow_missing=False):
          release.wait(5)
          return [dict(concept_score=judge.submitted.index(len(items)))] * len(items)
      return Handle()

  judge = SlowJudge()
  made = []

  def batches():
    for k in range(1, 5):
      made.append(k)
      yield k, [{}] * k

  stream = rate_behind(judge, batches(), depth=2)
  release.set()
  first = next(stream)
  # One result out: three batches were made, two of them still wait on the judge.
  assert first[0] == 1 and made == [1, 2, 3]
  assert [tag for tag, _ in stream] == [2, 3, 4]


def test_rate_behind_takes_a_judge_without_submit():
  class RateOnly:
    name = "rate-only"

    def rate(self, items):
      return [dict(n=len(items))] * len(items)
  out = list(rate_behind(RateOnly(), ((k, [{}] * k) for k in (1, 2, 3)), depth=None))
  assert out == [(1, [dict(n=1)]), (2, [dict(n=2)] * 2), (3, [dict(n=3)] * 3)]


def test_cost_and_time_estimates():
  prices = judge_cost.Prices(input_per_m=0.15, output_per_m=0.60)
  stats = dict(prompt_tokens=2_000_000, completion_tokens=1_000_000,
               batch_prompt_tokens=4_000_000, batch_completion_tokens=2_000_000)
  got = judge_cost.cost(stats, prices)
  assert got["online"] == pytest.approx(0.30 + 0.60)
  assert got["batch"] == pytest.approx(0.30 + 0.60)
  assert got["total"] == pytest.approx(1.80)
  assert judge_cost.estimate_cost(741_000, 400, 80, prices) == pytest.approx(
      dict(online=741_000 * (400 * 0.15 + 80 * 0.60) / 1e6,
           batch=741_000 * (400 * 0.075 + 80 * 0.30) / 1e6))
  # 741,000 calls at 10,000 RPM: the request limit binds (78 min at 95%) ...
  t = judge_cost.estimate_time(741_000, 400, 500, rpm=10_000, tpm=10_000_000, latency_s=1.0)
  assert t["seconds"] == t["requests"] == pytest.approx(741_000 / (10_000 * 0.95) * 60)
  # ... and at 2M TPM the tokens do (900 tokens charged per call).
  t = judge_cost.estimate_time(741_000, 400, 500, rpm=10_000, tpm=2_000_000, latency_s=1.0)
  assert t["seconds"] == t["tokens"] == pytest.approx(741_000 * 900 / (2e6 * 0.95) * 60)
  t = judge_cost.estimate_time(1000, 400, 500, rpm=10 ** 6, latency_s=2.0, max_in_flight=16)
  assert t["seconds"] == t["in_flight"] == pytest.approx(125.0)
  line = judge_cost.usage_line(dict(stats, failures=0, requests_sent=7), prices)
  assert "$1.80" in line and "failed ratings: 0" in line
  typical = judge_cost.typical_prompt_tokens(continuation_tokens=128)
  assert 128 + 100 < typical < 128 + 600   # the templates are a few hundred tokens
  with pytest.raises(ValueError, match="output_per_m"):
    judge_cost.Prices(output_per_m=-1)
