"""The chat concept benchmark: concept words, disjoint instruction pools, kept pairs, MMLU's
5-shot items from the local files, the offline judge's chat mode, config checks, and a short
run of the chat job on SmolLM2-135M-Instruct."""

import json

import pytest

from configs import chat_smollm2
from steerjax.data import axbench, chat, sources
from steerjax.eval import judges, utility
from steerjax.eval.offline_judge import CHAT_THRESHOLDS, OfflineJudge
from steerjax.jobs import chat as chat_job
from steerjax.runtime import session


def test_concept_words_are_whole_words_in_any_case():
  ocean, space = chat.CONCEPTS["ocean"], chat.CONCEPTS["space"]
  assert ocean.mentions("The Ocean meets the sea at the seashore.") == 3
  assert ocean.mentions("Research on overseas markets.") == 0
  assert space.mentions("Leave a space between words.") == 0   # the ambiguous word is out
  assert space.mentions("Astronauts orbit the planet.") == 3
  with pytest.raises(ValueError, match="not chat concepts"):
    chat.concepts(["ocean", "cheese"])


def test_instruction_pools_are_disjoint_and_fixed_by_the_data_seed():
  alpaca = axbench.alpaca_frame()
  pools = chat.split(alpaca, ["ocean", "dogs"], n_candidates=20, n_eval=10, n_utility=5, seed=3)
  tests = pools.test["ocean"] + pools.test["dogs"]
  used = pools.train + tests + [x for x, _ in pools.utility]
  assert len(used) == len(set(used)) == 45
  answers = dict(zip(alpaca["instruction"], alpaca["output"]))
  assert all(answers[x] == y for x, y in pools.utility)
  assert chat.split(alpaca, ["ocean", "dogs"], 20, 10, 5, seed=3) == pools
  assert chat.split(alpaca, ["ocean", "dogs"], 20, 10, 5, seed=4).train != pools.train
  with pytest.raises(ValueError, match="needs 1100 instructions"):
    chat.split(alpaca, ["ocean"], 1000, 50, 50, seed=0)


def test_kept_pairs_are_the_first_the_judge_finds_the_concept_in():
  rated = [{"concept_score": s} for s in (0, 2, 1, 0, 1)]
  pairs = chat.keep_pairs(list("abcde"), list("ABCDE"), rated, n_train=2)
  assert pairs == [("b", "B"), ("c", "C")]
  assert chat.missing_pairs_error("dogs", 2, 2, 5) is None
  assert "data.n_candidates" in chat.missing_pairs_error("dogs", 1, 2, 5)
  assert chat.request(chat.CONCEPTS["space"], "Name a fruit.") == (
      "Name a fruit. In your answer, talk about outer space.")


def test_mmlu_items_are_lm_evals_five_shot_prompts_from_the_local_files():
  count = lambda text: len(text.split())
  items = utility.mmlu_items(6, 200, count, seed=1)
  assert len(items) == 6 and all(count(it["input_formatted"]) <= 200 for it in items)
  item = items[0]
  subject = item["subject"].replace("_", " ")
  text = item["input_formatted"]
  assert text.startswith(f"The following are multiple choice questions (with answers) about "
                         f"{subject}.\n\n")
  assert text.count("\nAnswer:") == 6 and text.endswith("\nD. " + item["choices"][3].strip()
                                                        + "\nAnswer:")
  dev, _ = utility.mmlu_frames()
  shot = dev[dev["subject"] == item["subject"]].iloc[0]
  assert f"{shot['question'].strip()}\nA. " in text
  assert utility.mmlu_letter(item) == "ABCD"[item["answer"]]
  assert utility.mmlu_items(6, 200, count, seed=1) == items
  with pytest.raises(ValueError, match="utility.mmlu_max_tokens=5"):
    utility.mmlu_items(2, 5, count)


def test_the_chat_config_is_checked_before_the_model_loads():
  config = chat_smollm2.get_config()
  chat_job.check(config)
  config.data.source = "axbench"
  with pytest.raises(ValueError, match="data.source='axbench' should be 'chat'"):
    chat_job.check(config)
  config.data.source = "chat"
  config.data.concepts = ("ocean", "tea")
  with pytest.raises(ValueError, match=r"\['tea'\] are not chat concepts"):
    chat_job.check(config)
  config.data.concepts = ("ocean",)
  config.method_overrides.prosv_simpo.neutral = "released"
  with pytest.raises(ValueError, match="prosv_simpo.neutral='released'"):
    chat_job.check(config)
  config.job = "train"
  with pytest.raises(ValueError, match="data.source='chat' is built with its model by job=chat"):
    sources.check(config)


def test_quick_chat_run_on_smollm2(smol_bundle, tmp_path, monkeypatch):
  """The chat job end to end on the real model: y_c the model wrote and the judge kept,
  a trained PrOSV, unsteered and prompting rows with both utility columns; a rerun reads
  everything back."""
  config = chat_smollm2.get_config("quick")
  config.cache_dir = str(tmp_path / "cache")
  judge = judges.from_config(config, smol_bundle)   # shared by both runs: compiled once
  lines = []
  rows = chat_job.run(config, str(tmp_path / "run"), log=lines.append, bundle=smol_bundle,
                      judge=judge)
  assert {r["method"] for r in rows} == {"prosv_lang", "unsteered", "prompting"}
  kept = [line for line in lines if line.startswith("chat benchmark: ocean:")]
  assert kept and kept[0].endswith("2 kept")
  summary = {s["method"]: s for s in json.load(open(tmp_path / "run" / "summary.json"))["methods"]}
  base = summary["unsteered"]
  assert 1.0 < base["reference_nll"] < 5.0 and 0.0 <= base["mmlu"] <= 1.0
  assert summary["prosv_lang"]["reference_nll"] != base["reference_nll"]
  assert summary["prompting"]["reference_nll"] is None and summary["prompting"]["mmlu"] >= 0
  gens = [json.loads(line) for line in open(tmp_path / "run" / "generations.jsonl")]
  prompted = [g for g in gens if g["method"] == "prompting"]
  assert prompted and all(g["steering_prompt"] == "the ocean" for g in prompted)

  def refuse(*a, **k):
    raise AssertionError("the rerun trained or generated again")
  monkeypatch.setattr(session.training, "train_concepts", refuse)
  monkeypatch.setattr(session, "generate_many", refuse)
  assert chat_job.run(config, str(tmp_path / "run"), log=lines.append, bundle=smol_bundle,
                      judge=judge) == rows


def test_the_chat_judge_scores_answers_after_the_instruction_as_a_user_turn(smol_bundle):
  judge = OfflineJudge(*smol_bundle, concepts=chat.CONCEPTS, thresholds=CHAT_THRESHOLDS,
                       batch_size=2, max_tokens=64, chat=True)
  tok = smol_bundle[2]
  assert judge.context("Hi there") == tok.chat_prompt("Hi there")
  assert judge.context(None) == tok.chat_prompt("")
  question = "What is the capital of France?"
  answer = "The capital of France is Paris, a city on the Seine."
  unrelated = "Dogs need daily walks and fresh water to stay healthy."
  real, other = judge.measure([{"concept": "dogs", "instruction": question, "continuation": t}
                               for t in (answer, unrelated)])
  assert real["pmi"] > 0.25 > other["pmi"] and real["shared_words"] >= 2
  rated = judge.rate([{"concept": "dogs", "instruction": question, "continuation": t}
                      for t in (answer, unrelated)])
  assert [r["instruction_score"] for r in rated] == [2, 0]
  assert [r["concept_score"] for r in rated] == [0, 1]
  assert rated[0]["fluency_score"] == 2
