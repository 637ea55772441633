"""The chat benchmark built with its model (steerjax.data.chat): the model answers each
training candidate under the concept request, greedily; the session's judge keeps the answers
it finds the concept in. Answers are stored under the model's key, so every seed and job of
the same data reads them back instead of generating them again."""

from __future__ import annotations

import functools

from steerjax.data import axbench, chat
from steerjax.data.benchmark import Benchmark, Concept


@functools.lru_cache(maxsize=4)
def _split(data_root, concepts, n_candidates, n_eval, n_utility, max_tokens, seed, tok):
  alpaca = chat.short_instructions(axbench.alpaca_frame(data_root or None), tok, max_tokens)
  return chat.split(alpaca, concepts, n_candidates, n_eval, n_utility, seed)


def split(config, tok) -> chat.Split:
  """The configured benchmark's instruction pools (the same for every run seed)."""
  d = config.data
  chat.concepts(d.concepts)
  return _split(config.data_root, tuple(d.concepts), d.n_candidates, d.n_eval,
                config.utility.reference_answers, d.max_instruction_tokens, d.seed, tok)


def concept_responses(session, requests) -> list:
  """The model's greedy answers to `requests`, `data.max_response_tokens` long, stored."""
  tokens = session.config.data.max_response_tokens
  keys = [session.store.key("concept_response", session.model_key, r, tokens) for r in requests]

  def make(todo):
    session.ctx.log(f"chat benchmark: the model writes {len(todo)} concept response(s)")
    ids = session.generate([session.ctx.tok.chat_prompt(requests[i]) for i in todo],
                           max_new_tokens=tokens, temperature=0.0)
    return [session.ctx.tok.decode(x) for x in ids]
  return session.store.fetch(keys, make)


def benchmark(session) -> Benchmark:
  """Concepts with their kept (instruction, y_c) pairs, test instructions and requests."""
  d, tok = session.config.data, session.ctx.tok
  pools = split(session.config, tok)
  chosen = chat.concepts(d.concepts)
  requests = [chat.request(c, x) for c in chosen for x in pools.train]
  answers = iter(concept_responses(session, requests))
  answers = {c.name: [next(answers) for _ in pools.train] for c in chosen}
  ratings = iter(session.judge.rate([
      {"concept": c.name, "instruction": x, "continuation": y}
      for c in chosen for x, y in zip(pools.train, answers[c.name])]))
  concepts, pairs = [], {}
  for k, c in enumerate(chosen):
    rated = [next(ratings) for _ in pools.train]
    pairs[k] = chat.keep_pairs(pools.train, answers[c.name], rated, d.n_train)
    problem = chat.missing_pairs_error(c.name, len(pairs[k]), d.n_train, len(pools.train))
    if problem:
      raise ValueError(problem)
    concepts.append(Concept(k, c.name, key=c.name))
    kept = sum(r["concept_score"] >= 1 for r in rated)
    session.ctx.log(f"chat benchmark: {c.name}: {kept}/{len(pools.train)} answers under the "
                    f"request mention it; {d.n_train} kept")
  return Benchmark(concepts, pairs, {k: pools.test[c.name] for k, c in enumerate(chosen)},
                   {k: c.description for k, c in enumerate(chosen)})
