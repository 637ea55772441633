"""A steerjax model, steered or not, inside EleutherAI's lm-eval (`pip install
"steerjax[lmeval]"`), so any lm-eval task runs on a steered model:

  python -m steerjax.eval.lm_eval_model run --model steerjax \
      --model_args model=stories260K,sv=runs/x/svs/dog.safetensors,factor_scale=0.8 \
      --tasks ...                     # lm-eval's own CLI, with this model registered
  lm_eval.simple_evaluate(model=SteerjaxLM(...), tasks=[...])   # from Python

`model_args`: `model` (alias, HF directory, hub id or llama2.c .bin), `sv` (an SV file;
none = unsteered), `factor_scale` (multiplies the SV's factor), `dtype`, `max_length`,
`thinking` (a chat template's thinking switch, as Qwen3's; off by default);
the batch size is lm-eval's own `--batch_size`. The SV acts as in generation: a prompt-only SV (PrOSV) edits its positions
of the context only, so scoring a continuation and decoding run the unsteered model past
the context; an SV over all tokens (FSSV) edits every token, the continuation's and the
generated ones included. `apply_chat_template` and `fewshot_as_multiturn` use the model's
chat template.
"""

from __future__ import annotations

import functools
from typing import List, Optional

import jax
import jax.numpy as jnp
import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from steerjax import checkpoint
from steerjax.generate import generate_many
from steerjax.models import DTYPES, load, load_tokenizer, stop_ids
from steerjax.steering import SteerSpec, forward

PAD_MULTIPLE = 16


@functools.partial(jax.jit, static_argnames=("model", "spec"))
def _continuation_scores(model, spec, params, sv, tokens, valid, prompt, at, target):
  """(log p of each target [B, R], whether it is the argmax [B, R]) at positions `at`."""
  logits = forward(model, params, tokens, valid, prompt, sv, spec, logits_at=at)
  logp = jax.nn.log_softmax(logits, axis=-1)
  picked = jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
  return picked, jnp.argmax(logits, axis=-1) == target


@register_model("steerjax")
class SteerjaxLM(TemplateLM):
  """lm-eval's view of a steerjax model with an optional SV."""

  def __init__(self, model: str = "stories260K", sv: str = "", factor_scale: float = 1.0,
               batch_size: int = 8, dtype: str = "float32", max_length: int = 0,
               data_root: str = "", bundle=None, sv_tree=None, spec: Optional[SteerSpec] = None,
               thinking: bool = False, **_ignored):
    super().__init__()
    self.model_name = model
    if bundle is None:
      root = data_root or None
      bundle = load(model, DTYPES[dtype], data_root=root) + (
          load_tokenizer(model, data_root=root, thinking=thinking),)
    self.model, self.params, self.tok = bundle
    if sv:
      sv_tree, meta = checkpoint.load_sv(sv, self.model.cfg)
      spec = SteerSpec(meta["layer"], meta["positions"], meta["op"])
    self.spec = spec
    self.sv = None
    if sv_tree is not None:
      self.sv = {"factor": jnp.float32(np.asarray(sv_tree["factor"]) * float(factor_scale)),
                 "direction": jnp.asarray(sv_tree["direction"], jnp.float32)}
    self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8   # "auto": 8
    self._max_length = int(max_length) or self.model.cfg.max_seq_len
    self.stops = stop_ids(self.model.cfg, self.tok)

  # ---- tokenizer and chat template
  @property
  def eot_token_id(self) -> int:
    return self.tok.eos_id

  @property
  def prefix_token_id(self) -> int:
    return self.tok.bos_id if self.tok.bos_id is not None else self.tok.eos_id

  @property
  def max_length(self) -> int:
    return self._max_length

  @property
  def tokenizer_name(self) -> str:
    return self.model_name.replace("/", "__")

  def chat_template(self, chat_template=False):
    return self.tok.chat_template

  def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
    return self.tok.chat_text(chat_history, add_generation_prompt)

  def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> List[int]:
    """BOS first (as the models were trained), unless the text already starts with it (a
    chat template put it there) or `add_special_tokens=False`."""
    bos = self.tok.bos_text
    starts = bool(bos) and string.startswith(bos)
    ids = self.tok.encode(string)   # a chat template's special tokens are read as such
    if add_special_tokens is False or starts or self.tok.bos_id is None:
      return ids
    return [self.tok.bos_id] + ids

  # ---- scoring
  def _score(self, contexts: List[List[int]], continuations: List[List[int]]):
    """Per pair: (summed log p of the continuation, every token greedy). Pairs with the same
    context and a one-token continuation (multiple-choice letters) share one sequence."""
    rows, where, slots = [], {}, []
    for c, x in zip(contexts, continuations):
      inputs = tuple((c + x)[-(self._max_length + 1):][:-1])   # the last token: a target only
      key = (inputs, True) if len(x) == 1 else (inputs, len(slots))
      if key not in where:
        where[key] = len(rows)
        rows.append((inputs, len(x) == 1, []))
      targets = rows[where[key]][2]
      slots.append((where[key], len(targets), len(x)))
      targets.extend(x)
    scored = []
    for start in range(0, len(rows), self.batch_size):
      scored += self._score_rows(rows[start:start + self.batch_size])
    return [(float(scored[r][0][a:a + n].sum()), bool(scored[r][1][a:a + n].all()))
            for r, a, n in slots]

  def _score_rows(self, rows):
    """(log p, greedy) of each row's targets: a row's one-token targets all follow its last
    input; a longer continuation fills the row's last positions."""
    T = -(-max(len(inputs) for inputs, _, _ in rows) // PAD_MULTIPLE) * PAD_MULTIPLE
    R = -(-max(len(targets) for _, _, targets in rows) // 8) * 8
    B = self.batch_size
    tokens = np.full((B, T), self.model.cfg.pad_id, np.int32)
    valid, prompt = np.zeros((B, T), bool), np.zeros((B, T), bool)
    at, target = np.zeros((B, R), np.int32), np.zeros((B, R), np.int32)
    for i, (inputs, shared, x) in enumerate(rows):
      start = T - len(inputs)
      tokens[i, start:] = inputs
      valid[i, start:] = True
      n_context = len(inputs) - (1 if shared else len(x)) + 1
      prompt[i, start:start + n_context] = True
      at[i, :len(x)] = T - 1 if shared else np.arange(T - len(x), T)
      target[i, :len(x)] = x
    lp, greedy = _continuation_scores(self.model, self.spec, self.params, self.sv, tokens,
                                      valid, prompt, at, target)
    lp, greedy = np.asarray(lp), np.asarray(greedy)
    return [(lp[i, :len(x)], greedy[i, :len(x)]) for i, (_, _, x) in enumerate(rows)]

  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
    contexts = [list(r[1]) or [self.prefix_token_id] for r in requests]
    out = self._score(contexts, [list(r[2]) for r in requests])
    for r, result in zip(requests, out):
      if r[0] is not None:
        self.cache_hook.add_partial("loglikelihood", r[0], result)
    return out

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> List[float]:
    """Whole-text log-likelihoods in disjoint windows of the context length; the context
    of each window is its prompt (a PrOSV edits only there)."""
    out = []
    for request in requests:
      (text,) = request.args
      windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
          token_list=self.tok_encode(text, add_special_tokens=False),
          prefix_token=self.prefix_token_id, max_seq_len=self._max_length, context_len=1)]
      scores = self._loglikelihood_tokens([(None, c, x) for c, x in windows])
      total = sum(s for s, _ in scores)
      self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
      out.append(total)
    return out

  # ---- generation
  def generate_until(self, requests, disable_tqdm: bool = False) -> List[str]:
    """Greedy (or sampled, if asked) continuations, cut at the first `until` string;
    requests with the same settings are generated in batches."""
    out, groups = [None] * len(requests), {}
    for i, request in enumerate(requests):
      context, kwargs = request.args
      kwargs = dict(kwargs or {})
      until = kwargs.get("until") or []
      until = (until,) if isinstance(until, str) else tuple(until)
      temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
      budget = int(kwargs.get("max_gen_toks", 256))
      groups.setdefault((until, temperature, budget), []).append(i)
    for (until, temperature, budget), members in groups.items():
      prompts = [self.tok_encode(requests[i].args[0])[-(self._max_length - budget):]
                 for i in members]
      got = generate_many(self.model, self.params, prompts, max_new_tokens=budget,
                          batch_size=self.batch_size, temperature=temperature,
                          rng=jax.random.key(0), sv=self.sv,
                          spec=self.spec if self.sv is not None else None, stop_ids=self.stops)
      for i, ids in zip(members, got):
        text = self.tok.decode(ids)
        for stop in until:
          if stop and stop in text:
            text = text[:text.index(stop)]
        self.cache_hook.add_partial("generate_until", requests[i].args, text)
        out[i] = text
    return out


if __name__ == "__main__":   # lm-eval's command line with the `steerjax` model registered
  from lm_eval.__main__ import cli_evaluate
  cli_evaluate()
