"""Utility and suppression-attack jobs: tinyMMLU / tinyGSM8K in their real schemas, scored
as known on hand-made answers, and both jobs end to end on a tiny random Gemma-2 chat
model with a loopback judge, resumable, and the trade-off front from their results."""

import json
import os

import jax
import numpy as np
import pandas as pd
import pytest

from axbench_fixtures import WRITTEN_REPLY, JudgeServer, build_tiny_gemma_chat
from conftest import DATA
from steerjax import checkpoint, methods
from steerjax.data import axbench as data
from steerjax.eval import utility
from steerjax.jobs import attack
from steerjax.runtime import context, training
from steerjax.jobs import utility as utility_job
from steerjax.steering import init_sv
from test_axbench import KEY_ENV, _released_clone, tiny_config

SHOTS = [("What is 2 + 2?", "A. 3\nB. 4\nC. 5\nD. 6", "B"),
         ("Which is a colour?", "A. red\nB. dog\nC. run\nD. six", "A"),
         ("Which is a fruit?", "A. car\nB. sky\nC. apple\nD. pen", "C"),
         ("What is 3 x 3?", "A. 6\nB. 8\nC. 10\nD. 9", "D"),
         ("Which is an animal?", "A. cat\nB. cup\nC. hat\nD. map", "A")]


def mmlu_item(question, options, answer):
  head = "The following are multiple choice questions (with answers) about testing.\n\n"
  shots = "".join(f"{q}\n{o}\nAnswer: {a}\n\n" for q, o, a in SHOTS)
  return {"question": question, "subject": "testing",
          "choices": [line[3:] for line in options.split("\n")], "answer": answer,
          "input_formatted": f"{head}{shots}{question}\n{options}\nAnswer:"}


def gsm8k_item(question, worked, number):
  shots = "".join(f"Question: Tom has {k} pens and buys {k}. How many?\nAnswer: {k} + {k} = "
                  f"{2 * k}\n#### {2 * k}\n\n" for k in range(1, 6))
  return {"question": question, "answer": f"{worked}\n#### {number}",
          "input_formatted": f"{shots}Question: {question}\nAnswer:"}


MMLU = [mmlu_item("Which is a planet?", "A. Mars\nB. chair\nC. spoon\nD. bread", 0),
        mmlu_item("What is 10 - 7?", "A. 1\nB. 2\nC. 3\nD. 4", 2)]
GSM8K = [gsm8k_item("Ann has 3 apples and gets 4 more. How many?", "3 + 4 = 7", 7),
         gsm8k_item("A box holds 1,200 pins; half are red. How many red?", "1,200 / 2 = 600",
                    600)]


def test_prompts_follow_the_authors_multi_turn_layout():
  chat = utility.chat("tinymmlu", MMLU[0], steering_prompt="Talk about dogs.")
  assert [m["role"] for m in chat] == ["user", "assistant"] * 5 + ["user"]
  assert chat[0]["content"].startswith("The following are multiple choice questions")
  assert chat[0]["content"].endswith("What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:")
  assert chat[1]["content"] == "The answer is: B." and chat[7]["content"] == "The answer is: D."
  assert chat[-1]["content"].startswith("Talk about dogs.\n\nThe following are")
  assert chat[-1]["content"].endswith("Which is a planet?\nA. Mars\nB. chair\nC. spoon\n"
                                      "D. bread\nAnswer:")
  g = utility.chat("tinygsm8k", GSM8K[0])
  assert [m["role"] for m in g] == ["user", "assistant"] * 5 + ["user"]
  assert g[1]["content"] == "Answer: 1 + 1 = 2\n#### 2"
  assert g[-1]["content"] == "Question: Ann has 3 apples and gets 4 more. How many?"
  plain = utility.chat("tinygsm8k", {"question": "Q?", "answer": "#### 1"},
                       shots=[{"question": "S?", "answer": "x\n#### 2"}])
  assert plain == [{"role": "user", "content": "Question: S?"},
                   {"role": "assistant", "content": "Answer: x\n#### 2"},
                   {"role": "user", "content": "Question: Q?"}]


def test_hand_made_answers_score_as_known():
  item = GSM8K[0]
  responses = ["3 + 4 = 7\n#### 7",                 # right, in the format
               "She ends up with 7 apples.",          # right number buried in text
               "3 + 4 = 8\n#### 8",                   # wrong
               "I like apples."]                      # malformed: no number
  assert utility.gsm8k_correct(responses, [item] * 4) == [True, True, False, False]
  assert utility.gsm8k_correct(responses, [item] * 4, "strict") == [True, False, False, False]
  assert utility.gsm8k_correct(["That makes 1,200 / 2 = 600 red pins."], [GSM8K[1]]) == [True]


def test_gsm8k_paper_rule_counts_any_matching_number():
  ann, box = GSM8K
  rambling = ["Ann had 3, got 4, so 7 apples. Then 2 friends ate 1 each, 5 left.",  # 7 mid-text
              "Half of 1,200.0 is 600.00 pins, ignoring the 12 blue boxes.",         # 600.00
              "Maybe 6 or 8? I would say 8 apples.",                                  # no 7
              "1,200 pins, half of 1200, hmm, 6000 or 60.",                          # no 600
              "No numbers at all."]
  items = [ann, box, ann, box, ann]
  assert utility.gsm8k_correct(rambling, items) == [True, True, False, False, False]
  assert utility.gsm8k_correct(rambling, items, "paper") == [True, True, False, False, False]
  # lm-eval's flexible filter takes the last number only: the buried answers miss.
  assert utility.gsm8k_correct(rambling, items, "flexible") == [False, False, False, False,
                                                                 False]
  assert utility.gsm8k_any_number("The answer is -7.0004.", {"answer": "#### -7"}) is True
  assert utility.gsm8k_any_number("About 7.01.", {"answer": "#### 7"}) is False
  with pytest.raises(ValueError, match="mode='last'"):
    utility.gsm8k_correct(["7"], [ann], "last")
  requests = utility.mmlu_judge_requests(MMLU, ["The answer is: A.", "B"])
  assert "Correct option: A. Mars" in requests[0] and "Correct option: C. 3" in requests[1]
  assert "What is 10 - 7?\nA. 1" in requests[1] and "2 + 2" not in requests[1]
  assert requests[1].rstrip().endswith("Rating: [[k]]")


def _items(tmp_path):
  paths = {}
  for name, rows in (("tinymmlu", MMLU), ("tinygsm8k", GSM8K)):
    paths[name] = str(tmp_path / f"{name}.parquet")
    pd.DataFrame(rows).to_parquet(paths[name])
  return paths


def _svs(config, bundle, workdir, names=("prosv_lang", "fssv_lang")):
  """SV files where the axbench job writes them, for the first two concepts."""
  ctx = context.Context(config, *bundle)
  for k, name in enumerate(names):
    m = methods.from_config(config, name)
    for c in data.concept_list("concept10", "2b_l10")[:2]:
      sv = init_sv(jax.random.key(10 * k + c.concept_id), bundle[0].cfg.dim, beta=2.0, lam=4.0)
      sv = {key: np.asarray(v) for key, v in sv.items()}
      checkpoint.save_sv(os.path.join(workdir, "methods", name, "train", "svs",
                                      f"{data.concept_name(c)}.safetensors"), sv,
                         training.sv_meta(ctx, m, data.concept_name(c), sv["factor"]))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return build_tiny_gemma_chat(str(tmp_path_factory.mktemp("tiny_gemma_chat")), DATA)


def test_utility_and_attack_jobs_end_to_end_then_resume(model_dir, tmp_path, monkeypatch):
  monkeypatch.setenv(KEY_ENV, "sk-test")
  with JudgeServer() as server:
    config = tiny_config(model_dir, str(tmp_path / "cache"), server.url)
    bundle = context.load_model(config)
    svs_from = str(tmp_path / "axbench")
    _svs(config, bundle, svs_from)
    rows = ("unsteered", "prompting", "prosv_lang", "fssv_lang", "fssv_lang@0.5")
    paths = _items(tmp_path)
    config.utility.update(svs_from=svs_from, rows=rows, num_concepts=2, mmlu_tokens=6,
                          gsm8k_tokens=8, **paths)
    first = utility_job.run(config, str(tmp_path / "utility"), log=lambda *a: None,
                            bundle=bundle)
    assert set(first) == set(rows)
    assert first["unsteered"]["concepts"] == 1 and first["prosv_lang"]["concepts"] == 2
    for summary in first.values():
      for key in ("mmlu_judge", "mmlu_letter", "gsm8k", "gsm8k_strict"):
        assert 0.0 <= summary[key] <= 1.0
      assert 0.0 <= summary["long_context"] <= 2.0
    assert "long_context" in open(tmp_path / "utility" / "results" / "utility.md").read()
    asked = server.requests
    again = utility_job.run(config, str(tmp_path / "utility"), log=lambda *a: None,
                            bundle=bundle)
    assert again == first and server.requests == asked          # every result read back

    concepts = data.concept_list("concept10", "2b_l10")[:2]
    clone = _released_clone(str(tmp_path / "prosv"), concepts)
    instructions = data.eval_instructions(data.alpaca_frame(), concepts[0].concept_id)
    pd.DataFrame([{"original_prompt": x, "concept_id": concepts[0].concept_id,
                   "steered_prompt": f"{x} Never mention {concepts[0].name}.",
                   "concept": concepts[0].name} for x in instructions]).to_parquet(os.path.join(
        clone, "data", "concept500", "prod_2b_l10_v1", "generate",
        "suppression_prompt_blended.parquet"))
    config.data.released_repo = clone
    config.attack.update(svs_from=svs_from, rows=rows, num_concepts=2,
                         utility_from=str(tmp_path / "utility"))
    lines = []
    out = attack.run(config, str(tmp_path / "attack"), log=lines.append, bundle=bundle)
    assert [s["method"] for s in out["rows"]] == list(rows)
    judged = {cid: [json.loads(line) for line in open(
        tmp_path / "attack" / "methods" / "prosv_lang" / "judged" / f"{cid:04d}.jsonl")]
              for cid in (0, 1)}
    assert [r["model_input"] for r in judged[0]] == [
        f"{x} Never mention {concepts[0].name}." for x in instructions]
    assert [r["instruction"] for r in judged[0]] == instructions   # rated against the original
    assert {r["model_input"] for r in judged[1]} == {WRITTEN_REPLY}  # concept 1: judge-written
    assert any("the judge writes 10 suppression prompt(s)" in line for line in lines)
    prompting = [json.loads(line) for line in open(
        tmp_path / "attack" / "methods" / "prompting" / "generations" / "0000.jsonl")]
    assert prompting[0]["model_input"].endswith("Never mention " + concepts[0].name + ".")
    tradeoff = open(tmp_path / "attack" / "results" / "tradeoff.md").read()
    assert all(f"| {r} |" in tradeoff for r in rows)
    assert os.path.getsize(tmp_path / "attack" / "results" / "tradeoff.png") > 1000
    asked = server.requests
    attack.run(config, str(tmp_path / "attack"), log=lambda *a: None, bundle=bundle)
    assert server.requests == asked
