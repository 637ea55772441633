"""The online judge against a loopback server that enforces an account's rate limits.

The server (tests/loopback_openai.py) allows `--rpm` requests and `--tpm` tokens per minute
the way OpenAI describes (continuous buckets of one second of the limit, `x-ratelimit-*`
headers, 429 with Retry-After past a limit), answers after 200-500 ms and rates every prompt
from its hash, so each rating can be checked. Two clients rate the same `--items` items
(three requests each) on a fresh server each:

  paced    OpenAIJudge as it is now: asyncio, paced by the headers
  threads  the judge before it: a pool of 16 threads (the axbench configs' `concurrency`),
           each request retried 5 times on 429/5xx after Retry-After or a backoff, then
           rated 0

Reported per client: wall time, answered requests per minute (first to last arrival at the
server), 429s, requests that got no reply (ratings lost), items whose scores differ from the
server's, and requests paid more than once.

  PYTHONPATH=. python -m experiments.bench.judge_rate_limits [--items 1000] [--rpm 1200]
      [--out judge_rate_limits.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))

from loopback_openai import LoopbackOpenAI, rating_for  # noqa: E402

from steerjax.eval.judge import KINDS, OpenAIJudge, render_prompt  # noqa: E402
from steerjax.eval.judge_client import retry_after_seconds  # noqa: E402


class ThreadPoolJudge(OpenAIJudge):
  """The judge's request loop before the paced client, kept here to measure against."""

  def __init__(self, *args, concurrency=16, **kwargs):
    super().__init__(*args, concurrency=concurrency, **kwargs)
    import openai
    self._openai = openai
    self.threads = concurrency
    self._sync_client = openai.OpenAI(base_url=self.base_url, api_key=kwargs["api_key"],
                                      timeout=60.0, max_retries=0)

  def _start(self, pending):
    replies = {}
    with ThreadPoolExecutor(max_workers=self.threads) as pool:
      futures = {pool.submit(self._ask_old, request): key for key, request in pending.items()}
      for future in as_completed(futures):
        key = futures[future]
        replies[key] = future.result()
        if replies[key] is not None:
          self._remember(key, replies[key])
    out = {}
    for key, reply in replies.items():
      out[key] = Future()
      out[key].set_result(reply)
    return out

  def _ask_old(self, request, max_retries=5, backoff_base_s=1.0, backoff_max_s=60.0):
    for attempt in range(max_retries + 1):
      self.stats.add("requests_sent")
      if attempt:
        self.stats.add("retries")
      try:
        response = self._sync_client.chat.completions.create(**request)
        return response.choices[0].message.content or ""
      except self._openai.APIStatusError as err:
        status = err.status_code
        if status == 429:
          self.stats.add("rate_limited")
        if not (status in (408, 409, 429) or status >= 500) or attempt == max_retries:
          self.stats.add("failures")
          return None
        wait = retry_after_seconds(err.response.headers)
        delay = (min(wait, backoff_max_s) if wait is not None else
                 min(backoff_max_s, backoff_base_s * 2 ** attempt) * random.uniform(0.5, 1))
        time.sleep(delay)
      except self._openai.APIConnectionError:
        if attempt == max_retries:
          self.stats.add("failures")
          return None
        time.sleep(min(backoff_max_s, backoff_base_s * 2 ** attempt) * random.uniform(0.5, 1))
    return None

  def close(self):
    self._sync_client.close()
    super().close()


def make_items(n):
  return [{"concept": f"concept {k}", "instruction": f"Write about topic number {k}.",
           "continuation": f"A continuation numbered {k} that goes on for a few words."}
          for k in range(n)]


def measure(cls, items, args) -> dict:
  with LoopbackOpenAI(rpm=args.rpm, tpm=args.tpm, latency_s=(0.2, 0.5), seed=1,
                      lifetime_s=3600) as server, tempfile.TemporaryDirectory() as cache:
    judge = cls(base_url=server.url, model="judge-test", api_key="sk-loopback",
                cache_dir=cache, max_tokens=500)
    started = time.monotonic()
    results = judge.submit(items).result(allow_missing=True)
    wall = time.monotonic() - started
    judge.close()
    wrong = sum(any(r[f"{k}_score"] != rating_for(render_prompt(k, it)) for k in KINDS)
                for it, r in zip(items, results))
    answered = len(server.arrivals)
    return dict(client=cls.__name__, items=len(items), requests=3 * len(items),
                wall_s=round(wall, 1), answered_per_minute=round(server.throughput_per_minute()),
                rpm_limit=args.rpm, rejected_429=server.rejected,
                rejected_fraction=round(server.rejected / (answered + server.rejected), 4),
                lost_requests=judge.stats.failures, wrong_items=wrong,
                paid_twice=sum(v > 1 for v in server.paid.values()),
                max_in_flight=server.max_in_flight)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--items", type=int, default=1000)
  parser.add_argument("--rpm", type=float, default=1200)
  parser.add_argument("--tpm", type=float, default=2_000_000)
  parser.add_argument("--clients", default="paced,threads")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  items = make_items(args.items)
  classes = {"paced": OpenAIJudge, "threads": ThreadPoolJudge}
  rows = []
  for name in args.clients.split(","):
    rows.append(dict(measure(classes[name], items, args), name=name))
    print(json.dumps(rows[-1]), flush=True)
  print("\n| client | wall | answered/min (limit) | 429s | lost requests | wrong items | "
        "paid twice |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['name']} | {r['wall_s']} s | {r['answered_per_minute']} ({r['rpm_limit']:.0f}) "
          f"| {r['rejected_429']} ({100 * r['rejected_fraction']:.1f}%) | {r['lost_requests']} "
          f"| {r['wrong_items']} / {r['items']} | {r['paid_twice']} |")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
