"""`eval.sampling`: how generation samples beyond `eval.temperature` and `eval.top_p`.

  plain  the full distribution at the temperature (with eval.top_p if below 1)
  hf     as transformers' `generate(do_sample=True, temperature=...)` samples: the model's
         `generation_config.json` (over transformers' defaults, e.g. top-k 50) supplies
         top-k, top-p and the repetition penalty, as AxBench and the paper's authors ran
"""

from __future__ import annotations

import os

MODES = ("plain", "hf")
# transformers' generate() defaults for the fields read here (5.x)
HF_DEFAULTS = {"top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0}


def for_config(config) -> dict:
  """The extra `generate` arguments of `config.eval.sampling` for `config.model`."""
  from steerjax.models.loading import resolve
  path = resolve(config.model.path, config.data_root or None)
  return sampling_options(config.eval.get("sampling", "plain"),
                          path if os.path.isdir(path) else os.path.dirname(path))


def sampling_options(mode: str, model_dir: str) -> dict:
  """Extra `generate` arguments for `mode` and the model in `model_dir`."""
  if mode not in MODES:
    raise ValueError(f"eval.sampling={mode!r}; use one of {MODES}")
  if mode == "plain":
    return {}
  from transformers import GenerationConfig
  g = GenerationConfig()
  if os.path.exists(os.path.join(model_dir, "generation_config.json")):
    g = GenerationConfig.from_pretrained(model_dir)
  # generate() fills the fields a model leaves unset from transformers' global defaults
  defaults = dict(HF_DEFAULTS, **getattr(GenerationConfig, "_get_default_generation_params",
                                         dict)())
  get = lambda key: getattr(g, key) if getattr(g, key) is not None else defaults[key]
  return dict(top_k=int(get("top_k")), top_p=float(get("top_p")),
              repetition_penalty=float(get("repetition_penalty")))
