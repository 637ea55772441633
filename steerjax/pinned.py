"""Files of public GitHub repositories at a fixed commit, downloaded once and cached (or
read from a local clone): the benchmark's judge templates and the paper authors' released
data are read at run time from their source, never copied into steerjax."""

from __future__ import annotations

import ast
import os
import urllib.request
from typing import Mapping

from steerjax import paths

LFS_POINTER = b"version https://git-lfs"


def _download(url: str) -> bytes:
  with urllib.request.urlopen(url, timeout=120) as response:
    return response.read()


def fetch(repo: str, commit: str, path: str, cache_dir: str, local_clone: str = "") -> str:
  """Local path of `path` in GitHub `repo` at `commit`: inside `local_clone` if given, else
  in `cache_dir`, downloaded there the first time (Git LFS files through GitHub's media
  host)."""
  if local_clone:
    where = os.path.join(local_clone, path)
    if not os.path.exists(where):
      raise FileNotFoundError(f"{where} does not exist: is {local_clone} a clone of {repo}?")
    return where
  cached = os.path.join(cache_dir, "github", repo.replace("/", "__"), commit, path)
  if not os.path.exists(cached):
    url = f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"
    try:
      data = _download(url)
      if data.startswith(LFS_POINTER):
        data = _download(f"https://media.githubusercontent.com/media/{repo}/{commit}/{path}")
    except OSError as err:
      raise FileNotFoundError(f"could not download {url} ({err}); clone {repo}, check out "
                              f"{commit} and pass the clone's folder instead") from None
    paths.write_atomic(cached, data)
  return cached


def constants_of(source: str, names: Mapping[str, str], where: str) -> dict:
  """{kind: string} of the module-level string constants `names` in Python `source`,
  read with `ast` (nothing is executed)."""
  found = {}
  for node in ast.parse(source).body:
    if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
      for target in node.targets:
        if isinstance(target, ast.Name) and isinstance(node.value.value, str):
          found[target.id] = node.value.value
  missing = [n for n in names.values() if n not in found]
  if missing:
    raise ValueError(f"{where} defines no {missing}")
  return {kind: found[name] for kind, name in names.items()}
