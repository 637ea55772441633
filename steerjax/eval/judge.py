"""LLM judges that rate steered continuations for concept, instruction and fluency.

Each continuation gets three separate 0/1/2 ratings, one prompt per criterion. The judge
explains briefly and ends with `Rating: [[k]]`; the last such line counts, and anything
unreadable or out of range counts as 0 (tallied in `stats.parse_failures`).

`OpenAIJudge` asks an OpenAI-compatible chat-completions server; `LocalJudge` asks any
`chat(prompts) -> replies` callable. Both keep replies in an append-only JSON-lines cache
keyed by a hash of the full request, so an interrupted evaluation resumes where it stopped.
Requests that fail after all retries rate 0 (tallied in `stats.failures`) and are not
cached, so a later run asks them again.
"""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import json
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Callable, Dict, List, Mapping, Optional, Protocol, Sequence

from steerjax import paths
from steerjax.eval.templates import (KINDS, MAX_RATING, PROMPTS, STEERJAX,  # noqa: F401
                                     Templates, parse_rating, render_prompt)
from steerjax.store import JsonlStore as ReplyCache

log = logging.getLogger(__name__)

CACHE_FILE = "judge_cache.jsonl"
# A wrong key, endpoint or model: every request would fail alike, so stop at once.
FATAL_STATUS = (401, 403, 404)
DEFAULT_CACHE_DIR = os.path.join(paths.DEFAULT_CACHE_ROOT, "judge")

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
  cache_hits: int = 0       # unique requests answered from the cache
  requests_sent: int = 0    # requests sent, every retry included
  retries: int = 0          # re-sends after a timeout, connection error, 408/409/429 or 5xx
  failures: int = 0         # requests that got no reply after all retries (rated 0)
  parse_failures: int = 0   # ratings read as 0 because the reply had no valid rating
  _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False,
                                            compare=False)

  def add(self, name: str, n: int = 1):
    with self._lock:
      setattr(self, name, getattr(self, name) + n)

  def as_dict(self) -> Dict[str, int]:
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
            if not f.name.startswith("_")}


class Judge(Protocol):
  """What every judge offers (OpenAIJudge, LocalJudge, OfflineJudge): `rate(items)` with
  items {"concept", "instruction", "continuation"} -> per item {"concept_score",
  "instruction_score", "fluency_score", "ok"}; `ask(prompts)` -> replies, for the texts a
  run has the judge write (neutral responses, steering and suppression prompts); `stats`;
  `name` (identifies it in caches); `close()`."""
  name: str
  stats: JudgeStats

  def rate(self, items: Sequence[Mapping[str, str]]) -> List[dict]: ...

  def ask(self, prompts: Sequence[str]) -> List[str]: ...

  def close(self): ...


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

  def _remember(self, key: str, reply: str):
    if self.cache is not None:
      self.cache.put(key, reply)

  def rate(self, items: Sequence[Mapping[str, str]]) -> List[dict]:
    """Rate each item; -> one dict per item, in order, with the three scores and `ok`.

    `ok` is False when any of the three ratings is a 0 from a failed request or an
    unreadable reply.
    """
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

    replies = self.replies(requests)
    return [self._scores(item_keys, replies) for item_keys in keys]

  def ask(self, prompts: Sequence[str]) -> List[str]:
    """Free-form replies of the judge's model (for writing texts), through its cache,
    retries and counters. Raises when a request failed (uncached, so a rerun asks again)."""
    requests = [self._request(p) for p in prompts]
    keys = [request_key(r) for r in requests]
    replies = self.replies(dict(zip(keys, requests)))
    if any(replies[k] is None for k in keys):
      raise RuntimeError("some requests to the judge model failed after all retries; rerun to "
                         "ask them again (replies that did arrive are cached)")
    return [replies[k].strip() for k in keys]

  def replies(self, requests: Mapping[str, dict]) -> Dict[str, Optional[str]]:
    """{key: reply} for {key: request}: cached replies first, the rest asked (None = failed)."""
    replies, pending = {}, {}
    for key, request in requests.items():
      cached = self.cache.get(key) if self.cache is not None else None
      if cached is not None:
        replies[key] = cached
        self.stats.add("cache_hits")
      else:
        pending[key] = request
    if pending:
      replies.update(self._fetch(pending))
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


def _import_openai():
  try:
    import openai
  except ImportError as err:
    raise ImportError("OpenAIJudge needs the `openai` package: "
                      "pip install 'steerjax[judge]'") from err
  return openai


class OpenAIJudge(_Judge):
  """Judge served by an OpenAI-compatible `/chat/completions` endpoint.

  At most `concurrency` requests are in flight. Timeouts, connection errors and HTTP
  408/409/429/5xx are retried up to `max_retries` times, waiting `Retry-After` when the
  server sends it, else an exponential backoff with jitter; waits are capped at
  `backoff_max_s`. HTTP 401/403/404 mean the endpoint, model or key is wrong and raise.
  The API key comes from `api_key` or the environment variable `api_key_env`; it is
  neither logged nor cached.
  """

  def __init__(self, base_url: str, model: str, api_key: Optional[str] = None,
               api_key_env: str = "OPENAI_API_KEY", temperature: float = 0.01,
               max_tokens: int = 500, concurrency: int = 8, max_retries: int = 5,
               timeout_s: float = 60.0, cache_dir: Optional[str] = DEFAULT_CACHE_DIR,
               backoff_base_s: float = 1.0, backoff_max_s: float = 60.0,
               templates: Templates = STEERJAX):
    openai = _import_openai()
    api_key = api_key or os.environ.get(api_key_env)
    if not api_key:
      raise ValueError(f"no API key: pass api_key or set ${api_key_env}")
    if concurrency < 1 or max_retries < 0:
      raise ValueError(f"need concurrency >= 1 and max_retries >= 0, "
                       f"got {concurrency} and {max_retries}")
    super().__init__(cache_dir, templates)
    self.base_url, self.model, self.name = base_url, model, model
    self.temperature, self.max_tokens = temperature, max_tokens
    self.concurrency, self.max_retries = concurrency, max_retries
    self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s
    self._openai = openai
    # Retries are ours: the client's own would bypass the counters and the backoff policy.
    self._client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s,
                                 max_retries=0)

  def __repr__(self):
    return f"OpenAIJudge(base_url={self.base_url!r}, model={self.model!r})"

  def _request(self, prompt: str) -> dict:
    return dict(model=self.model, messages=[{"role": "user", "content": prompt}],
                temperature=self.temperature, max_tokens=self.max_tokens)

  def _fetch(self, pending: Dict[str, dict]) -> Dict[str, Optional[str]]:
    replies = {}
    pool = ThreadPoolExecutor(max_workers=self.concurrency)
    try:
      futures = {pool.submit(self._ask, request): key for key, request in pending.items()}
      for future in as_completed(futures):
        key = futures[future]
        replies[key] = future.result()
        if replies[key] is not None:
          self._remember(key, replies[key])
    finally:
      pool.shutdown(wait=True, cancel_futures=True)
    return replies

  def _ask(self, request: dict) -> Optional[str]:
    """One request with retries; -> the reply text, or None once retries are spent."""
    for attempt in range(self.max_retries + 1):
      self.stats.add("requests_sent")
      if attempt:
        self.stats.add("retries")
      try:
        response = self._client.chat.completions.create(**request)
        return _reply_text(response)
      except self._openai.APIError as err:
        if getattr(err, "status_code", None) in FATAL_STATUS:
          raise
        delay = self._retry_delay(err, attempt)
        if delay is None or attempt == self.max_retries:
          log.warning("judge request failed after %d attempt(s): %s", attempt + 1,
                      _describe(err))
          self.stats.add("failures")
          return None
        log.info("judge request: %s; retrying in %.2fs", _describe(err), delay)
        time.sleep(delay)
    raise AssertionError("unreachable")

  def _retry_delay(self, err, attempt: int) -> Optional[float]:
    """Seconds before the next try, or None when `err` is not worth retrying."""
    if isinstance(err, self._openai.APIConnectionError):  # timeouts included
      return self._backoff(attempt)
    if not isinstance(err, self._openai.APIStatusError):
      return None
    status = err.status_code
    if status in (408, 409, 429) or status >= 500:
      wait = retry_after_seconds(err.response.headers)
      return min(wait, self.backoff_max_s) if wait is not None else self._backoff(attempt)
    return None

  def _backoff(self, attempt: int) -> float:
    return min(self.backoff_max_s, self.backoff_base_s * 2 ** attempt) * random.uniform(0.5, 1)

  def close(self):
    self._client.close()
    super().close()


def _reply_text(response) -> str:
  """The assistant text of a chat completion; '' when the reply has none."""
  choices = getattr(response, "choices", None) or []
  message = getattr(choices[0], "message", None) if choices else None
  return getattr(message, "content", None) or ""


def _describe(err) -> str:
  status = getattr(err, "status_code", None)
  return f"{type(err).__name__}" + (f" (HTTP {status})" if status else "")


class LocalJudge(_Judge):
  """Judge served by `chat(prompts) -> replies`, e.g. a local instruct model run greedily.

  Prompts are the same user messages `OpenAIJudge` sends. `name` identifies the model and
  its generation settings in the cache key: change it when either changes.
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
