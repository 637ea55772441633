"""The local data root: where loaders look before going to the hub."""

import os
from typing import Optional

ENV_VAR = "STEERJAX_DATA"


def data_root(explicit: Optional[str] = None) -> Optional[str]:
  """`explicit` if given, else $STEERJAX_DATA, else None (use the hub)."""
  root = explicit or os.environ.get(ENV_VAR) or None
  if root and not os.path.isdir(root):
    raise FileNotFoundError(f"data root {root!r} (from {'config' if explicit else ENV_VAR}) "
                            "is not a directory")
  return root
