"""Judges from `config.judge`: an OpenAI-compatible server or a local instruct model."""

from __future__ import annotations

import os
from typing import Callable, List

from steerjax.eval import templates as judge_templates
from steerjax.eval.judge import LocalJudge, OpenAIJudge
from steerjax.generate import generate_many
from steerjax.jobs import common
from steerjax.models import load, load_tokenizer

KINDS = ("openai", "local")


def cache_root(config) -> str:
  return config.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "steerjax")


def local_chat(bundle, max_new_tokens: int, batch_size: int) -> Callable[[List[str]], List[str]]:
  """`chat(prompts) -> replies` of a steerjax instruct model, greedy, under its chat template."""
  model, params, tok = bundle
  stops = common.stop_ids(model, tok)

  def chat(prompts):
    ids = generate_many(model, params, [tok.chat_prompt(p) for p in prompts],
                        max_new_tokens=max_new_tokens, batch_size=batch_size,
                        sort_by_length=True, fixed_batch=True, stop_ids=stops)
    return [tok.decode(x) for x in ids]
  return chat


def make_judge(config, ctx):
  """OpenAIJudge or LocalJudge from `config.judge`, its cache under the run's cache dir."""
  j = config.judge
  cache = j.cache_dir or os.path.join(cache_root(config), "judge")
  templates = judge_templates.load(j.get("templates", "steerjax"), cache_root(config),
                                   j.get("templates_repo", ""))
  if j.kind == "openai":
    return OpenAIJudge(base_url=j.base_url, model=j.model, api_key_env=j.api_key_env,
                       temperature=j.temperature, max_tokens=j.max_tokens,
                       concurrency=j.concurrency, max_retries=j.max_retries,
                       timeout_s=j.timeout_s, cache_dir=cache, templates=templates)
  if j.kind == "local":
    bundle, path = ctx.bundle, j.local_path or config.model.path
    if path != config.model.path:
      root = config.data_root or None
      bundle = load(path, common.DTYPES[j.local_dtype], data_root=root) + (
          load_tokenizer(path, data_root=root),)
    return LocalJudge(local_chat(bundle, j.local_max_new_tokens, j.local_batch_size),
                      name=f"{path}|greedy|{j.local_max_new_tokens}",
                      batch_size=j.local_batch_size, cache_dir=cache, templates=templates)
  raise ValueError(f"judge.kind={j.kind!r}; use one of {KINDS}")
