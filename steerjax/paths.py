"""Where steerjax reads and keeps files: the local data root and the cache root."""

import os
from typing import Optional, Union

ENV_VAR = "STEERJAX_DATA"
# Judge replies, judge-written texts, pinned downloads; `cache_dir` in a config moves it.
DEFAULT_CACHE_ROOT = os.path.join(os.path.expanduser("~"), ".cache", "steerjax")


def data_root(explicit: Optional[str] = None) -> Optional[str]:
  """`explicit` if given, else $STEERJAX_DATA, else None (use the hub)."""
  root = explicit or os.environ.get(ENV_VAR) or None
  if root and not os.path.isdir(root):
    raise FileNotFoundError(f"data root {root!r} (from {'config' if explicit else ENV_VAR}) "
                            "is not a directory")
  return root


def cache_root(explicit: str = "") -> str:
  """`explicit` if given, else ~/.cache/steerjax."""
  return explicit or DEFAULT_CACHE_ROOT


def write_atomic(path: str, data: Union[str, bytes]):
  """Write `data` to `path` through a temporary file, so a killed run never leaves half a
  file behind."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with (open(path + ".tmp", "wb") if isinstance(data, bytes)
        else open(path + ".tmp", "w", encoding="utf-8")) as f:
    f.write(data)
  os.replace(path + ".tmp", path)
