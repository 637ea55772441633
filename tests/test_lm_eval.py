"""The `steerjax` model inside lm-eval: log-likelihoods equal a plain forward's, a PrOSV
edits only the context and decodes with the unsteered loop, and lm-eval's own evaluator
runs local-file tasks on it, steered and unsteered."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm_eval.api.instance import Instance

from steerjax import generate as generation
from steerjax.eval.lm_eval_model import SteerjaxLM
from steerjax.steering import SteerSpec, init_sv, positions_mask, steer

PAIRS = [("Once upon a time, there was a", " little girl named Lily."),
         ("The dog ran to the park.", " He played with a ball."),
         ("", "Tom had a red car.")]
# one-token continuations of one context (multiple-choice letters): scored from one sequence
CHOICES = [("Tom had a red car. It was", w) for w in (" the", " a", " she")]


def _sv(seed, width):
  return init_sv(jax.random.key(seed), width, beta=4.0, lam=8.0)


def _requests(pairs):
  return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def _plain(model, params, tok, context, continuation, sv=None, spec=None):
  """Summed log p(continuation | context) from one full forward."""
  ids = tok.encode(context, bos=True) if context else [tok.bos_id]
  cont = tok.encode(continuation)
  tokens = jnp.asarray([ids + cont], jnp.int32)
  if sv is None:
    logits = model.apply({"params": params}, tokens)
  else:
    prompt = jnp.asarray([[True] * len(ids) + [False] * len(cont)])
    mask = positions_mask(spec.positions, prompt, jnp.ones_like(prompt))
    logits = steer(model.apply, spec)({"params": params}, sv, tokens, mask)
  logp = jax.nn.log_softmax(logits[0, len(ids) - 1:-1], axis=-1)
  return float(sum(logp[j, t] for j, t in enumerate(cont)))


def test_loglikelihoods_equal_a_plain_forward(stories):
  model, params, tok = stories
  lm = SteerjaxLM(bundle=stories, batch_size=2)
  got = lm.loglikelihood(_requests(PAIRS + CHOICES))
  assert len({lp for lp, _ in got[len(PAIRS):]}) == len(CHOICES)
  for (context, continuation), (lp, _) in zip(PAIRS + CHOICES, got):
    assert lp == pytest.approx(_plain(model, params, tok, context, continuation), abs=1e-4)
  sv = _sv(0, model.cfg.dim)
  for positions in ("f2+l2", "all"):
    spec = SteerSpec(2, positions)
    steered = SteerjaxLM(bundle=stories, batch_size=2, sv_tree=sv, spec=spec)
    got = steered.loglikelihood(_requests(PAIRS + CHOICES))
    for (context, continuation), (lp, _) in zip(PAIRS + CHOICES, got):
      want = _plain(model, params, tok, context, continuation, sv, spec)
      assert lp == pytest.approx(want, abs=1e-4), positions
  rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (PAIRS[2][1],), 0)])
  assert rolling[0] == pytest.approx(_plain(model, params, tok, "", PAIRS[2][1]), abs=1e-4)


def test_a_prosv_decodes_with_the_unsteered_loop(stories):
  model, params, tok = stories
  prompts = [tok.encode("Once upon a time", bos=True)] * 2
  run = lambda **kw: generation.generate(model, params, prompts, max_new_tokens=12, **kw)
  run()
  compiled = generation.decode._cache_size()
  sv = _sv(1, model.cfg.dim)
  run(sv=sv, spec=SteerSpec(2, "f2+l2"))
  assert generation.decode._cache_size() == compiled      # the same decode program
  run(sv=sv, spec=SteerSpec(2, "all"))
  assert generation.decode._cache_size() == compiled + 1  # FSSV steers every decode step


def _write(path, rows):
  with open(path, "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")
  return str(path)


def test_lm_eval_runs_local_tasks_on_the_steered_model(stories, tmp_path):
  from lm_eval import simple_evaluate
  from lm_eval.tasks import TaskManager
  mc = _write(tmp_path / "mc.jsonl", [
      {"input_formatted": f"Question {k}: which letter?\nA. a\nB. b\nC. c\nD. d\nAnswer:",
       "answer": k % 4} for k in range(6)])
  gen = _write(tmp_path / "gen.jsonl", [
      {"question": f"Tom has {k} apples and gets 2 more. How many?", "answer": f"#### {k + 2}"}
      for k in range(4)])
  tasks = [
      {"task": "local_mc", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": mc}},
       "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{input_formatted}}",
       "doc_to_choice": ["A", "B", "C", "D"], "doc_to_target": "answer",
       "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]},
      {"task": "local_gen", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": gen}},
       "test_split": "test", "output_type": "generate_until",
       "doc_to_text": "Question: {{question}}\nAnswer:", "doc_to_target": "{{answer}}",
       "generation_kwargs": {"until": ["Question:"], "do_sample": False, "max_gen_toks": 16},
       "metric_list": [{"metric": "exact_match", "aggregation": "mean",
                        "higher_is_better": True}]},
  ]
  results = {}
  sv = _sv(2, stories[0].cfg.dim)
  for name, kw in (("plain", {}), ("prosv", dict(sv_tree=sv, spec=SteerSpec(2, "f2+l2"))),
                   ("fssv", dict(sv_tree=sv, spec=SteerSpec(2, "all")))):
    out = simple_evaluate(model=SteerjaxLM(bundle=stories, batch_size=4, **kw), tasks=tasks,
                          task_manager=TaskManager(), log_samples=True)
    results[name] = out
    assert 0.0 <= out["results"]["local_mc"]["acc,none"] <= 1.0
    assert len(out["samples"]["local_mc"]) == 6 and len(out["samples"]["local_gen"]) == 4
  lls = {k: [s["resps"][0][0][0] for s in v["samples"]["local_mc"]] for k, v in results.items()}
  assert not np.allclose(lls["plain"], lls["prosv"])       # the SV acts on the context
  assert not np.allclose(lls["prosv"], lls["fssv"])        # ... and FSSV on the choice too
