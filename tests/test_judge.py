"""Judges against a loopback OpenAI-compatible server with scripted faults.

The server rates each request deterministically from a hash of its prompt, so every
rating in the output can be traced to the request that produced it. Markers inside a
continuation ask the server to misbehave for that item's requests (see `FakeChatServer`).
"""

import hashlib
import json
import os
import sys
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from steerjax.eval.judge import (CACHE_FILE, KINDS, PROMPTS, LocalJudge, MissingRatings,
                                 OpenAIJudge, ReplyCache, parse_rating, render_prompt, request_key,
                                 retry_after_seconds)

API_KEY = "sk-test-5f2c9a-never-stored"
SERVER_LIFETIME_S = 60


def prompt_hash(prompt: str) -> str:
  return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def rating_for(prompt: str) -> int:
  """The rating the fake server gives a prompt."""
  return int(prompt_hash(prompt), 16) % 3


class FakeChatServer:
  """State of a loopback `/v1/chat/completions` endpoint.

  `faults` maps a marker to (mode, times): requests whose prompt contains the marker get
  `mode` on their first `times` arrivals (every arrival when `times` is None). Modes:
  "timeout" (sleep `sleep_s`, then answer), "429" / "500" (error with Retry-After),
  "401", "malformed" (a reply with no rating).
  """

  def __init__(self):
    self.lock = threading.Lock()
    self.seen = Counter()                 # prompt hash -> arrivals
    self.arrivals = defaultdict(list)     # prompt hash -> arrival times
    self.auth_headers = set()
    self.faults = {}
    self.sleep_s = 1.0
    self.retry_after = "0.05"
    self.delay_s = 0.0
    self.inflight = 0
    self.max_inflight = 0
    self.url = None

  def arrive(self, prompt: str, auth: str) -> str:
    key = prompt_hash(prompt)
    with self.lock:
      self.seen[key] += 1
      self.arrivals[key].append(time.monotonic())
      self.auth_headers.add(auth)
      self.inflight += 1
      self.max_inflight = max(self.max_inflight, self.inflight)
      count = self.seen[key]
    for marker, (mode, times) in self.faults.items():
      if marker in prompt and (times is None or count <= times):
        return mode
    return "ok"

  def leave(self):
    with self.lock:
      self.inflight -= 1

  def count(self, prompt: str) -> int:
    return self.seen[prompt_hash(prompt)]


class Handler(BaseHTTPRequestHandler):
  def log_message(self, *args):
    pass

  def do_POST(self):
    fake = self.server.fake
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    if self.path != "/v1/chat/completions":
      return self.reply(404, {"error": {"message": "not found"}})
    prompt = body["messages"][-1]["content"]
    mode = fake.arrive(prompt, self.headers.get("Authorization", ""))
    try:
      time.sleep(fake.delay_s)
      if mode == "timeout":
        time.sleep(fake.sleep_s)
    finally:
      # Counted out before answering, so a client cannot start its next request first.
      fake.leave()
    if mode in ("429", "500"):
      return self.reply(int(mode), {"error": {"message": "try later"}},
                        {"Retry-After": fake.retry_after})
    if mode == "401":
      return self.reply(401, {"error": {"message": "bad key"}})
    if mode == "malformed":
      content = "I cannot decide on this one."
    else:
      rating = rating_for(prompt)
      # A decoy rating first: only the last `Rating:` may count.
      content = (f"At first glance, Rating: [[{(rating + 1) % 3}]]. On reflection the "
                 f"text earns another grade.\nRating: [[{rating}]]")
    self.reply(200, {
        "id": "chatcmpl-test", "object": "chat.completion", "created": 0,
        "model": body["model"],
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

  def reply(self, status, payload, headers=None):
    data = json.dumps(payload).encode()
    try:
      self.send_response(status)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(data)))
      for name, value in (headers or {}).items():
        self.send_header(name, value)
      self.end_headers()
      self.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
      pass  # the client gave up (timeout test)


class Server(ThreadingHTTPServer):
  # The default listen backlog of 5 drops simultaneous connects, which then wait out a TCP
  # retransmit (1 s) and look like timeouts.
  request_queue_size = 128


@pytest.fixture
def server():
  fake = FakeChatServer()
  httpd = Server(("127.0.0.1", 0), Handler)
  httpd.fake = fake
  fake.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
  thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                            daemon=True)
  thread.start()
  watchdog = threading.Timer(SERVER_LIFETIME_S, httpd.shutdown)
  watchdog.daemon = True
  watchdog.start()
  try:
    yield fake
  finally:
    watchdog.cancel()
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def make_judge(server, cache_dir, **overrides):
  options = dict(base_url=server.url, model="judge-test", api_key=API_KEY,
                 cache_dir=str(cache_dir) if cache_dir else None, concurrency=4,
                 max_retries=3, timeout_s=5.0, backoff_base_s=0.01, backoff_max_s=1.0)
  options.update(overrides)
  return OpenAIJudge(**options)


def make_items(n, marker="", start=0):
  return [{"concept": f"concept {k}", "instruction": f"instruction {k}",
           "continuation": f"continuation {k} {marker}".strip()} for k in range(start, start + n)]


def prompts_of(item):
  return [render_prompt(kind, item) for kind in KINDS]


def expected(item):
  return {f"{kind}_score": rating_for(render_prompt(kind, item)) for kind in KINDS}


def scores(result):
  return {f"{kind}_score": result[f"{kind}_score"] for kind in KINDS}


def counts(stats):
  return {k: v for k, v in stats.as_dict().items()
          if k in ("cache_hits", "requests_sent", "retries", "failures", "parse_failures")}


def cache_lines(cache_dir):
  with open(os.path.join(cache_dir, CACHE_FILE), encoding="utf-8") as f:
    return f.read().splitlines()


# ---- prompts and parsing ----

@pytest.mark.parametrize("text, want", [
    ("Clear.\nRating: [[2]]", (2, True)),
    ("Rating: [[1]] at first, but finally\nRating: [[0]]", (0, True)),
    ("rating: [[ 1 ]]", (1, True)),
    ("Rating: 2", (2, True)),
    ("Rating: [[2.0]]", (2, True)),
    ("Rating: [[3]]", (0, False)),
    ("Rating: [[-1]]", (0, False)),
    ("Rating: [[1.5]]", (1.5, True)),     # AxBench reads fractions: float(), 0 <= r <= 2
    ("Rating: 0.5", (0.5, True)),
    ("Rating: [[2.5]]", (0, False)),
    ("Rating: [[k]]", (0, False)),
    ("Rating: [[2]]\nRating: unsure", (0, False)),
    # markdown and punctuation both references read through
    ("Rating: **[[2]]**", (2, True)),
    ("**Rating:** [[1]]", (1, True)),
    ("**Rating**: [[2]]", (2, True)),
    ("Rating: [[2]].", (2, True)),
    ('Rating: "1"', (1, True)),
    ("The concept is clear. Rating: [[2]] (fully incorporated)", (2, True)),
    ("I would give it a two.", (0, False)),
    ("", (0, False)),
    (None, (0, False)),
])
def test_parse_rating(text, want):
  assert parse_rating(text) == want


def test_prompts_hold_their_criterion_and_format():
  item = {"concept": "volcanoes", "instruction": "Describe a bakery.",
          "continuation": "The bread {rose} like lava."}
  for kind in KINDS:
    prompt = render_prompt(kind, item)
    assert prompt.rstrip().endswith("Rating: [[k]]")
    assert "The bread {rose} like lava." in prompt
    for level in ("0 -", "1 -", "2 -"):
      assert level in prompt
  assert "volcanoes" in render_prompt("concept", item)
  assert "Describe a bakery." not in render_prompt("concept", item)
  assert "Describe a bakery." in render_prompt("instruction", item)
  assert "volcanoes" not in render_prompt("instruction", item)
  fluency = render_prompt("fluency", item)
  assert "volcanoes" not in fluency and "Describe a bakery." not in fluency
  assert set(PROMPTS) == set(KINDS)


def test_retry_after_seconds():
  assert retry_after_seconds({"Retry-After": "2"}) == 2.0
  assert retry_after_seconds({"retry-after": "0.25"}) == 0.25
  assert retry_after_seconds({"retry-after-ms": "150", "retry-after": "9"}) == 0.15
  future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
  assert 25 <= retry_after_seconds({"Retry-After": future}) <= 31
  assert retry_after_seconds({"Retry-After": "soon"}) is None
  assert retry_after_seconds({}) is None and retry_after_seconds(None) is None


def test_parse_duration_reads_openai_reset_headers():
  from steerjax.eval.judge_client import parse_duration
  assert parse_duration("1s") == 1.0 and parse_duration("250ms") == 0.25
  assert parse_duration("6m0s") == 360.0 and parse_duration("1h2m3.5s") == 3723.5
  assert parse_duration("0.5") == 0.5
  assert parse_duration("soon") is None and parse_duration("1s later") is None
  assert parse_duration(None) is None


def test_request_key_covers_the_whole_request():
  base = dict(model="m", messages=[{"role": "user", "content": "hi"}], temperature=0.01,
              max_tokens=500)
  variants = [dict(base, model="m2"), dict(base, temperature=0.0), dict(base, max_tokens=400),
              dict(base, messages=[{"role": "user", "content": "hi!"}])]
  keys = {request_key(base)} | {request_key(v) for v in variants}
  assert len(keys) == 5
  assert request_key(dict(reversed(list(base.items())))) == request_key(base)


# ---- the OpenAI judge ----

def test_normal_run(server, tmp_path):
  server.delay_s = 0.02
  items = make_items(12)
  with make_judge(server, tmp_path) as judge:
    results = judge.rate(items)
  assert [scores(r) for r in results] == [expected(it) for it in items]
  assert all(r["ok"] for r in results)
  assert counts(judge.stats) == dict(cache_hits=0, requests_sent=36, retries=0, failures=0,
                                     parse_failures=0)
  # the fake server's usage is 1 prompt and 1 completion token per reply
  assert judge.stats.prompt_tokens == judge.stats.completion_tokens == 36
  assert len(server.seen) == 36 and set(server.seen.values()) == {1}
  assert server.auth_headers == {f"Bearer {API_KEY}"}
  assert 2 <= server.max_inflight <= 4


def test_rerun_asks_nothing_new_and_never_stores_the_key(server, tmp_path):
  items = make_items(6)
  with make_judge(server, tmp_path) as judge:
    first = judge.rate(items)
  sent = sum(server.seen.values())
  # Another key and another client: the cache key must not depend on the API key.
  with make_judge(server, tmp_path, api_key="sk-other") as again:
    before = again.stats.as_dict()
    second = again.rate(items)
    assert again.stats.since(before)["cache_hits"] == 18
  assert second == first
  assert sum(server.seen.values()) == sent == 18
  assert counts(again.stats) == dict(cache_hits=18, requests_sent=0, retries=0, failures=0,
                                     parse_failures=0)
  assert again.stats.prompt_tokens == 0    # a cache hit is not paid for
  lines = cache_lines(tmp_path)
  assert len(lines) == 18
  assert all(API_KEY not in line and "sk-other" not in line for line in lines)
  assert API_KEY not in repr(judge)


def test_interrupted_run_resumes(server, tmp_path):
  items = make_items(10)
  with make_judge(server, tmp_path) as judge:
    judge.rate(items[:4])
  with make_judge(server, tmp_path) as judge:
    results = judge.rate(items)
  assert [scores(r) for r in results] == [expected(it) for it in items]
  assert judge.stats.cache_hits == 12 and judge.stats.requests_sent == 18
  assert len(server.seen) == 30 and set(server.seen.values()) == {1}


def test_duplicate_items_are_asked_once_and_each_rated(server, tmp_path):
  a, b = make_items(2)
  items = [a, b, dict(a), a]
  with make_judge(server, tmp_path) as judge:
    results = judge.rate(items)
  assert len(results) == 4
  assert [scores(r) for r in results] == [expected(a), expected(b), expected(a), expected(a)]
  assert judge.stats.requests_sent == 6 and set(server.seen.values()) == {1}


def test_timeouts_are_retried(server, tmp_path):
  server.faults = {"<slow>": ("timeout", 1)}
  server.sleep_s = 1.0
  slow, fast = make_items(2, "<slow>"), make_items(3, start=2)
  items = slow + fast
  started = time.monotonic()
  with make_judge(server, tmp_path, timeout_s=0.4, concurrency=8) as judge:
    results = judge.rate(items)
  assert time.monotonic() - started < 5
  assert [scores(r) for r in results] == [expected(it) for it in items]
  assert all(r["ok"] for r in results)
  assert judge.stats.retries == 6 and judge.stats.failures == 0
  assert [server.count(p) for it in slow for p in prompts_of(it)] == [2] * 6
  assert [server.count(p) for it in fast for p in prompts_of(it)] == [1] * 9


def test_429_and_500_wait_for_retry_after(server, tmp_path):
  server.faults = {"<busy>": ("429", 1), "<broken>": ("500", 2)}
  server.retry_after = "0.3"
  busy, broken = make_items(1, "<busy>"), make_items(1, "<broken>", start=1)
  items = busy + broken + make_items(2, start=2)
  # Backoff alone would wait ~1 ms, so gaps of 0.3 s can only come from Retry-After.
  with make_judge(server, tmp_path, backoff_base_s=0.001) as judge:
    results = judge.rate(items)
  assert [scores(r) for r in results] == [expected(it) for it in items]
  assert judge.stats.retries == 3 * 1 + 3 * 2 and judge.stats.failures == 0
  for item, tries in ((busy[0], 2), (broken[0], 3)):
    for prompt in prompts_of(item):
      times = server.arrivals[prompt_hash(prompt)]
      assert len(times) == tries
      assert all(later - earlier >= 0.29 for earlier, later in zip(times, times[1:]))


def test_exhausted_retries_raise_missing_uncached_and_rerun_asks_again(server, tmp_path):
  server.faults = {"<down>": ("500", None)}
  server.retry_after = "0.01"
  down, healthy = make_items(1, "<down>"), make_items(2, start=1)
  items = healthy[:1] + down + healthy[1:]
  with make_judge(server, tmp_path, max_retries=2) as judge:
    handle = judge.submit(items)
    with pytest.raises(MissingRatings, match="3 of 9 judge requests have no reply: 3 failed after all retries") as missing:
      handle.result()
    assert missing.value.missing == 3 and missing.value.pending == 0
    # The same replies, taken with zeros where the judge failed: nothing is asked again.
    results = handle.result(allow_missing=True)
  assert scores(results[1]) == dict(concept_score=0, instruction_score=0, fluency_score=0)
  assert results[1]["ok"] is False
  assert [scores(results[0]), scores(results[2])] == [expected(it) for it in healthy]
  assert judge.stats.failures == 3 and judge.stats.retries == 6
  assert judge.stats.requests_sent == 6 + 9
  assert [server.count(p) for p in prompts_of(down[0])] == [3, 3, 3]
  assert len(cache_lines(tmp_path)) == 6

  server.faults = {}
  with make_judge(server, tmp_path) as judge:
    rerun = judge.rate(items)
  assert [scores(r) for r in rerun] == [expected(it) for it in items]
  assert judge.stats.requests_sent == 3 and judge.stats.cache_hits == 6
  assert [server.count(p) for p in prompts_of(down[0])] == [4, 4, 4]


def test_rate_limits_are_waited_out_beyond_max_retries(server, tmp_path):
  # A 429 is the normal state of a big run: it costs waiting, not one of the retries.
  server.faults = {"<busy>": ("429", 6)}
  server.retry_after = "0.02"
  busy = make_items(1, "<busy>")
  with make_judge(server, tmp_path, max_retries=1) as judge:
    assert [scores(r) for r in judge.rate(busy)] == [expected(busy[0])]
  assert [server.count(p) for p in prompts_of(busy[0])] == [7, 7, 7]
  assert judge.stats.rate_limited == 18 and judge.stats.failures == 0

  # ... up to rate_limit_wait_s of waiting; then the ratings are missing, not made up.
  server.faults = {"<busy>": ("429", None)}
  stuck = make_items(1, "<busy>", start=1)
  with make_judge(server, tmp_path, rate_limit_wait_s=0.1) as judge:
    with pytest.raises(MissingRatings, match="3 of 3 judge requests have no reply"):
      judge.rate(stuck)
  assert judge.stats.failures == 3


def test_overlapping_submissions_pay_each_request_once(server, tmp_path):
  server.delay_s = 0.1
  items = make_items(5)
  with make_judge(server, tmp_path) as judge:
    first, second = judge.submit(items), judge.submit(items[2:] + make_items(2, start=5))
    assert [scores(r) for r in first.result()] == [expected(it) for it in items]
    assert [scores(r) for r in second.result()] == [
        expected(it) for it in items[2:] + make_items(2, start=5)]
  assert len(server.seen) == 21 and set(server.seen.values()) == {1}


def test_malformed_replies_rate_zero_and_are_counted(server, tmp_path):
  server.faults = {"<mumble>": ("malformed", None)}
  mumble, healthy = make_items(1, "<mumble>"), make_items(2, start=1)
  with make_judge(server, tmp_path) as judge:
    results = judge.rate(mumble + healthy)
  assert scores(results[0]) == dict(concept_score=0, instruction_score=0, fluency_score=0)
  assert results[0]["ok"] is False and all(r["ok"] for r in results[1:])
  assert [scores(r) for r in results[1:]] == [expected(it) for it in healthy]
  assert judge.stats.parse_failures == 3
  assert judge.stats.failures == 0 and judge.stats.retries == 0
  assert set(server.seen.values()) == {1}


def test_mixed_faults_lose_and_double_count_nothing(server, tmp_path):
  server.faults = {"<slow>": ("timeout", 1), "<busy>": ("429", 1), "<broken>": ("500", 2),
                   "<mumble>": ("malformed", None)}
  server.sleep_s, server.retry_after = 0.8, "0.02"
  tries = {"": 1, "<slow>": 2, "<busy>": 2, "<broken>": 3, "<mumble>": 1}
  groups = [(marker, make_items(3, marker, start=10 * n)) for n, marker in enumerate(tries)]
  items = [it for _, group in groups for it in group]
  items = [items[i] for i in (7, 0, 13, 4, 11, 2, 9, 14, 1, 6, 12, 3, 10, 5, 8)]
  items.append(dict(items[0]))   # a repeated generation is rated, but asked only once
  with make_judge(server, tmp_path, timeout_s=0.3, concurrency=6) as judge:
    results = judge.rate(items)

  assert len(results) == len(items)
  for item, result in zip(items, results):
    if "<mumble>" in item["continuation"]:
      assert scores(result) == dict(concept_score=0, instruction_score=0, fluency_score=0)
    else:
      assert scores(result) == expected(item) and result["ok"]
  for marker, group in groups:
    for item in group:
      assert [server.count(p) for p in prompts_of(item)] == [tries[marker]] * 3, marker
  assert len(server.seen) == 45
  stats = judge.stats
  assert stats.requests_sent == sum(server.seen.values())
  assert stats.retries == stats.requests_sent - 45
  assert stats.failures == 0 and stats.parse_failures == 9 and stats.cache_hits == 0
  assert len(cache_lines(tmp_path)) == 45


def test_wrong_key_raises(server, tmp_path):
  import openai
  server.faults = {"<denied>": ("401", None)}
  with make_judge(server, tmp_path) as judge:
    with pytest.raises(openai.AuthenticationError):
      judge.rate(make_items(1, "<denied>"))


def test_api_key_from_environment(server, tmp_path, monkeypatch):
  monkeypatch.setenv("STEERJAX_TEST_JUDGE_KEY", "sk-from-env")
  with make_judge(server, tmp_path, api_key=None, api_key_env="STEERJAX_TEST_JUDGE_KEY") as judge:
    judge.rate(make_items(1))
  assert server.auth_headers == {"Bearer sk-from-env"}
  monkeypatch.delenv("STEERJAX_TEST_JUDGE_KEY")
  with pytest.raises(ValueError, match="STEERJAX_TEST_JUDGE_KEY"):
    make_judge(server, tmp_path, api_key=None, api_key_env="STEERJAX_TEST_JUDGE_KEY")


def test_missing_openai_package_names_the_extra(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "openai", None)
  with pytest.raises(ImportError, match=r"steerjax\[judge\]"):
    OpenAIJudge(base_url="http://127.0.0.1:9/v1", model="m", api_key="k",
                cache_dir=str(tmp_path))


# ---- the cache ----

def test_cache_survives_a_line_cut_short(tmp_path):
  path = str(tmp_path / CACHE_FILE)
  cache = ReplyCache(path)
  cache.put("a", "Rating: [[1]]")
  cache.put("b", "Rating: [[2]]")
  cache.put("a", "ignored: first reply wins")
  cache.close()
  with open(path, "a", encoding="utf-8") as f:
    f.write('{"key": "c", "reply": "Rati')      # the process died mid-line
  cache = ReplyCache(path)
  assert len(cache) == 2 and cache.get("a") == "Rating: [[1]]" and cache.get("c") is None
  cache.put("d", "Rating: [[0]]")
  cache.close()
  cache = ReplyCache(path)
  assert len(cache) == 3 and cache.get("d") == "Rating: [[0]]"
  cache.close()


def test_no_cache_dir_keeps_nothing_on_disk(server, tmp_path):
  items = make_items(2)
  for _ in range(2):
    with make_judge(server, None) as judge:
      assert [scores(r) for r in judge.rate(items)] == [expected(it) for it in items]
  assert set(server.seen.values()) == {2}


# ---- the local judge ----

class FakeChat:
  def __init__(self):
    self.batches = []

  def __call__(self, prompts):
    self.batches.append(list(prompts))
    return [f"Looks right.\nRating: [[{rating_for(p)}]]" for p in prompts]


def test_local_judge_rates_batches_and_caches(tmp_path):
  items = make_items(7)
  chat = FakeChat()
  with LocalJudge(chat, name="tiny-instruct", batch_size=4, cache_dir=str(tmp_path)) as judge:
    results = judge.rate(items)
  assert [scores(r) for r in results] == [expected(it) for it in items]
  assert [len(b) for b in chat.batches] == [4, 4, 4, 4, 4, 1]
  asked = sorted(p for batch in chat.batches for p in batch)
  assert asked == sorted(p for it in items for p in prompts_of(it))
  assert judge.stats.requests_sent == 21

  rerun_chat = FakeChat()
  with LocalJudge(rerun_chat, name="tiny-instruct", cache_dir=str(tmp_path)) as judge:
    assert judge.rate(items) == results
  assert rerun_chat.batches == [] and judge.stats.cache_hits == 21

  other_chat = FakeChat()
  with LocalJudge(other_chat, name="other-model", cache_dir=str(tmp_path)) as judge:
    judge.rate(items[:1])
  assert len(other_chat.batches) == 1    # another model never reuses these replies


def test_local_judge_parse_failures_and_bad_chat(tmp_path):
  with LocalJudge(lambda ps: ["no idea"] * len(ps), cache_dir=None) as judge:
    (result,) = judge.rate(make_items(1))
  assert result == dict(concept_score=0, instruction_score=0, fluency_score=0, ok=False)
  assert judge.stats.parse_failures == 3
  with LocalJudge(lambda ps: ps[:-1], cache_dir=None) as judge:
    with pytest.raises(ValueError, match="replies"):
      judge.rate(make_items(1))


def test_items_must_have_string_fields(tmp_path):
  with LocalJudge(FakeChat(), cache_dir=None) as judge:
    with pytest.raises(ValueError, match="continuation"):
      judge.rate([{"concept": "c", "instruction": "i"}])


# ---- template sources ----

AXBENCH_LAYOUT = '''
UNIDIRECTIONAL_PAIRWISE_EVALUATION_CONCEPT_RELEVANCE_TEMPLATE = """[System]
Concept test. Rate 0 to 2. "Rating: [[score]]".

[Concept Start]
{concept}
[Concept End]

[Sentence Fragment Start]
{sentence}
[Sentence Fragment End]
"""

UNIDIRECTIONAL_PAIRWISE_EVALUATION_INSTRUCTION_RELEVANCE_TEMPLATE = """[System]
Instruction test.
[Instruction Start]
{instruction}
[Instruction End]
[Sentence Fragment Start]
{sentence}
[Sentence Fragment End]
"""

UNIDIRECTIONAL_PAIRWISE_EVALUATION_FLUENCY_TEMPLATE = """Fluency test.
[Sentence Fragment Start]
{sentence}
[Sentence Fragment End]
"""
'''


def test_a_template_file_drives_the_judge_and_its_cache_key(tmp_path):
  from steerjax.eval import templates
  path = tmp_path / "my_templates.py"
  path.write_text(AXBENCH_LAYOUT)
  mine = templates.load(str(path))
  item = {"concept": "volcanoes", "instruction": "Describe a bakery.",
          "continuation": "Lava bread rises."}
  assert mine.render("concept", item).startswith("[System]\nConcept test.")
  assert "volcanoes" in mine.render("concept", item)
  assert "Lava bread rises." in mine.render("fluency", item)
  asked = []

  def chat(prompts):
    asked.extend(prompts)
    return ["Fine.\nRating: [[2]]"] * len(prompts)
  with LocalJudge(chat, name="tiny", cache_dir=str(tmp_path / "cache"), templates=mine) as judge:
    assert scores(judge.rate([item])[0]) == dict.fromkeys(
        ("concept_score", "instruction_score", "fluency_score"), 2)
  assert asked[2].startswith("Fluency test.") and len(asked) == 3
  # The same item under other templates is another cache entry; under the same, a hit.
  with LocalJudge(chat, name="tiny", cache_dir=str(tmp_path / "cache")) as judge:
    judge.rate([item])
    assert judge.stats.cache_hits == 0
  with LocalJudge(chat, name="tiny", cache_dir=str(tmp_path / "cache"), templates=mine) as judge:
    judge.rate([item])
    assert judge.stats.cache_hits == 3
  request = {"model": "m", "messages": [], "temperature": 0, "max_tokens": 1}
  assert request_key(request, mine.digest) != request_key(request, templates.STEERJAX.digest)


def test_pinned_templates_download_once_or_read_a_local_clone(tmp_path, monkeypatch):
  from steerjax import pinned
  from steerjax.eval import templates
  pin = templates.PINNED["axbench"]
  served = []

  class Response:
    def __init__(self, url):
      served.append(url)

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      return False

    def read(self):
      return AXBENCH_LAYOUT.encode()
  monkeypatch.setattr(pinned.urllib.request, "urlopen", lambda url, timeout: Response(url))
  first = templates.load("axbench", str(tmp_path / "cache"))
  again = templates.load("axbench", str(tmp_path / "cache"))
  assert served == [f"https://raw.githubusercontent.com/{pin.repo}/{pin.commit}/{pin.path}"]
  assert first == again and first.name == f"axbench@{pin.commit[:12]}"

  clone = tmp_path / "prosv"
  (clone / "src" / "reft").mkdir(parents=True)
  (clone / "src" / "reft" / "llm_judge.py").write_text(
      AXBENCH_LAYOUT.replace("UNIDIRECTIONAL_PAIRWISE_EVALUATION_CONCEPT_RELEVANCE_", "CONCEPT_")
      .replace("UNIDIRECTIONAL_PAIRWISE_EVALUATION_INSTRUCTION_RELEVANCE_", "RELEVANCE_")
      .replace("UNIDIRECTIONAL_PAIRWISE_EVALUATION_FLUENCY_", "FLUENCY_"))
  assert templates.load("prosv", local_clone=str(clone)).prompts == first.prompts
  (tmp_path / "bad.py").write_text('CONCEPT = "{concept}"\n')
  with pytest.raises(ValueError, match="defines no"):
    templates.load(str(tmp_path / "bad.py"))
  (tmp_path / "bad.json").write_text(json.dumps(
      {"concept": "{concept} {sentence}", "instruction": "{instruction}", "fluency": "{text}"}))
  with pytest.raises(ValueError, match="the fluency template has a placeholder other than"):
    templates.load(str(tmp_path / "bad.json"))
