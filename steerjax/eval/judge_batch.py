"""The judge's requests through OpenAI's Batch API (`/v1/files` + `/v1/batches`).

Requests wait in a buffer until `flush()`, then go out as JSON-lines files of at most
`max_lines` lines and `max_bytes` bytes, one line `{"custom_id": <cache key>, "method":
"POST", "url": "/v1/chat/completions", "body": <request>}` each, and one batch per file with
a 24 h window. A poller thread follows the open batches (progress and ETA through `log`),
downloads each finished batch's output and error files and hands every reply to
`on_reply(key, Reply)` (the judge's cache). Lines that failed or expired go into the next
batch, up to `max_rounds` batches per request, then to `online` (a `submit(key, request)`
of the online client) when given, else they count as failures.

Every upload and every created batch is written to an append-only state file before the
run goes on, so a killed run resumes where it stopped: open batches are polled again, an
uploaded file with no recorded batch gets the batch the server already has for it (found by
its input file) or a new one, and nothing is uploaded or paid for twice. Merged batches are
recorded last, after their replies are in the cache. Polling survives passing errors; after
`max_poll_errors` in a row, or a 401/403/404, every waiting request gets the error (a rerun
resumes the batches).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
import time
from concurrent.futures import Future
from typing import Callable, Dict, List, Optional

from steerjax.eval.judge_client import FATAL_STATUS, Reply

STATE_FILE = "judge_batches.jsonl"
MAX_LINES = 50_000
MAX_BYTES = 200 * 2 ** 20
TERMINAL = ("completed", "failed", "expired", "cancelled")


@dataclasses.dataclass
class _Waiter:
  future: Future
  request: dict
  rounds: int = 0


class StateLog:
  """Append-only JSON-lines event log; a line cut short by a kill is skipped on load."""

  def __init__(self, path: str):
    self.path = path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self.events: List[dict] = []
    if os.path.exists(path):
      with open(path, "rb") as f:
        for line in f:
          try:
            self.events.append(json.loads(line))
          except ValueError:
            pass
    self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    if os.path.getsize(path):
      with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b"\n":
          os.write(self._fd, b"\n")

  def append(self, event: dict):
    os.write(self._fd, (json.dumps(event) + "\n").encode("utf-8"))
    os.fsync(self._fd)
    self.events.append(event)

  def close(self):
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None


def split_lines(lines: List[bytes], max_lines: int, max_bytes: int) -> List[List[bytes]]:
  """Consecutive groups of `lines` within both limits (each line ends with a newline)."""
  groups, current, size = [], [], 0
  for line in lines:
    if len(line) > max_bytes:
      raise ValueError(f"one batch line is {len(line)} bytes, over the {max_bytes}-byte file "
                       f"limit; raise judge.batch_max_bytes or shorten the request")
    if current and (len(current) >= max_lines or size + len(line) > max_bytes):
      groups.append(current)
      current, size = [], 0
    current.append(line)
    size += len(line)
  if current:
    groups.append(current)
  return groups


def reply_of(body: dict) -> Reply:
  choices = body.get("choices") or []
  message = (choices[0] or {}).get("message") or {} if choices else {}
  usage = body.get("usage") or {}
  return Reply(message.get("content") or "", int(usage.get("prompt_tokens") or 0),
               int(usage.get("completion_tokens") or 0))


class BatchQueue:
  """See the module docstring. `client` is a synchronous `openai.OpenAI`."""

  def __init__(self, client, state_dir: str, stats, on_reply: Callable[[str, Reply], None],
               online: Optional[Callable[[str, dict], Future]] = None,
               max_lines: int = MAX_LINES, max_bytes: int = MAX_BYTES, max_rounds: int = 3,
               poll_s: float = 30.0, max_poll_errors: int = 20,
               log: Callable[[str], None] = lambda s: None):
    if not 1 <= max_lines <= MAX_LINES or not 1 <= max_bytes <= MAX_BYTES:
      raise ValueError(f"batch file limits {max_lines} lines / {max_bytes} bytes: need 1.."
                       f"{MAX_LINES} lines and 1..{MAX_BYTES} bytes")
    if max_rounds < 1 or poll_s <= 0:
      raise ValueError(f"need batch max_rounds >= 1 and poll_s > 0, got {max_rounds}, {poll_s}")
    self.client, self.stats, self.on_reply, self.online = client, stats, on_reply, online
    self.max_lines, self.max_bytes, self.max_rounds = max_lines, max_bytes, max_rounds
    self.poll_s, self.max_poll_errors, self.log = poll_s, max_poll_errors, log
    self.state = StateLog(os.path.join(state_dir, STATE_FILE))
    self._lock = threading.RLock()
    self._waiters: Dict[str, _Waiter] = {}
    self._buffer: Dict[str, dict] = {}
    self._open: Dict[str, List[str]] = {}      # batch id -> its keys
    self._open_keys: Dict[str, str] = {}       # key -> open batch id
    self._seen_progress: Dict[str, tuple] = {}
    self._stop = threading.Event()
    self._poller: Optional[threading.Thread] = None
    self._resumed = False

  # ---- state

  def _resume(self):
    """Rebuild the open batches from the state file; give a recorded upload its batch."""
    if self._resumed:
      return
    self._resumed = True
    files, batch_of, merged = {}, {}, set()
    for event in self.state.events:
      if event.get("event") == "file":
        files[event["file_id"]] = event["keys"]
      elif event.get("event") == "batch":
        batch_of[event["file_id"]] = event["batch_id"]
      elif event.get("event") == "merged":
        merged.add(event["batch_id"])
    for file_id, keys in files.items():
      batch_id = batch_of.get(file_id)
      if batch_id is None:
        batch_id = self._existing_batch(file_id) or self._create(file_id)
      if batch_id not in merged:
        self._track(batch_id, keys)
    if self._open:
      self.log(f"judge batches: resuming {len(self._open)} open batch(es) of "
               f"{len(self._open_keys)} request(s)")
      self._start_poller()

  def _existing_batch(self, file_id: str) -> Optional[str]:
    for batch in self.client.batches.list(limit=100):
      if batch.input_file_id == file_id:
        self.state.append(dict(event="batch", file_id=file_id, batch_id=batch.id))
        return batch.id
    return None

  def _create(self, file_id: str) -> str:
    batch = self.client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                       completion_window="24h")
    self.state.append(dict(event="batch", file_id=file_id, batch_id=batch.id))
    return batch.id

  def _track(self, batch_id: str, keys: List[str]):
    self._open[batch_id] = list(keys)
    for key in keys:
      self._open_keys[key] = batch_id

  # ---- requests

  def add(self, key: str, request: dict) -> Future:
    """Future of the `Reply` to `request` (None once it failed everywhere); sent at `flush`."""
    with self._lock:
      self._resume()
      waiter = self._waiters.get(key)
      if waiter is not None:
        return waiter.future
      waiter = self._waiters[key] = _Waiter(Future(), request)
      if key not in self._open_keys:
        self._buffer[key] = request
      return waiter.future

  def pending(self) -> int:
    with self._lock:
      return len(self._buffer) + len(self._open_keys)

  def open_batches(self) -> List[str]:
    with self._lock:
      return list(self._open)

  def flush(self):
    """Upload the buffered requests as batches and poll them."""
    with self._lock:
      self._resume()
      if not self._buffer:
        return
      buffer, self._buffer = self._buffer, {}
      lines = [json.dumps(dict(custom_id=key, method="POST", url="/v1/chat/completions",
                               body=request), ensure_ascii=False).encode("utf-8") + b"\n"
               for key, request in buffer.items()]
      keys = list(buffer)
      offset = 0
      for group in split_lines(lines, self.max_lines, self.max_bytes):
        group_keys = keys[offset:offset + len(group)]
        offset += len(group)
        content = b"".join(group)
        name = f"steerjax-judge-{hashlib.sha256(content).hexdigest()[:16]}.jsonl"
        uploaded = self.client.files.create(file=(name, content), purpose="batch")
        self.state.append(dict(event="file", file_id=uploaded.id, keys=group_keys))
        batch_id = self._create(uploaded.id)
        self._track(batch_id, group_keys)
        self.stats.add("batch_requests", len(group_keys))
        self.log(f"judge batches: submitted {batch_id} ({len(group_keys)} request(s), "
                 f"{len(content)} bytes)")
      self._start_poller()

  # ---- polling

  def _start_poller(self):
    if self._poller is None:   # under the lock; the poller clears it under the lock on exit
      self._poller = threading.Thread(target=self._poll_loop, daemon=True,
                                      name="judge-batches")
      self._poller.start()

  def _poll_loop(self):
    errors = 0
    while not self._stop.is_set():
      with self._lock:
        open_ids = list(self._open)
        if not open_ids:
          self._poller = None
          return
      try:
        for batch_id in open_ids:
          if self._stop.is_set():
            return
          batch = self.client.batches.retrieve(batch_id)
          if batch.status in TERMINAL:
            self._merge(batch)
          else:
            self._progress(batch)
        with self._lock:
          if self._buffer:
            self.flush()   # failed lines of merged batches, retried in the next batch
        errors = 0
      except Exception as err:  # noqa: BLE001 -- the poller must not die with waiters left
        errors += 1
        status = getattr(err, "status_code", None)
        self.log(f"judge batches: polling failed ({type(err).__name__}"
                 f"{f' HTTP {status}' if status else ''}), attempt {errors}")
        if status in FATAL_STATUS or errors > self.max_poll_errors:
          self._fail_all(err)
          return
      self._stop.wait(self.poll_s)

  def _progress(self, batch):
    counts = batch.request_counts
    total = getattr(counts, "total", 0) or 0
    done = (getattr(counts, "completed", 0) or 0) + (getattr(counts, "failed", 0) or 0)
    if self._seen_progress.get(batch.id) == (batch.status, done):
      return
    self._seen_progress[batch.id] = (batch.status, done)
    started = batch.in_progress_at or batch.created_at
    elapsed = max(1.0, time.time() - started) if started else None
    eta = ""
    if done and total > done and elapsed:
      eta = f", ETA {_duration((total - done) * elapsed / done)}"
    self.log(f"judge batches: {batch.id} {batch.status}, {done}/{total} done{eta}")

  def _download(self, file_id: Optional[str]) -> List[dict]:
    if not file_id:
      return []
    content = self.client.files.content(file_id).content
    out = []
    for line in content.splitlines():
      try:
        out.append(json.loads(line))
      except ValueError:
        pass
    return out

  def _merge(self, batch):
    keys = self._open.get(batch.id, [])
    answered, failed = set(), 0
    for line in self._download(batch.output_file_id):
      key, response = line.get("custom_id"), line.get("response") or {}
      if key in answered:
        continue
      if response.get("status_code") == 200 and isinstance(response.get("body"), dict):
        reply = reply_of(response["body"])
        self.stats.add("batch_prompt_tokens", reply.prompt_tokens)
        self.stats.add("batch_completion_tokens", reply.completion_tokens)
        self.on_reply(key, reply)
        answered.add(key)
        self._resolve(key, reply)
    self.log(f"judge batches: {batch.id} {batch.status}: {len(answered)}/{len(keys)} replies")
    with self._lock:
      for key in keys:
        self._open_keys.pop(key, None)
        if key not in answered:
          failed += 1
          self._retry(key)
      self._open.pop(batch.id, None)
      self.state.append(dict(event="merged", batch_id=batch.id, status=batch.status))
    self.stats.add("batch_failed_lines", failed)

  def _fail_all(self, err: BaseException):
    """Hand `err` to everyone waiting and stop; the state file keeps the open batches."""
    with self._lock:
      waiters, self._waiters = self._waiters, {}
      self._poller = None
    for waiter in waiters.values():
      if not waiter.future.done():
        waiter.future.set_exception(err)

  def _resolve(self, key: str, reply: Optional[Reply]):
    with self._lock:
      waiter = self._waiters.pop(key, None)
    if waiter is not None and not waiter.future.done():
      waiter.future.set_result(reply)

  def _retry(self, key: str):
    waiter = self._waiters.get(key)
    if waiter is None:
      return   # nobody in this run asks for it; a later run asks again
    waiter.rounds += 1
    if waiter.rounds < self.max_rounds:
      self._buffer[key] = waiter.request
      return
    if self.online is not None:
      self._waiters.pop(key)
      _chain(self.online(key, waiter.request), waiter.future)
      return
    self.stats.add("failures")
    self._waiters.pop(key)
    waiter.future.set_result(None)

  def close(self):
    self._stop.set()
    if self._poller is not None:
      self._poller.join(timeout=30)
    with self._lock:
      for waiter in self._waiters.values():
        waiter.future.cancel()
      self._waiters.clear()
    self.state.close()


def _chain(source: Future, target: Future):
  def copy(done: Future):
    if target.done():
      return
    if done.cancelled():
      target.cancel()
    elif done.exception() is not None:
      target.set_exception(done.exception())
    else:
      target.set_result(done.result())
  source.add_done_callback(copy)


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  if seconds < 120:
    return f"{seconds}s"
  if seconds < 7200:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
