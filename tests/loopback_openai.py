"""A loopback OpenAI-compatible server for the judge's tests and benchmarks (127.0.0.1 only).

`/v1/chat/completions` rates each prompt deterministically from its hash, after a latency
drawn from `latency_s`, under request- and token-per-minute limits enforced the way OpenAI
describes them: buckets refilled continuously, sized `burst_s` seconds of the limit
("60,000 RPM may be enforced as 1,000 RPS"), a request charged its prompt tokens plus its
`max_tokens` on arrival, every reply carrying `x-ratelimit-{limit,remaining,reset}-
{requests,tokens}`, and HTTP 429 with `Retry-After` / `retry-after-ms` past a limit.

`/v1/files` and `/v1/batches` run chat-completion batches: each batch finishes after its
entry in `batch_delays` (creation order; so later batches may finish first), lines whose
prompt holds `batch_fail_marker` fail on their first batch, batches whose index is in
`expire_batches` expire with half their lines done, and uploads over `max_file_lines` /
`max_file_bytes` are refused. While `hold` is clear no batch finishes; the next
`failing_polls` polls of a batch are answered 500.

Every successful answer is counted in `paid` (by prompt hash), so a test can check that each
request was paid for exactly once.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import threading
import time
from collections import Counter
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional


def prompt_hash(prompt: str) -> str:
  return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def rating_for(prompt: str) -> int:
  """The rating the server gives a prompt."""
  return int(prompt_hash(prompt), 16) % 3


API_KEY = "sk-loopback"


def expected(item) -> dict:
  """The three ratings this server gives `item` under steerjax's templates."""
  from steerjax.eval.templates import KINDS, render_prompt
  return {f"{kind}_score": rating_for(render_prompt(kind, item)) for kind in KINDS}


def scores(result) -> dict:
  """The three ratings of a judge's result."""
  from steerjax.eval.templates import KINDS
  return {f"{kind}_score": result[f"{kind}_score"] for kind in KINDS}


def reply_for(prompt: str) -> str:
  rating = rating_for(prompt)
  # A decoy rating first: only the last `Rating:` may count.
  return (f"At first glance, Rating: [[{(rating + 1) % 3}]]. On reflection the text earns "
          f"another grade.\nRating: [[{rating}]]")


def count_tokens(text: str) -> int:
  """The server's token count: 4 tokens per 3 words (not the client's guess on purpose)."""
  return max(1, math.ceil(len(text.split()) * 4 / 3))


def format_reset(seconds: float) -> str:
  """OpenAI's reset duration format: '1s', '250ms', '6m0s'."""
  if seconds < 1:
    return f"{max(1, int(seconds * 1000))}ms"
  if seconds < 60:
    return f"{seconds:.3g}s"
  return f"{int(seconds // 60)}m{seconds % 60:.0f}s"


class Bucket:
  """`limit` per minute, refilled continuously, holding at most `burst_s` seconds of it."""

  def __init__(self, limit: float, burst_s: float):
    self.limit = limit
    self.rate = limit / 60.0
    self.capacity = max(1.0, self.rate * burst_s)
    self.level = self.capacity
    self.t = time.monotonic()

  def refill(self, now: float):
    self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
    self.t = now

  def wait_for(self, cost: float) -> float:
    return max(0.0, (min(cost, self.capacity) - self.level) / self.rate)

  def reset_s(self) -> float:
    return (self.capacity - self.level) / self.rate


class LoopbackOpenAI:
  """The server's state; `with LoopbackOpenAI(...) as server:` serves on a free port."""

  def __init__(self, rpm: Optional[float] = None, tpm: Optional[float] = None,
               burst_s: float = 1.0, latency_s=(0.0, 0.0), seed: int = 0,
               batch_delays=(0.2,), expire_batches=(), batch_fail_marker: str = "<batchfail>",
               max_file_lines: int = 50_000, max_file_bytes: int = 200 * 2 ** 20,
               lifetime_s: float = 900.0):
    self.rpm, self.tpm, self.burst_s = rpm, tpm, burst_s
    self.latency_s = latency_s
    self.rng = random.Random(seed)
    self.lock = threading.Lock()
    self.requests = Bucket(rpm, burst_s) if rpm else None
    self.tokens = Bucket(tpm, burst_s) if tpm else None
    self.arrivals: List[float] = []         # times of requests answered 200
    self.charges: List[int] = []            # tokens each of them was charged
    self.rejected = 0                       # requests answered 429
    self.paid = Counter()                   # prompt hash -> successful answers
    self.auth_headers = set()
    self.max_in_flight = self.in_flight = 0
    self.tokens_charged = 0
    # batch API
    self.batch_delays, self.expire_batches = list(batch_delays), set(expire_batches)
    self.batch_fail_marker = batch_fail_marker
    self.max_file_lines, self.max_file_bytes = max_file_lines, max_file_bytes
    self.files: Dict[str, dict] = {}
    self.batches: Dict[str, dict] = {}
    self.uploads = 0
    self.batches_created = 0
    self.failed_once = set()                # prompt hashes already failed in a batch
    self.failing_polls = 0                  # next polls of a batch answered 500
    self.hold = threading.Event()
    self.hold.set()
    self.lifetime_s = lifetime_s
    self.url = None

  # ---- serving

  def __enter__(self):
    self.httpd = _Server(("127.0.0.1", 0), _Handler)
    self.httpd.state = self
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
    self.thread = threading.Thread(target=self.httpd.serve_forever,
                                   kwargs={"poll_interval": 0.05}, daemon=True)
    self.thread.start()
    self.watchdog = threading.Timer(self.lifetime_s, self.httpd.shutdown)
    self.watchdog.daemon = True
    self.watchdog.start()
    return self

  def __exit__(self, *exc):
    self.hold.set()
    self.watchdog.cancel()
    self.httpd.shutdown()
    self.httpd.server_close()
    self.thread.join(timeout=5)

  # ---- rate limits

  def admit(self, charge: int):
    """-> (allowed, headers): take one request and `charge` tokens, or say how long to wait."""
    with self.lock:
      now = time.monotonic()
      waits = []
      for bucket, cost in ((self.requests, 1), (self.tokens, charge)):
        if bucket is not None:
          bucket.refill(now)
          waits.append(bucket.wait_for(cost))
      allowed = not any(w > 0 for w in waits)
      if allowed:
        if self.requests is not None:
          self.requests.level -= 1
        if self.tokens is not None:
          self.tokens.level -= charge
          self.tokens_charged += charge
      else:
        self.rejected += 1
      headers = {}
      for name, bucket in (("requests", self.requests), ("tokens", self.tokens)):
        if bucket is not None:
          headers[f"x-ratelimit-limit-{name}"] = str(int(bucket.limit))
          headers[f"x-ratelimit-remaining-{name}"] = str(max(0, int(bucket.level)))
          headers[f"x-ratelimit-reset-{name}"] = format_reset(bucket.reset_s())
      if not allowed:
        wait = max(waits)
        headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
      return allowed, headers

  def completion(self, body: dict, paid: bool = True) -> dict:
    prompt = body["messages"][-1]["content"]
    content = reply_for(prompt)
    if paid:
      with self.lock:
        self.paid[prompt_hash(prompt)] += 1
    return {"id": "chatcmpl-loopback", "object": "chat.completion", "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": count_tokens(prompt),
                      "completion_tokens": count_tokens(content),
                      "total_tokens": count_tokens(prompt) + count_tokens(content)}}

  def chat(self, body: dict, auth: str):
    prompt = body["messages"][-1]["content"]
    charge = count_tokens(prompt) + int(body.get("max_tokens") or 0)
    allowed, headers = self.admit(charge)
    with self.lock:
      self.auth_headers.add(auth)
    if not allowed:
      time.sleep(0.002)
      return 429, {"error": {"message": "Rate limit reached", "type": "requests",
                             "code": "rate_limit_exceeded"}}, headers
    with self.lock:
      self.in_flight += 1
      self.max_in_flight = max(self.max_in_flight, self.in_flight)
      self.arrivals.append(time.monotonic())
      self.charges.append(charge)
      delay = self.rng.uniform(*self.latency_s)
    try:
      time.sleep(delay)
      return 200, self.completion(body), headers
    finally:
      with self.lock:
        self.in_flight -= 1

  def throughput_per_minute(self) -> float:
    """Answered requests per minute between the first and the last arrival."""
    if len(self.arrivals) < 2:
      return 0.0
    return (len(self.arrivals) - 1) / (self.arrivals[-1] - self.arrivals[0]) * 60.0

  def tokens_per_minute(self) -> float:
    """Tokens charged per minute between the first and the last answered arrival."""
    if len(self.arrivals) < 2:
      return 0.0
    return sum(self.charges[1:]) / (self.arrivals[-1] - self.arrivals[0]) * 60.0

  # ---- files and batches

  def upload(self, content: bytes, filename: str, purpose: str):
    lines = content.splitlines()
    if len(lines) > self.max_file_lines or len(content) > self.max_file_bytes:
      return 400, {"error": {"message": f"file has {len(lines)} lines / {len(content)} bytes; "
                                        f"the limits are {self.max_file_lines} / "
                                        f"{self.max_file_bytes}"}}
    with self.lock:
      self.uploads += 1
      file_id = f"file-{len(self.files):04d}"
      self.files[file_id] = dict(id=file_id, object="file", bytes=len(content),
                                 created_at=int(time.time()), filename=filename,
                                 purpose=purpose, status="processed", content=content)
    return 200, self._file_object(file_id)

  def _file_object(self, file_id: str) -> dict:
    return {k: v for k, v in self.files[file_id].items() if k != "content"}

  def _store(self, lines: List[dict], purpose: str) -> Optional[str]:
    if not lines:
      return None
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    file_id = f"file-{len(self.files):04d}"
    self.files[file_id] = dict(id=file_id, object="file", bytes=len(content),
                               created_at=int(time.time()), filename=f"{purpose}.jsonl",
                               purpose=purpose, status="processed", content=content)
    return file_id

  def create_batch(self, body: dict):
    file_id = body.get("input_file_id")
    if file_id not in self.files or body.get("completion_window") != "24h":
      return 400, {"error": {"message": "bad input_file_id or completion_window"}}
    with self.lock:
      index = self.batches_created
      self.batches_created += 1
      batch_id = f"batch_{index:04d}"
      lines = [json.loads(x) for x in self.files[file_id]["content"].splitlines() if x.strip()]
      now = time.time()
      self.batches[batch_id] = dict(
          id=batch_id, object="batch", endpoint=body["endpoint"], input_file_id=file_id,
          completion_window="24h", status="in_progress", created_at=int(now),
          in_progress_at=int(now), expires_at=int(now) + 86400, output_file_id=None,
          error_file_id=None, request_counts=dict(total=len(lines), completed=0, failed=0),
          metadata=body.get("metadata"), _lines=lines, _start=time.monotonic(),
          _delay=self.batch_delays[index % len(self.batch_delays)],
          _expire=index in self.expire_batches)
    return 200, self._batch_object(batch_id)

  def _batch_object(self, batch_id: str) -> dict:
    self._advance(batch_id)
    return {k: v for k, v in self.batches[batch_id].items() if not k.startswith("_")}

  def _advance(self, batch_id: str):
    with self.lock:
      b = self.batches[batch_id]
      if b["status"] != "in_progress":
        return
      total = b["request_counts"]["total"]
      fraction = min(1.0, (time.monotonic() - b["_start"]) / max(b["_delay"], 1e-6))
      if fraction < 1.0 or not self.hold.is_set():
        b["request_counts"]["completed"] = int(total * min(fraction, 0.99) * (
            0.5 if b["_expire"] else 1.0))
        return
      outputs, errors = [], []
      for n, line in enumerate(b["_lines"]):
        prompt = line["body"]["messages"][-1]["content"]
        key = prompt_hash(prompt)
        if b["_expire"] and n % 2:
          errors.append(dict(id=f"batch_req_{n}", custom_id=line["custom_id"], response=None,
                             error=dict(code="batch_expired",
                                        message="This request could not be executed before "
                                                "the completion window expired.")))
        elif self.batch_fail_marker in prompt and key not in self.failed_once:
          self.failed_once.add(key)
          if n % 2:   # a failed line may come in the output file with an error status ...
            outputs.append(dict(id=f"batch_req_{n}", custom_id=line["custom_id"],
                                response=dict(status_code=500, request_id=f"req_{n}",
                                              body={"error": {"message": "server error"}}),
                                error=None))
          else:       # ... or in the error file
            errors.append(dict(id=f"batch_req_{n}", custom_id=line["custom_id"],
                               response=None, error=dict(code="server_error",
                                                         message="server error")))
        else:
          self.paid[key] += 1
          outputs.append(dict(id=f"batch_req_{n}", custom_id=line["custom_id"],
                              response=dict(status_code=200, request_id=f"req_{n}",
                                            body=self.completion(line["body"], paid=False)),
                              error=None))
      b["output_file_id"] = self._store(outputs, "batch_output")
      b["error_file_id"] = self._store(errors, "batch_output")
      failed = total - sum(1 for o in outputs if o["response"]["status_code"] == 200)
      b["request_counts"].update(completed=total - failed, failed=failed)
      now = int(time.time())
      if b["_expire"]:
        b.update(status="expired", expired_at=now)
      else:
        b.update(status="completed", finalizing_at=now, completed_at=now)


class _Server(ThreadingHTTPServer):
  # The default listen backlog of 5 drops simultaneous connects, which then wait out a TCP
  # retransmit (1 s).
  request_queue_size = 1024
  daemon_threads = True


class _Handler(BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"

  def log_message(self, *args):
    pass

  def _body(self) -> bytes:
    return self.rfile.read(int(self.headers.get("Content-Length") or 0))

  def do_POST(self):
    state: LoopbackOpenAI = self.server.state
    raw = self._body()
    if self.path == "/v1/chat/completions":
      return self._send(*state.chat(json.loads(raw), self.headers.get("Authorization", "")))
    if self.path == "/v1/files":
      message = BytesParser(policy=HTTP).parsebytes(
          b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + raw)
      fields, filename = {}, "upload.jsonl"
      for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        fields[name] = part.get_payload(decode=True)
        if name == "file":
          filename = part.get_filename() or filename
      return self._send(*state.upload(fields.get("file", b""), filename,
                                      fields.get("purpose", b"").decode()))
    if self.path == "/v1/batches":
      return self._send(*state.create_batch(json.loads(raw)))
    self._send(404, {"error": {"message": f"no route {self.path}"}})

  def do_GET(self):
    state: LoopbackOpenAI = self.server.state
    path = self.path.split("?")[0]
    match = re.fullmatch(r"/v1/files/([\w-]+)/content", path)
    if match and match.group(1) in state.files:
      return self._send(200, state.files[match.group(1)]["content"], raw=True)
    match = re.fullmatch(r"/v1/files/([\w-]+)", path)
    if match and match.group(1) in state.files:
      return self._send(200, state._file_object(match.group(1)))
    match = re.fullmatch(r"/v1/batches/([\w-]+)", path)
    if match and match.group(1) in state.batches and state.failing_polls > 0:
      with state.lock:
        state.failing_polls -= 1
      return self._send(500, {"error": {"message": "try later"}})
    if match and match.group(1) in state.batches:
      return self._send(200, state._batch_object(match.group(1)))
    if path == "/v1/batches":
      data = [state._batch_object(b) for b in sorted(state.batches, reverse=True)]
      return self._send(200, {"object": "list", "data": data, "has_more": False,
                              "first_id": data[0]["id"] if data else None,
                              "last_id": data[-1]["id"] if data else None})
    self._send(404, {"error": {"message": f"no route {self.path}"}})

  def _send(self, status: int, payload, headers: Optional[dict] = None, raw: bool = False):
    data = payload if raw else json.dumps(payload).encode()
    try:
      self.send_response(status)
      self.send_header("Content-Type",
                       "application/octet-stream" if raw else "application/json")
      self.send_header("Content-Length", str(len(data)))
      for name, value in (headers or {}).items():
        self.send_header(name, value)
      self.end_headers()
      self.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
      pass
