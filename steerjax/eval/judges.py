"""Judges from `config.judge`: an OpenAI-compatible server, a local instruct model, or the
offline word-set judge."""

from __future__ import annotations

import os
from typing import Callable, List

from steerjax import paths
from steerjax.eval import templates as judge_templates
from steerjax.eval.judge import LocalJudge, OpenAIJudge
from steerjax.eval.judge_cost import (Prices, duration, estimate_cost, estimate_time,
                                      typical_prompt_tokens)
from steerjax.data import chat
from steerjax.eval.offline_judge import CHAT_THRESHOLDS, OfflineJudge
from steerjax.generate import generate_many
from steerjax.models import DTYPES, load, load_tokenizer, stop_ids

JUDGE_KINDS = ("openai", "local", "offline")


def prices(config) -> Prices:
  j = config.judge
  return Prices(j.price_input_per_m, j.price_output_per_m, j.price_batch_input_per_m,
                j.price_batch_output_per_m)


def plan_lines(config, calls: int) -> list:
  """What `calls` judge requests of `config.judge` cost and take at its assumed account
  limits, online and in batches."""
  if calls <= 0 or config.judge.kind != "openai":
    return []
  j = config.judge
  tokens_in = typical_prompt_tokens(continuation_tokens=config.eval.max_new_tokens)
  tokens_out = 100    # a short explanation and the rating
  time = estimate_time(calls, tokens_in, j.max_tokens, j.plan_rpm, j.plan_tpm,
                       j.plan_latency_s, j.concurrency, j.headroom)
  dollars = estimate_cost(calls, tokens_in, tokens_out, prices(config))
  return [f"judge: {calls} calls of about {tokens_in:.0f} prompt + {tokens_out} completion "
          f"tokens; online {duration(time['seconds'])} at {j.plan_rpm} RPM / {j.plan_tpm} "
          f"TPM (judge.plan_rpm, judge.plan_tpm), ${dollars['online']:.2f}; batch mode "
          f"${dollars['batch']:.2f}, within the Batch API's 24 h window"]


def local_chat(bundle, max_new_tokens: int, batch_size: int) -> Callable[[List[str]], List[str]]:
  """`chat(prompts) -> replies` of a steerjax instruct model, greedy, under its chat template."""
  model, params, tok = bundle
  stops = stop_ids(model.cfg, tok)

  def chat(prompts):
    ids = generate_many(model, params, [tok.chat_prompt(p) for p in prompts],
                        max_new_tokens=max_new_tokens, batch_size=batch_size,
                        sort_by_length=True, fixed_batch=True, stop_ids=stops)
    return [tok.decode(x) for x in ids]
  return chat


def from_config(config, bundle):
  """The judge `config.judge` describes; `bundle` = (model, params, tokenizer) of the target
  model, which the local judge uses unless `judge.local_path` names another model and the
  offline judge always uses. Its replies are cached under the run's cache root."""
  j = config.judge
  if j.kind == "offline":
    if config.data.source == "chat":
      return OfflineJudge(*bundle, concepts=chat.CONCEPTS, thresholds=CHAT_THRESHOLDS, chat=True,
                          batch_size=min(32, config.eval.batch_size))
    return OfflineJudge(*bundle)
  root = paths.cache_root(config.cache_dir)
  cache = j.cache_dir or os.path.join(root, "judge")
  templates = judge_templates.load(j.templates, root, j.templates_repo)
  if j.kind == "openai":
    return OpenAIJudge(
        base_url=j.base_url, model=j.model, api_key_env=j.api_key_env,
        temperature=j.temperature, max_tokens=j.max_tokens, concurrency=j.concurrency,
        max_retries=j.max_retries, timeout_s=j.timeout_s, cache_dir=cache, templates=templates,
        mode=j.mode, max_pending=j.max_pending, headroom=j.headroom,
        rate_limit_wait_s=j.rate_limit_wait_s, batch_max_lines=j.batch_max_lines,
        batch_max_bytes=j.batch_max_bytes, batch_poll_s=j.batch_poll_s,
        batch_max_rounds=j.batch_max_rounds, batch_fallback=j.batch_fallback,
        batch_wait_s=None if j.batch_wait_s < 0 else j.batch_wait_s)
  if j.kind == "local":
    path = j.local_path or config.model.path
    if path != config.model.path:
      data_root = config.data_root or None
      bundle = load(path, DTYPES[j.local_dtype], data_root=data_root) + (
          load_tokenizer(path, data_root=data_root),)
    return LocalJudge(local_chat(bundle, j.local_max_new_tokens, j.local_batch_size),
                      name=f"{path}|greedy|{j.local_max_new_tokens}",
                      batch_size=j.local_batch_size, cache_dir=cache, templates=templates)
  raise ValueError(f"judge.kind={j.kind!r}; use one of {JUDGE_KINDS}")
