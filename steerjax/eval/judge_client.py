"""An asyncio chat-completions client paced by what the server says about its rate limits.

Requests go out under a cap on requests in flight and through two buckets, one of requests
and one of tokens, refilled at `headroom` times the limits the server states in its
`x-ratelimit-limit-{requests,tokens}` headers (per minute, as OpenAI sends them) and never
fuller than the server's `x-ratelimit-remaining-*` allows. A request costs one request and
its prompt's tokens plus `max_tokens`, which is what OpenAI charges against a token limit
when the request arrives; prompt tokens are guessed from characters, calibrated by the
`usage` of replies. Only `FIRST_REQUESTS` go out before the first reply states the limits;
a server that sends no such headers is paced by the cap alone. A 429 pauses every sender for
its `Retry-After` (else the bucket's reset time) and is retried for up to `rate_limit_wait_s`
of waiting; timeouts, connection errors, 408/409 and 5xx are retried `max_retries` times
with backoff; 401/403/404 fail every request at once.

The client runs its own event loop on a background thread: `submit(key, request)` from any
thread returns a `concurrent.futures.Future` of a `Reply` (None when the request failed after
its retries), and a key already in flight is not sent twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import math
import random
import re
import threading
import time
from concurrent.futures import Future
from typing import Callable, Dict, Mapping, Optional

FATAL_STATUS = (401, 403, 404)
# Requests sent before the first reply says what the limits are: few enough for any account.
FIRST_REQUESTS = 8


@dataclasses.dataclass(frozen=True)
class Reply:
  text: str
  prompt_tokens: int = 0
  completion_tokens: int = 0


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(text: Optional[str]) -> Optional[float]:
  """Seconds in OpenAI's reset format ('1s', '250ms', '6m0s', '1h2m3.5s'); None if unreadable."""
  if not text:
    return None
  text = str(text).strip()
  try:
    return max(0.0, float(text))
  except ValueError:
    pass
  parts = _DURATION.findall(text)
  if not parts or "".join(n + u for n, u in parts) != text:
    return None
  scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
  return sum(float(n) * scale[u] for n, u in parts)


def retry_after_seconds(headers: Optional[Mapping[str, str]]) -> Optional[float]:
  """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds or HTTP date)."""
  if not headers:
    return None
  headers = {str(k).lower(): v for k, v in headers.items()}
  millis = headers.get("retry-after-ms")
  if millis is not None:
    try:
      return max(0.0, float(millis) / 1000.0)
    except ValueError:
      pass
  value = headers.get("retry-after")
  if value is None:
    return None
  try:
    return max(0.0, float(value))
  except ValueError:
    pass
  try:
    when = email.utils.parsedate_to_datetime(value)
  except (TypeError, ValueError):
    return None
  return max(0.0, when.timestamp() - time.time())


class _Bucket:
  """`limit` per minute at `headroom`, holding at most `burst_s` seconds of it."""

  def __init__(self, limit: float, headroom: float, burst_s: float, now: float):
    self.limit = limit
    self.rate = limit * headroom / 60.0
    self.capacity = max(1.0, self.rate * burst_s)
    self.level = self.capacity     # `observe` lowers it to what the server has left
    self.t = now

  def refill(self, now: float):
    self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
    self.t = now

  def wait_for(self, cost: float) -> float:
    return max(0.0, (min(cost, self.capacity) - self.level) / self.rate)


class Pacer:
  """Request and token buckets sized from the server's rate-limit headers."""

  def __init__(self, headroom: float = 0.95, burst_s: float = 0.25):
    if not 0 < headroom <= 1 or burst_s <= 0:
      raise ValueError(f"need 0 < headroom <= 1 and burst_s > 0, got {headroom}, {burst_s}")
    self.headroom, self.burst_s = headroom, burst_s
    self.buckets: Dict[str, Optional[_Bucket]] = {"requests": None, "tokens": None}
    self.paused_until = 0.0
    self.sent = {"requests": 0.0, "tokens": 0.0}   # totals, to reconcile with `remaining`

  def limits(self) -> Dict[str, Optional[float]]:
    return {name: b.limit if b else None for name, b in self.buckets.items()}

  def delay(self, tokens: float, now: float) -> float:
    """Seconds until a request of `tokens` may go (0: now)."""
    wait = self.paused_until - now
    for name, cost in (("requests", 1.0), ("tokens", tokens)):
      bucket = self.buckets[name]
      if bucket is not None:
        bucket.refill(now)
        wait = max(wait, bucket.wait_for(cost))
    return max(0.0, wait)

  def take(self, tokens: float):
    for name, cost in (("requests", 1.0), ("tokens", tokens)):
      self.sent[name] += cost
      if self.buckets[name] is not None:
        self.buckets[name].level -= cost

  def mark(self) -> Dict[str, float]:
    return dict(self.sent)

  def observe(self, headers: Optional[Mapping[str, str]], mark: Mapping[str, float],
              sent_at: float, now: float):
    """Learn the limits from a reply's headers; `mark` is `mark()` taken before that request
    was sent, so what was sent after it (not yet counted by the server) is known."""
    if not headers:
      return
    headers = {str(k).lower(): v for k, v in headers.items()}
    for name in ("requests", "tokens"):
      try:
        limit = float(headers[f"x-ratelimit-limit-{name}"])
      except (KeyError, ValueError):
        continue
      if limit <= 0:
        continue
      bucket = self.buckets[name]
      if bucket is None or bucket.limit != limit:
        bucket = self.buckets[name] = _Bucket(limit, self.headroom, self.burst_s, now)
      try:
        remaining = float(headers[f"x-ratelimit-remaining-{name}"])
      except (KeyError, ValueError):
        continue
      bucket.refill(now)
      # The server counted up to this request; what went out after it is still to come.
      after = self.sent[name] - mark[name] - (1.0 if name == "requests" else 0.0)
      estimate = remaining + (now - sent_at) * bucket.rate - after
      bucket.level = min(bucket.level, estimate)

  def pause(self, seconds: float, now: float):
    self.paused_until = max(self.paused_until, now + seconds)
    for bucket in self.buckets.values():
      if bucket is not None:
        bucket.refill(now)
        bucket.level = min(bucket.level, 0.0)


class AsyncChat:
  """Chat completions on a background event loop, paced by `Pacer`; see the module docstring.

  `stats` is a counter object with `add(name, n)`; it receives requests_sent, retries,
  rate_limited, failures, prompt_tokens and completion_tokens.
  """

  def __init__(self, base_url: str, api_key: str, stats, max_in_flight: int = 512,
               max_retries: int = 5, timeout_s: float = 60.0, backoff_base_s: float = 1.0,
               backoff_max_s: float = 60.0, headroom: float = 0.95, burst_s: float = 0.25,
               rate_limit_wait_s: float = 900.0, log: Callable[[str], None] = lambda s: None):
    import openai
    if max_in_flight < 1 or max_retries < 0:
      raise ValueError(f"need max_in_flight >= 1 and max_retries >= 0, "
                       f"got {max_in_flight} and {max_retries}")
    self._openai = openai
    self.stats, self.log = stats, log
    self.max_in_flight, self.max_retries = max_in_flight, max_retries
    self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s
    self.rate_limit_wait_s = rate_limit_wait_s
    self.pacer = Pacer(headroom, burst_s)
    self._chars = self._prompt_tokens = 0
    self._fatal: Optional[BaseException] = None
    self._inflight: Dict[str, Future] = {}
    self._lock = threading.Lock()
    self._loop = asyncio.new_event_loop()
    self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                    name="judge-client")
    self._thread.start()

    async def setup():
      self._slots = asyncio.Semaphore(max_in_flight)
      self._pace_lock = asyncio.Lock()
      self._probe = asyncio.Event()
      self._probes_sent = 0
      # Retries are ours: the client's own would bypass the counters and the pacing.
      self._client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s,
                                        max_retries=0)
    asyncio.run_coroutine_threadsafe(setup(), self._loop).result()

  def submit(self, key: str, request: dict) -> Future:
    """Future of the `Reply` to `request` (None once its retries are spent); one per key."""
    with self._lock:
      future = self._inflight.get(key)
      if future is not None:
        return future
      future = asyncio.run_coroutine_threadsafe(self._ask(request), self._loop)
      self._inflight[key] = future
    future.add_done_callback(lambda _: self._forget(key))
    return future

  def _forget(self, key: str):
    with self._lock:
      self._inflight.pop(key, None)

  def in_flight(self) -> int:
    with self._lock:
      return len(self._inflight)

  def _cost(self, request: dict) -> float:
    chars = sum(len(str(m.get("content", ""))) for m in request.get("messages", ()))
    per_char = self._prompt_tokens / self._chars if self._prompt_tokens else 0.25
    return math.ceil(chars * per_char) + int(request.get("max_tokens") or 0)

  async def _pace(self, tokens: float):
    async with self._pace_lock:   # FIFO: one waiter at a time watches the buckets
      if not self._probe.is_set():
        if self._probes_sent < FIRST_REQUESTS:
          self._probes_sent += 1
          return
        await self._probe.wait()
      while True:
        wait = self.pacer.delay(tokens, time.monotonic())
        if wait <= 0:
          self.pacer.take(tokens)
          return
        await asyncio.sleep(wait)

  async def _ask(self, request: dict) -> Optional[Reply]:
    openai = self._openai
    attempt, waited, first = 0, 0.0, True
    cost = self._cost(request)
    while True:
      if self._fatal is not None:
        raise self._fatal
      delay = None
      async with self._slots:
        await self._pace(cost)
        if self._fatal is not None:
          raise self._fatal
        mark, sent_at = self.pacer.mark(), time.monotonic()
        self.stats.add("requests_sent")
        if not first:
          self.stats.add("retries")
        first = False
        try:
          raw = await self._client.chat.completions.with_raw_response.create(**request)
          self._observe(raw.headers, mark, sent_at)
          return self._reply(request, raw.parse())
        except openai.APIStatusError as err:
          self._observe(err.response.headers, mark, sent_at)
          status = err.status_code
          if status in FATAL_STATUS:
            self._fatal = err
            raise
          if status == 429:
            delay = self._rate_limit_wait(err.response.headers, attempt)
            self.pacer.pause(delay, time.monotonic())
            self.stats.add("rate_limited")
            waited += delay
            if waited > self.rate_limit_wait_s:
              return self._give_up(f"rate limited for {waited:.0f}s", attempt)
          elif status in (408, 409) or status >= 500:
            if attempt >= self.max_retries:
              return self._give_up(f"HTTP {status}", attempt)
            wait = retry_after_seconds(err.response.headers)
            delay = min(wait, self.backoff_max_s) if wait is not None else self._backoff(attempt)
            attempt += 1
          else:
            return self._give_up(f"HTTP {status}", attempt)
        except openai.APIConnectionError as err:   # timeouts included
          self._probe.set()
          if attempt >= self.max_retries:
            return self._give_up(type(err).__name__, attempt)
          delay = self._backoff(attempt)
          attempt += 1
      await asyncio.sleep(delay)

  def _observe(self, headers, mark, sent_at: float):
    self.pacer.observe(headers, mark, sent_at, time.monotonic())
    self._probe.set()

  def _rate_limit_wait(self, headers, attempt: int) -> float:
    wait = retry_after_seconds(headers)
    if wait is None and headers:
      resets = [parse_duration(headers.get(f"x-ratelimit-reset-{n}")) for n in
                ("requests", "tokens")]
      resets = [r for r in resets if r is not None]
      wait = max(resets) if resets else None
    return min(wait, self.backoff_max_s) if wait is not None else self._backoff(attempt)

  def _reply(self, request: dict, completion) -> Reply:
    choices = getattr(completion, "choices", None) or []
    message = getattr(choices[0], "message", None) if choices else None
    usage = getattr(completion, "usage", None)
    prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
    completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
    if prompt_tokens:
      self._chars += sum(len(str(m.get("content", ""))) for m in request["messages"])
      self._prompt_tokens += prompt_tokens
    self.stats.add("prompt_tokens", prompt_tokens)
    self.stats.add("completion_tokens", completion_tokens)
    return Reply(getattr(message, "content", None) or "", prompt_tokens, completion_tokens)

  def _give_up(self, why: str, attempt: int) -> None:
    self.log(f"judge request failed after {attempt + 1} attempt(s): {why}")
    self.stats.add("failures")
    return None

  def _backoff(self, attempt: int) -> float:
    return min(self.backoff_max_s, self.backoff_base_s * 2 ** attempt) * random.uniform(0.5, 1)

  def close(self):
    if not self._loop.is_running():
      return
    with self._lock:
      pending = list(self._inflight.values())
    for future in pending:
      future.cancel()

    async def shutdown():
      await self._client.close()
    try:
      asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
    finally:
      self._loop.call_soon_threadsafe(self._loop.stop)
      self._thread.join(timeout=10)
      self._loop.close()
