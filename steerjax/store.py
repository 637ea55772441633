"""Append-only JSON-lines stores: the judge's reply cache and the text store of neutral
responses and steering prompts. Any layer may use them."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from typing import Dict, Optional

log = logging.getLogger(__name__)


class JsonlStore:
  """Append-only JSON-lines file of {"key", "reply"}; one write per line.

  A line cut short by a killed process is skipped on load, and the next append starts on a
  fresh line, so the file stays readable after any interruption.
  """

  def __init__(self, path: str):
    self.path = path
    self._replies: Dict[str, str] = {}
    self._lock = threading.Lock()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self._load()
    self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    if os.path.getsize(path) and not self._ends_with_newline():
      os.write(self._fd, b"\n")

  def _ends_with_newline(self) -> bool:
    with open(self.path, "rb") as f:
      f.seek(-1, os.SEEK_END)
      return f.read(1) == b"\n"

  def _load(self):
    if not os.path.exists(self.path):
      return
    skipped = 0
    with open(self.path, "rb") as f:
      for line in f:
        try:
          entry = json.loads(line)
          self._replies[entry["key"]] = entry["reply"]
        except (ValueError, KeyError, TypeError):
          skipped += line.strip() != b""
    if skipped:
      log.warning("store %s: skipped %d unreadable line(s)", self.path, skipped)

  def get(self, key: str) -> Optional[str]:
    with self._lock:
      return self._replies.get(key)

  def put(self, key: str, reply: str):
    line = json.dumps({"key": key, "reply": reply}, ensure_ascii=False) + "\n"
    with self._lock:
      if key in self._replies:
        return
      os.write(self._fd, line.encode("utf-8"))
      self._replies[key] = reply

  def __len__(self):
    return len(self._replies)

  def close(self):
    with self._lock:
      if self._fd is not None:
        os.close(self._fd)
        self._fd = None


class TextStore:
  """Append-only on-disk map from a key to a JSON value, shared across runs."""

  def __init__(self, path: str):
    self._store = JsonlStore(path)
    self.hits = 0
    self.misses = 0

  @staticmethod
  def key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8")).hexdigest()

  def get(self, key: str):
    value = self._store.get(key)
    if value is None:
      self.misses += 1
      return None
    self.hits += 1
    return json.loads(value)

  def put(self, key: str, value):
    self._store.put(key, json.dumps(value, ensure_ascii=False))

  def fetch(self, keys, make):
    """The values of `keys`: stored ones read back, the rest made at once by
    `make(indices of the missing keys) -> values` and stored."""
    found = [self.get(k) for k in keys]
    todo = [i for i, v in enumerate(found) if v is None]
    if todo:
      for i, value in zip(todo, make(todo)):
        self.put(keys[i], value)
        found[i] = value
    return found

  def close(self):
    self._store.close()
