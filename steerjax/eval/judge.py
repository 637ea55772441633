"""LLM judges that rate steered continuations for concept, instruction and fluency.

Each continuation gets three separate 0/1/2 ratings, one prompt per criterion. The judge
explains briefly and ends with `Rating: [[k]]`; the last such line counts, and anything
unreadable or out of range counts as 0 (tallied in `stats.parse_failures`).

`OpenAIJudge` asks an OpenAI-compatible chat-completions server, online (an asyncio client
paced by the server's rate-limit headers, `judge_client`) or through the Batch API
(`judge_batch`); `LocalJudge` asks any `chat(prompts) -> replies` callable. Both keep replies
in an append-only JSON-lines cache keyed by a hash of the full request, so an interrupted
evaluation resumes where it stopped and no request is paid for twice.

`submit(items)` starts rating in the background and returns a `RatingHandle`; `rate(items)`
waits for it. A rating whose request failed after all retries is never made up: `rate`
raises `MissingRatings` saying how many are missing (the replies that did arrive are
cached, so a rerun asks only for those), unless the caller passes `allow_missing=True`
and takes zeros with `ok=False`. `rate_behind` rates batches of items while the caller makes
the next one. Usage and cost: see `JudgeStats` and `steerjax.eval.judge_cost`.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import (Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Protocol,
                    Sequence, Tuple)

from steerjax import paths
from steerjax.eval.judge_client import (FATAL_STATUS, AsyncChat, Reply,  # noqa: F401
                                        retry_after_seconds)
from steerjax.eval.templates import (KINDS, MAX_RATING, PROMPTS, STEERJAX,  # noqa: F401
                                     Templates, parse_rating, render_prompt)
from steerjax.store import JsonlStore as ReplyCache

log = logging.getLogger(__name__)

CACHE_FILE = "judge_cache.jsonl"
DEFAULT_CACHE_DIR = os.path.join(paths.DEFAULT_CACHE_ROOT, "judge")
MODES = ("online", "batch")


def request_key(request: Mapping, template: str = "") -> str:
  """sha256 of the request (model, messages, temperature, max_tokens) and, for ratings, the
  digest of the templates in use, as canonical JSON."""
  fields = {k: request[k] for k in ("model", "messages", "temperature", "max_tokens")}
  if template:
    fields["template"] = template
  canonical = json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
  return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclasses.dataclass
class JudgeStats:
  cache_hits: int = 0        # unique requests answered from the cache
  requests_sent: int = 0     # online requests sent, every retry included
  retries: int = 0           # re-sends after a 429, timeout, connection error, 408/409 or 5xx
  rate_limited: int = 0      # online requests answered 429
  failures: int = 0          # requests that got no reply after all retries: failed ratings
  parse_failures: int = 0    # ratings read as 0 because the reply had no valid rating
  prompt_tokens: int = 0     # `usage` of online replies (cache hits cost nothing)
  completion_tokens: int = 0
  batch_requests: int = 0    # lines submitted in batches
  batch_failed_lines: int = 0  # batch lines that failed or expired (retried)
  batch_prompt_tokens: int = 0  # `usage` of batch replies
  batch_completion_tokens: int = 0
  _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False,
                                            compare=False)

  def add(self, name: str, n: int = 1):
    with self._lock:
      setattr(self, name, getattr(self, name) + n)

  def as_dict(self) -> Dict[str, int]:
    with self._lock:
      return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
              if not f.name.startswith("_")}

  def since(self, before: Mapping[str, int]) -> Dict[str, int]:
    """The counts added after `before` (an earlier `as_dict()`): one job's share."""
    return {k: v - before.get(k, 0) for k, v in self.as_dict().items()}


class MissingRatings(RuntimeError):
  """Some requests got no reply; the result would be built on made-up ratings."""

  def __init__(self, missing: int, total: int, pending: int = 0):
    self.missing, self.total, self.pending = missing, total, pending
    failed, parts = missing - pending, []
    if failed:
      parts.append(f"{failed} failed after all retries (the replies that arrived are cached; "
                   f"rerun to ask only the missing ones)")
    if pending:
      parts.append(f"{pending} are still pending in running batches or in flight (rerun "
                   f"later to collect them; nothing is submitted twice)")
    why = f"{missing} of {total} judge requests have no reply: " + "; ".join(parts)
    super().__init__(why)


class Judge(Protocol):
  """What every judge offers (OpenAIJudge, LocalJudge, OfflineJudge): `rate(items)` with
  items {"concept", "instruction", "continuation"} -> per item {"concept_score",
  "instruction_score", "fluency_score", "ok"}; `ask(prompts)` -> replies, for the texts a
  run has the judge write (neutral responses, steering and suppression prompts); `stats`;
  `name` (identifies it in caches); `close()`. The LLM judges add `submit(items) ->
  RatingHandle`; `rate_behind` and the module-level `submit` take any judge."""
  name: str
  stats: JudgeStats

  def rate(self, items: Sequence[Mapping[str, str]]) -> List[dict]: ...

  def ask(self, prompts: Sequence[str]) -> List[str]: ...

  def close(self): ...


def _done(value) -> Future:
  future = Future()
  future.set_result(value)
  return future


class RatingHandle:
  """Ratings under way for a list of items; `result()` waits for them."""

  def __init__(self, judge: "_Judge", keys: List[List[str]], futures: Dict[str, Future]):
    self.judge, self.keys, self.futures = judge, keys, futures

  def done(self) -> bool:
    return all(f.done() for f in self.futures.values())

  def result(self, timeout: Optional[float] = None, allow_missing: bool = False) -> List[dict]:
    """One dict per item, in order: the three scores and `ok`. Raises `MissingRatings` when
    a request failed (or, after `timeout` seconds, is still pending) unless
    `allow_missing`, which rates those 0 with `ok=False`."""
    replies = self.judge._collect(self.futures, timeout)
    missing = [k for k, r in replies.items() if r is None]
    if missing and not allow_missing:
      pending = sum(not self.futures[k].done() for k in missing)
      raise MissingRatings(len(missing), len(replies), pending)
    return [self.judge._scores(item_keys, replies) for item_keys in self.keys]


class _Judge:
  """Prompting, caching, de-duplication and parsing shared by the LLM judges."""

  def __init__(self, cache_dir: Optional[str], templates: Templates = STEERJAX):
    self.stats = JudgeStats()
    self.templates = templates
    self.cache = ReplyCache(os.path.join(cache_dir, CACHE_FILE)) if cache_dir else None

  def _request(self, prompt: str) -> dict:
    raise NotImplementedError

  def _fetch(self, pending: Dict[str, dict]) -> Dict[str, Optional[str]]:
    """-> {key: reply or None when it failed} for requests not found in the cache."""
    raise NotImplementedError

  def _start(self, pending: Dict[str, dict]) -> Dict[str, Future]:
    """Futures of the replies to requests not in the cache (text, None when failed)."""
    return {key: _done(reply) for key, reply in self._fetch(pending).items()}

  def flush(self):
    """Send whatever waits to be sent (batch mode); nothing otherwise."""

  def _remember(self, key: str, reply: str):
    if self.cache is not None:
      self.cache.put(key, reply)

  def submit(self, items: Sequence[Mapping[str, str]]) -> RatingHandle:
    """Start rating `items`; -> a handle whose `result()` gives what `rate` gives."""
    keys, requests = [], {}
    for item in items:
      _check_item(item)
      item_keys = []
      for kind in KINDS:
        request = self._request(self.templates.render(kind, item))
        key = request_key(request, self.templates.digest)
        requests.setdefault(key, request)
        item_keys.append(key)
      keys.append(item_keys)
    return RatingHandle(self, keys, self._futures(requests))

  def rate(self, items: Sequence[Mapping[str, str]], allow_missing: bool = False) -> List[dict]:
    """Rate each item; -> one dict per item, in order, with the three scores and `ok`.

    `ok` is False when a reply had no readable rating (or, with `allow_missing`, when a
    request failed). Raises `MissingRatings` when a request failed after all retries.
    """
    return self.submit(items).result(allow_missing=allow_missing)

  def ask(self, prompts: Sequence[str]) -> List[str]:
    """Free-form replies of the judge's model (for writing texts), through its cache,
    retries and counters. Raises `MissingRatings` when a request failed (uncached, so a
    rerun asks again)."""
    requests = [self._request(p) for p in prompts]
    keys = [request_key(r) for r in requests]
    replies = self.replies(dict(zip(keys, requests)))
    missing = sum(replies[k] is None for k in set(keys))
    if missing:
      raise MissingRatings(missing, len(set(keys)))
    return [replies[k].strip() for k in keys]

  def replies(self, requests: Mapping[str, dict]) -> Dict[str, Optional[str]]:
    """{key: reply} for {key: request}: cached replies first, the rest asked (None = failed)."""
    return self._collect(self._futures(requests), None)

  def _futures(self, requests: Mapping[str, dict]) -> Dict[str, Future]:
    futures, pending = {}, {}
    for key, request in requests.items():
      cached = self.cache.get(key) if self.cache is not None else None
      if cached is not None:
        futures[key] = _done(cached)
        self.stats.add("cache_hits")
      else:
        pending[key] = request
    if pending:
      futures.update(self._start(pending))
    return futures

  def _collect(self, futures: Mapping[str, Future],
               timeout: Optional[float]) -> Dict[str, Optional[str]]:
    if not all(f.done() for f in futures.values()):
      self.flush()
    deadline = None if timeout is None else time.monotonic() + timeout
    replies = {}
    for key, future in futures.items():
      left = None if deadline is None else max(0.0, deadline - time.monotonic())
      try:
        replies[key] = future.result(timeout=left)
      except FutureTimeout:
        replies[key] = None
    return replies

  def _scores(self, item_keys: Sequence[str], replies: Mapping[str, Optional[str]]) -> dict:
    out, ok = {}, True
    for kind, key in zip(KINDS, item_keys):
      reply = replies[key]
      if reply is None:
        rating, ok = 0, False
      else:
        rating, parsed = parse_rating(reply)
        if not parsed:
          self.stats.add("parse_failures")
          ok = False
      out[f"{kind}_score"] = rating
    out["ok"] = ok
    return out

  def close(self):
    if self.cache is not None:
      self.cache.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _check_item(item: Mapping):
  for field in ("concept", "instruction", "continuation"):
    if not isinstance(item.get(field), str):
      raise ValueError(f"judge item needs a string {field!r}, got {item.get(field)!r}")


def submit(judge, items: Sequence[Mapping[str, str]]):
  """`judge.submit(items)`, or for a judge without one (OfflineJudge), a finished handle."""
  if hasattr(judge, "submit"):
    return judge.submit(items)
  ratings = judge.rate(items)

  class Finished:
    def done(self):
      return True

    def result(self, timeout=None, allow_missing=False):
      return ratings
  return Finished()


def rate_behind(judge, batches: Iterable[Tuple[Any, Sequence[Mapping[str, str]]]],
                depth: Optional[int] = 1,
                allow_missing: bool = False) -> Iterator[Tuple[Any, List[dict]]]:
  """Rate each `(tag, items)` of `batches` in the background while the next one is made.

  `batches` is lazy (a generator that trains or generates per step); the judge rates batch
  k while the generator makes batch k+1. Yields `(tag, ratings)` in order, at most `depth`
  batches waiting on the judge (`None`: no bound, so a batch-mode judge submits everything
  in one go once the generator is done). A failed rating raises `MissingRatings` at its
  batch; the batches before it were yielded.
  """
  if depth is not None and depth < 0:
    raise ValueError(f"depth={depth} must be >= 0 or None")
  waiting = collections.deque()
  for tag, items in batches:
    waiting.append((tag, submit(judge, items)))
    while depth is not None and len(waiting) > depth:
      tag, handle = waiting.popleft()
      yield tag, handle.result(allow_missing=allow_missing)
  if hasattr(judge, "flush"):
    judge.flush()
  while waiting:
    tag, handle = waiting.popleft()
    yield tag, handle.result(allow_missing=allow_missing)


def _import_openai():
  try:
    import openai
  except ImportError as err:
    raise ImportError("OpenAIJudge needs the `openai` package: "
                      "pip install 'steerjax[judge]'") from err
  return openai


class OpenAIJudge(_Judge):
  """Judge served by an OpenAI-compatible `/chat/completions` endpoint.

  mode="online": at most `concurrency` requests in flight, paced by the server's rate-limit
  headers at `headroom` of its limits (`judge_client.AsyncChat`, which also holds the retry
  rules: 429 waits `Retry-After` for up to `rate_limit_wait_s`; timeouts, connection errors,
  408/409 and 5xx are retried `max_retries` times; 401/403/404 raise). `submit` blocks while
  `max_pending` requests are unanswered.

  mode="batch": requests go to the Batch API when a result is awaited or `flush()` is
  called (`judge_batch.BatchQueue`: files of at most `batch_max_lines` / `batch_max_bytes`,
  state in the cache dir so a killed run resumes, failed lines retried for
  `batch_max_rounds` batches, then online when `batch_fallback="online"`). `batch_wait_s`
  bounds how long a result waits for running batches (None or negative: until they end; 0:
  submit and raise `MissingRatings` naming what is pending, to collect in a later run).

  The API key comes from `api_key` or the environment variable `api_key_env`; it is
  neither logged nor cached.
  """

  def __init__(self, base_url: str, model: str, api_key: Optional[str] = None,
               api_key_env: str = "OPENAI_API_KEY", temperature: float = 0.01,
               max_tokens: int = 500, concurrency: int = 512, max_retries: int = 5,
               timeout_s: float = 60.0, cache_dir: Optional[str] = DEFAULT_CACHE_DIR,
               backoff_base_s: float = 1.0, backoff_max_s: float = 60.0,
               templates: Templates = STEERJAX, mode: str = "online",
               max_pending: int = 50_000, headroom: float = 0.95, burst_s: float = 0.25,
               rate_limit_wait_s: float = 900.0, batch_max_lines: int = 50_000,
               batch_max_bytes: int = 200 * 2 ** 20, batch_poll_s: float = 30.0,
               batch_max_rounds: int = 3, batch_fallback: str = "online",
               batch_wait_s: Optional[float] = None, batch_max_poll_errors: int = 20,
               log: Optional[Callable[[str], None]] = None):
    openai = _import_openai()
    api_key = api_key or os.environ.get(api_key_env)
    if not api_key:
      raise ValueError(f"no API key: pass api_key or set ${api_key_env}")
    if mode not in MODES:
      raise ValueError(f"judge mode={mode!r}: use one of {MODES}")
    if batch_fallback not in ("online", "none"):
      raise ValueError(f"judge batch_fallback={batch_fallback!r}: use 'online' or 'none'")
    if max_pending < 1:
      raise ValueError(f"judge max_pending={max_pending} must be >= 1")
    if mode == "batch" and not cache_dir:
      raise ValueError("judge mode='batch' needs a cache_dir to keep its batches in")
    super().__init__(cache_dir, templates)
    self.base_url, self.model, self.name = base_url, model, model
    self.temperature, self.max_tokens = temperature, max_tokens
    # a negative wait (a config's stand-in for None) waits until the batches end
    self.mode = mode
    self.batch_wait_s = None if batch_wait_s is not None and batch_wait_s < 0 else batch_wait_s
    self.log = log or log_info
    self._client = AsyncChat(base_url, api_key, self.stats, max_in_flight=concurrency,
                             max_retries=max_retries, timeout_s=timeout_s,
                             backoff_base_s=backoff_base_s, backoff_max_s=backoff_max_s,
                             headroom=headroom, burst_s=burst_s,
                             rate_limit_wait_s=rate_limit_wait_s, log=self.log)
    self._room = threading.BoundedSemaphore(max_pending)
    self._lock = threading.Lock()
    self._waiting: Dict[str, Future] = {}
    self._batches = None
    if mode == "batch":
      from steerjax.eval.judge_batch import BatchQueue
      sync = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s,
                           max_retries=max_retries)
      self._sync = sync
      self._batches = BatchQueue(
          sync, cache_dir, self.stats, self._remember_reply,
          online=self._client.submit if batch_fallback == "online" else None,
          max_lines=batch_max_lines, max_bytes=batch_max_bytes, max_rounds=batch_max_rounds,
          poll_s=batch_poll_s, max_poll_errors=batch_max_poll_errors, log=self.log)

  def __repr__(self):
    return f"OpenAIJudge(base_url={self.base_url!r}, model={self.model!r}, mode={self.mode!r})"

  def _request(self, prompt: str) -> dict:
    return dict(model=self.model, messages=[{"role": "user", "content": prompt}],
                temperature=self.temperature, max_tokens=self.max_tokens)

  def _remember_reply(self, key: str, reply: Reply):
    self._remember(key, reply.text)

  def _start(self, pending: Dict[str, dict]) -> Dict[str, Future]:
    futures = {}
    for key, request in pending.items():
      with self._lock:
        future = self._waiting.get(key)
      if future is None:
        future = self._send(key, request)
      futures[key] = future
    return futures

  def _send(self, key: str, request: dict) -> Future:
    if self._batches is None:
      self._room.acquire()   # the bound on unanswered requests: the caller waits here
    text = Future()
    with self._lock:
      self._waiting[key] = text

    def settle(source: Future):
      with self._lock:
        self._waiting.pop(key, None)
      if self._batches is None:
        self._room.release()
      if source.cancelled():
        text.cancel()
        return
      err = source.exception()
      if err is not None:
        text.set_exception(err)
        return
      reply = source.result()
      if reply is not None:
        self._remember(key, reply.text)
      text.set_result(None if reply is None else reply.text)

    source = (self._batches.add(key, request) if self._batches is not None
              else self._client.submit(key, request))
    source.add_done_callback(settle)
    return text

  def flush(self):
    if self._batches is not None:
      self._batches.flush()

  def _collect(self, futures, timeout):
    if self._batches is not None and timeout is None:
      timeout = self.batch_wait_s
    return super()._collect(futures, timeout)

  def close(self):
    if self._batches is not None:
      self._batches.close()
      self._sync.close()
    self._client.close()
    super().close()


def log_info(message: str):
  log.info(message)


class LocalJudge(_Judge):
  """Judge served by `chat(prompts) -> replies`, e.g. a local instruct model run greedily.

  Prompts are the same user messages `OpenAIJudge` sends. `name` identifies the model and
  its generation settings in the cache key: change it when either changes. `submit` rates
  at once (the model is the machine's own work, nothing to overlap with).
  """

  def __init__(self, chat: Callable[[List[str]], List[str]], name: str = "local",
               batch_size: int = 32, cache_dir: Optional[str] = DEFAULT_CACHE_DIR,
               templates: Templates = STEERJAX):
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size} must be >= 1")
    super().__init__(cache_dir, templates)
    self.chat, self.name, self.batch_size = chat, name, batch_size

  def __repr__(self):
    return f"LocalJudge(name={self.name!r})"

  def _request(self, prompt: str) -> dict:
    return dict(model=self.name, messages=[{"role": "user", "content": prompt}],
                temperature=0.0, max_tokens=None)

  def _fetch(self, pending: Dict[str, dict]) -> Dict[str, Optional[str]]:
    replies = {}
    keys = list(pending)
    for start in range(0, len(keys), self.batch_size):
      batch = keys[start:start + self.batch_size]
      prompts = [pending[k]["messages"][-1]["content"] for k in batch]
      self.stats.add("requests_sent", len(prompts))
      answers = list(self.chat(prompts))
      if len(answers) != len(prompts):
        raise ValueError(f"chat returned {len(answers)} replies for {len(prompts)} prompts")
      for key, answer in zip(batch, answers):
        replies[key] = answer if isinstance(answer, str) else ""
        self._remember(key, replies[key])
    return replies
