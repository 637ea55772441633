"""What the judge costs and how long it takes: tokens to dollars, calls to wall time.

Prices are USD per million tokens, configurable; the defaults are gpt-4o-mini's list prices
(0.15 in, 0.60 out) with the Batch API at half of them. `cost(stats)` prices what a run
used (`JudgeStats.as_dict()`, or one job's share from `since`); `estimate_cost` and
`estimate_time` are for plans: a number of calls with typical tokens per call.

Wall time at an account's limits: a request counts 1 against the requests-per-minute limit
and its prompt tokens plus `max_tokens` against the tokens-per-minute limit (OpenAI charges
`max_tokens` when the request arrives, not the tokens the reply turns out to have), and at
most `max_in_flight` requests of `latency_s` each are under way; the slowest of the three
sets the pace. The client runs at `headroom` of the stated limits.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Optional


@dataclasses.dataclass(frozen=True)
class Prices:
  input_per_m: float = 0.15            # USD per million prompt tokens, online
  output_per_m: float = 0.60           # USD per million completion tokens, online
  batch_input_per_m: Optional[float] = None    # None: half the online price
  batch_output_per_m: Optional[float] = None

  def batch(self):
    return (self.input_per_m / 2 if self.batch_input_per_m is None else self.batch_input_per_m,
            self.output_per_m / 2 if self.batch_output_per_m is None
            else self.batch_output_per_m)

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if value is not None and value < 0:
        raise ValueError(f"judge price {field.name}={value} must be >= 0")


def cost(stats: Mapping[str, int], prices: Prices = Prices()) -> Dict[str, float]:
  """USD of the tokens in `stats` (a `JudgeStats.as_dict()`): online, batch and total."""
  batch_in, batch_out = prices.batch()
  online = (stats.get("prompt_tokens", 0) * prices.input_per_m +
            stats.get("completion_tokens", 0) * prices.output_per_m) / 1e6
  batch = (stats.get("batch_prompt_tokens", 0) * batch_in +
           stats.get("batch_completion_tokens", 0) * batch_out) / 1e6
  return dict(online=online, batch=batch, total=online + batch)


def estimate_cost(calls: int, prompt_tokens: float, completion_tokens: float,
                  prices: Prices = Prices()) -> Dict[str, float]:
  """USD of `calls` requests of `prompt_tokens` in and `completion_tokens` out each, all
  online or all in batches."""
  batch_in, batch_out = prices.batch()
  return dict(online=calls * (prompt_tokens * prices.input_per_m +
                              completion_tokens * prices.output_per_m) / 1e6,
              batch=calls * (prompt_tokens * batch_in + completion_tokens * batch_out) / 1e6)


def estimate_time(calls: int, prompt_tokens: float, max_tokens: float, rpm: float,
                  tpm: Optional[float] = None, latency_s: float = 2.0,
                  max_in_flight: int = 512, headroom: float = 0.95) -> Dict[str, float]:
  """Seconds the online judge needs for `calls` requests at an account's `rpm` / `tpm`;
  -> {"seconds", and the seconds each limit alone allows: "requests", "tokens", "in_flight"}."""
  if rpm <= 0 or (tpm is not None and tpm <= 0) or max_in_flight < 1:
    raise ValueError(f"need rpm > 0, tpm > 0 (or None) and max_in_flight >= 1, got {rpm}, "
                     f"{tpm}, {max_in_flight}")
  by_requests = calls / (rpm * headroom / 60.0)
  by_tokens = calls * (prompt_tokens + max_tokens) / (tpm * headroom / 60.0) if tpm else 0.0
  by_in_flight = calls * latency_s / max_in_flight
  return dict(seconds=max(by_requests, by_tokens, by_in_flight), requests=by_requests,
              tokens=by_tokens, in_flight=by_in_flight)


def typical_prompt_tokens(templates=None, continuation_tokens: int = 128,
                          chars_per_token: float = 4.0) -> float:
  """Mean prompt tokens of a rating request: the three templates rendered around a
  `continuation_tokens`-token text, at `chars_per_token` (about 4 for English)."""
  from steerjax.eval.templates import KINDS, STEERJAX
  templates = templates or STEERJAX
  item = dict(concept="a short concept description", instruction="A one-line instruction.",
              continuation="")
  chars = sum(len(templates.render(kind, item)) for kind in KINDS) / len(KINDS)
  return chars / chars_per_token + continuation_tokens


def duration(seconds: float) -> str:
  """'45 s', '12 min', '3.4 h', '2.1 days'."""
  if seconds < 90:
    return f"{seconds:.0f} s"
  if seconds < 90 * 60:
    return f"{seconds / 60:.0f} min"
  if seconds < 48 * 3600:
    return f"{seconds / 3600:.1f} h"
  return f"{seconds / 86400:.1f} days"


def usage_line(stats: Mapping[str, int], prices: Prices = Prices()) -> str:
  """One line for a results page: requests, tokens, cost and failed ratings."""
  dollars = cost(stats, prices)
  return (f"judge: {stats.get('requests_sent', 0)} online request(s) "
          f"({stats.get('rate_limited', 0)} rate-limited), "
          f"{stats.get('batch_requests', 0)} in batches, {stats.get('cache_hits', 0)} from the "
          f"cache; {stats.get('prompt_tokens', 0) + stats.get('batch_prompt_tokens', 0)} prompt "
          f"+ {stats.get('completion_tokens', 0) + stats.get('batch_completion_tokens', 0)} "
          f"completion tokens, ${dollars['total']:.2f} (${dollars['online']:.2f} online, "
          f"${dollars['batch']:.2f} batch); failed ratings: {stats.get('failures', 0)}")
