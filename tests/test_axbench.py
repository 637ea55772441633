"""AxBench end to end on the local Concept10 data: a tiny random Gemma-2 chat model, a
loopback judge, every kind of method, and reruns that ask the judge nothing new."""

import csv
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from axbench_fixtures import (SPECIAL, WRITTEN_REPLY, JudgeServer, build_tiny_gemma_chat,
                              is_rating_prompt, rating_for)
from conftest import DATA
from configs import axbench_gemma2_2b, axbench_gemma2_9b, axbench_qwen25_32b
from steerjax import methods
from steerjax.checkpoint import load_sv
from steerjax.data import axbench as data
from steerjax.eval import scoring
from steerjax.jobs import axbench as axbench_job
from steerjax.runtime import context
from steerjax.store import TextStore
from steerjax.eval.judge import KINDS, render_prompt

KEY_ENV = "STEERJAX_AXBENCH_TEST_KEY"
METHODS = ("prosv_simpo", "fssv_lang_sampled", "prompting")
GRID = (2.0, 8.0, 30.0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return build_tiny_gemma_chat(str(tmp_path_factory.mktemp("tiny_gemma_chat")), DATA)


def tiny_config(model_dir, cache_dir, server_url=""):
  """The G2B paper config shrunk: 2 concepts, 6 pairs, 1 epoch, 8 new tokens."""
  c = axbench_gemma2_2b.get_config()
  c.model.path, c.model.dtype = model_dir, "float32"
  c.steer.layer = 0
  c.data.suite, c.data.num_concepts, c.data.n_train = "concept10", 2, 6
  c.data.max_response_tokens, c.data.neutral_max_tokens = 16, 8
  c.eval.max_new_tokens = 8
  c.train.log_every = 100
  c.cache_dir = cache_dir
  c.methods = METHODS
  for name in METHODS:
    over = c.method_overrides[name]
    if "positions" in over:   # micro-batches of 3 (Lang sampled accumulates 2 of them)
      over.batch_size, over.epochs = 3 * over.get("grad_accum_steps", 1), 1
  c.method_overrides.fssv_lang_sampled.grid = GRID
  c.judge.update(base_url=server_url, model="judge-test", api_key_env=KEY_ENV, concurrency=8,
                 max_retries=1, timeout_s=10.0, templates="steerjax")
  c.eval.steering_prompts = "judge"
  c.eval.requests = "steerjax"        # no download of the authors' requests
  return c


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_pipeline_end_to_end_then_reruns_ask_nothing_new(model_dir, tmp_path, monkeypatch):
  monkeypatch.setenv(KEY_ENV, "sk-axbench-test")
  work, cache = str(tmp_path / "run"), str(tmp_path / "cache")
  quiet = lambda *a: None
  with JudgeServer() as server:
    config = tiny_config(model_dir, cache, server.url)
    bundle = context.load_model(config)
    first = axbench_job.run(config, work, log=quiet, bundle=bundle)

    # What the judge was asked: 3 ratings per generation, 12 neutral y, 2 steering prompts.
    gens = {"prosv_simpo": 20, "fssv_lang_sampled": 2 * 10 * len(GRID), "prompting": 20}
    rating_requests = [p for p in server.prompts if is_rating_prompt(p)]
    assert len(rating_requests) == 3 * sum(gens.values())
    assert server.requests == len(rating_requests) + 12 + 2
    assert first["judge"]["requests_sent"] == server.requests
    assert first["judge"]["failures"] == first["judge"]["parse_failures"] == 0
    assert first["text_store"] == {"hits": 0, "misses": 14}

    results = first["results_dir"]
    for name in ("results.md", "summary.csv", "summary.json", "per_concept.csv", "scores.png",
                 "per_concept.png", "factor_grid.png"):
      assert os.path.getsize(os.path.join(results, name)) > 0, name
    table = open(os.path.join(results, "results.md")).read()
    for name in METHODS:
      assert f"| {name} | 2 |" in table
    summary = {s["method"]: s for s in first["methods"]}
    for name, n in gens.items():
      assert summary[name]["generations"] == n and summary[name]["judge_calls"] == 3 * n
      assert summary[name]["ci_low"] <= summary[name]["overall"] <= summary[name]["ci_high"]

    # Ratings are the server's, and the per-concept scores follow the protocol.
    per_concept = list(csv.DictReader(open(os.path.join(results, "per_concept.csv"))))
    instructions = data.eval_instructions(data.alpaca_frame(), 1)
    for name in METHODS:
      records = [r for cid in (0, 1) for r in read_jsonl(
          os.path.join(work, "methods", name, "judged", f"{cid:04d}.jsonl"))]
      for r in records:
        item = {"concept": r["concept"], "instruction": r["instruction"],
                "continuation": r["continuation"]}
        assert [r[f"{k}_score"] for k in KINDS] == [rating_for(render_prompt(k, item))
                                                    for k in KINDS]
      assert [r["instruction"] for r in records if r["concept_id"] == 1][:10] == instructions
      want = (scoring.score_grid(records) if name == "fssv_lang_sampled"
              else scoring.score_joint(records))
      got = {int(row["concept_id"]): float(row["overall"]) for row in per_concept
             if row["method"] == name}
      assert got == pytest.approx(want)
      if name == "prompting":
        assert {r["steering_prompt"] for r in records} == {WRITTEN_REPLY}
      if name == "prosv_simpo":
        sv, meta = load_sv(os.path.join(work, "methods", name, "train", "svs", "0001.safetensors"))
        assert sv["direction"].dtype == np.float32 and meta["positions"] == "f2+l2"
        assert all(r["factor"] is None for r in records)
        assert {r["learned_factor"] for r in records if r["concept_id"] == 1} == {
            float(sv["factor"])}

    # Rerun after losing a trained method and the prompting generations: the SVs are trained
    # again and sampled again to the same text, so every rating comes from the cache.
    shutil.rmtree(os.path.join(work, "methods", "prosv_simpo"))
    shutil.rmtree(os.path.join(work, "methods", "prompting"))
    asked = server.requests
    second = axbench_job.run(config, work, log=quiet, bundle=bundle)
    assert server.requests == asked
    assert second["judge"]["requests_sent"] == 0
    assert second["judge"]["cache_hits"] == 3 * (gens["prosv_simpo"] + gens["prompting"])
    assert second["text_store"] == {"hits": 14, "misses": 0}
    assert second["methods"] == first["methods"]

    # A plain rerun finds everything on disk and asks no one anything.
    third = axbench_job.run(config, work, log=quiet, bundle=bundle)
    assert server.requests == asked
    assert third["judge"]["requests_sent"] == third["judge"]["cache_hits"] == 0
    assert third["methods"] == first["methods"]


def test_alpaca_instructions_follow_pandas_sample():
  path = os.path.join(DATA, "alpaca_eval", "alpaca_eval.json")
  reference = pd.read_json(path)
  alpaca = data.alpaca_frame()
  assert len(alpaca) == 805
  for cid in (0, 1, 7, 42, 499):
    expected = reference.sample(10, random_state=cid)["instruction"].tolist()
    assert data.eval_instructions(alpaca, cid) == expected
  assert data.eval_instructions(alpaca, 3) != data.eval_instructions(alpaca, 4)


def test_concept10_positives_under_the_chat_template(model_dir):
  from steerjax.models import load_tokenizer
  bench = data.load_benchmark("concept10", "2b_l10")
  assert [c.concept_id for c in bench.concepts] == list(range(10))
  assert sum(len(p) for p in bench.pairs.values()) == 720
  assert {len(p) for p in bench.pairs.values()} == {72}
  concept500 = data.concept_list("concept500", "2b_l10")
  assert len(concept500) == 500 and concept500[:10] == bench.concepts

  tok = load_tokenizer(model_dir)
  start_of_turn, end_of_turn = (tok.encode(t)[0] for t in SPECIAL[4:6])
  (x, y), = bench.pairs[3][:1]
  prompts, responses = data.tokenize_pairs(tok, [(x, y)], max_response_tokens=128)
  assert prompts[0][:2] == [tok.bos_id, start_of_turn]
  assert prompts[0] == tok.encode(f"<bos><start_of_turn>user\n{x.strip()}<end_of_turn>\n"
                                  "<start_of_turn>model\n")
  assert end_of_turn in prompts[0] and prompts[0][-1] != tok.eos_id
  assert responses[0] == tok.encode(y)[:128] and len(responses[0]) == 128
  assert tok.eos_id not in responses[0]


def test_hub_layout_when_the_data_root_lacks_the_files(tmp_path, monkeypatch):
  import huggingface_hub
  asked = []
  local = {("pyvene/axbench-concept10", "9b/l20/train/data.parquet"):
           "axbench/concept10/prod_9b_l20_v1/generate/train_data.parquet"}

  def fake_download(repo, filename, repo_type=None):
    asked.append((repo, filename, repo_type))
    return os.path.join(DATA, local[(repo, filename)])

  monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
  frame = data.train_frame("concept10", "9b_l20", data_root=str(tmp_path))
  concepts = data.concept_list("concept10", "9b_l20", data_root=str(tmp_path), frame=frame)
  assert asked == [("pyvene/axbench-concept10", "9b/l20/train/data.parquet", "dataset")]
  listed = data.concept_list("concept10", "9b_l20")   # from metadata.jsonl
  assert [(c.concept_id, c.name) for c in concepts] == [(c.concept_id, c.name) for c in listed]
  with pytest.raises(ValueError, match="same task"):
    data.positives(frame, data.concept_list("concept10", "2b_l10")[0])


def test_neutral_responses_are_made_once_and_reused(tmp_path):
  calls = []
  make_ids = lambda prompts: calls.append(("ids", len(prompts))) or [[7] * 20 for _ in prompts]
  make_text = lambda requests: calls.append(("text", requests)) or ["plain reply"] * len(requests)
  concepts = data.concept_list("concept10", "2b_l10")[:2]
  items = [(c, f"instruction {k}", [1, 4, k]) for c in concepts for k in range(3)]

  class Tok:
    encode = staticmethod(lambda text: [ord(ch) for ch in text])

  path = str(tmp_path / "texts.jsonl")
  for _ in range(2):
    store = TextStore(path)
    ys = data.neutral_responses(store, "model", "tiny", items, Tok, 8, make_ids, make_text)
    assert ys == [[7] * 8] * 6
    written = data.neutral_responses(store, "judge", "judge-x", items[:2], Tok, 5, make_ids,
                                     make_text)
    assert written == [[ord(ch) for ch in "plain"]] * 2
    store.close()
  assert calls[0] == ("ids", 6) and calls[1][0] == "text" and len(calls) == 2
  assert concepts[0].name in calls[1][1][0] and "instruction 0" in calls[1][1][0]
  assert store.hits == 8 and store.misses == 0
  store = TextStore(path)   # another model name is not served another model's text
  data.neutral_responses(store, "model", "other", items[:1], Tok, 8, make_ids, make_text)
  assert calls[-1] == ("ids", 1)
  store.close()


def test_paper_configs_and_their_cost():
  plan = {r["method"]: r for r in axbench_job.plan(axbench_gemma2_2b.get_config())}
  assert plan["prosv_simpo"]["steps_per_sv"] == 12 * 12 and plan["prosv_lang"]["svs"] == 500
  assert plan["fssv_lang_sampled"]["generations"] == 500 * 10 * 14
  assert plan["fssv_lang"]["judge_calls"] == 500 * 10 * 3
  assert plan["prompting"]["judge_calls"] == 500 * 10 * 3      # released steering prompts
  assert plan["neutral y (judge)"]["judge_calls"] == 500 * 72
  judge_written = axbench_gemma2_2b.get_config()
  judge_written.eval.steering_prompts = "judge"
  assert {r["method"]: r for r in axbench_job.plan(judge_written)}["prompting"][
      "judge_calls"] == 500 * 10 * 3 + 500
  assert plan["fssv_lang_fixed"]["steps_per_sv"] == 3 * (72 // 6)   # AxBench's SSV values
  g9b = {r["method"]: r for r in axbench_job.plan(axbench_gemma2_9b.get_config())}
  assert g9b["neutral y (released)"]["judge_calls"] == 0
  assert g9b["prosv_simpo"]["steps_per_sv"] == 24 * 12 and g9b["fssv_lang"]["steps_per_sv"] == 108
  qwen = axbench_qwen25_32b.get_config()
  assert (qwen.data.task, qwen.data.num_concepts, qwen.steer.layer) == ("9b_l20", 100, 32)
  method = methods.from_config(qwen, "fssv_reps_sampled")
  assert method.step.factor_set == tuple(range(20, 201, 20)) and max(method.grid) == 400
  assert method.neutral == "model" and method.step.objective == "reps_axbench"
  assert methods.from_config(qwen, "prosv_simpo").loop.direction_init == "uniform"


def test_plan_counts_a_small_config_by_hand(model_dir):
  """--plan on two concepts of the fixture chat model: every count written out by hand."""
  from steerjax import main
  from steerjax.jobs import utility as utility_job
  from steerjax.models import load_tokenizer
  from steerjax.runtime import plans
  c = axbench_gemma2_2b.get_config()
  c.model.path, c.steer.layer = model_dir, 0
  c.data.num_concepts, c.data.n_train, c.data.max_response_tokens = 2, 12, 128
  c.methods = ("prosv_simpo",)                  # batch 6, 12 epochs, 2 sequences per example
  c.method_overrides.unsteered = {"kind": "unsteered"}
  tok = load_tokenizer(model_dir)
  # Gemma-2's template around one user turn, as its text pieces
  template = (len(tok.encode("<bos><start_of_turn>user\n"))
              + len(tok.encode("<end_of_turn>\n<start_of_turn>model\n")))
  prompt = template + plans.INSTRUCTION_TOKENS
  assert plans.prompt_length(c)[0] == prompt
  lines = []
  rows = {r["method"]: r for r in main.plan(c, log=lines.append)}
  simpo = rows["prosv_simpo"]
  assert simpo["steps_per_sv"] == (12 // 6) * 12
  assert simpo["train_sequences"] == 2 * 24 * 6 * 2
  assert simpo["train_tokens"] == 2 * 24 * 6 * 2 * (prompt + 128)
  assert simpo["scored_sequences"] == 2 * 12 * 2          # reference log-probs of y_c and y
  assert (simpo["generations"], simpo["judge_calls"]) == (2 * 10, 2 * 10 * 3)
  assert rows["neutral y (judge)"]["judge_calls"] == 2 * 12
  assert simpo["pflop"] > 0 and any(l.startswith("time on one h100") for l in lines)
  assert any(f"{template} of the chat template" in l for l in lines)

  c.utility.update(rows=("unsteered", "prompting", "fssv_lang@0.5"), num_concepts=2, limit=5)
  c.eval.steering_prompts = "judge"
  rows = {r["method"]: r for r in utility_job.plan(c)}
  # unsteered answers once: 5 MMLU grades, but its GSM8K answers rated for both concepts
  assert rows["unsteered"]["judge_calls"] == 5 + 2 * 5 * 3
  assert rows["unsteered"]["generations"] == 5 * 2
  assert rows["unsteered"]["scored_sequences"] == 5 * 4   # lm-eval's four letters per item
  assert rows["prompting"]["judge_calls"] == 2 * 5 + 2 * 5 * 3 + 2
  assert rows["fssv_lang@0.5"]["judge_calls"] == 2 * 5 + 2 * 5 * 3
  assert rows["fssv_lang@0.5"]["scored_sequences"] == 2 * 5 * 4

  c.model.path = "google/gemma-2-2b-it"                   # not under the data root
  tokens, note = plans.prompt_length(c)
  assert tokens == plans.INSTRUCTION_TOKENS and "fixed estimate" in note
  c.plan.chip = "tpu"
  with pytest.raises(ValueError, match="plan.chip"):
    main.plan(c, log=lines.append)


def test_plan_flops_by_hand():
  """One generation of 3 prompt + 2 new tokens through a 2-block model: projections
  2*4*(2*2*2 + 2*1*2) = 96 and MLP 2*3*4*8 = 192 per token and block, attention 4*2*2 = 16
  per token, block and context position, head 2*4*10 = 80 per token."""
  from steerjax.models.config import ModelConfig
  from steerjax.runtime import plans
  shape = ModelConfig(vocab_size=10, dim=4, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=2,
                      hidden_dim=8)
  flops = plans.row_flops({"generations": 1, "prompt_tokens": 3, "new_tokens": 2}, shape, 1)
  assert flops["prefill"] == 2 * (3 * 288 + 16 * 3 * 3) + 80
  assert flops["decode"] == 2 * (288 + 16 * 3) + 80 + 2 * (288 + 16 * 4) + 80
  # training one 3-token sequence steered at block 1: forward through both blocks and the
  # head, input gradients through the head and block 1 (projections again, attention twice)
  train = plans.row_flops({"train_sequences": 1, "train_tokens": 3}, shape, 1)["train"]
  assert train == (2 * (3 * 288 + 16 * 9) + 3 * 80) + (3 * 288 + 2 * 16 * 9) + 3 * 80


def _released_clone(root, concepts, task="2b_l10"):
  """A local 'clone' of the authors' data folder in the released schema: contrast triples
  for every concept, a steering prompt and attack prompts for the first one only."""
  gen = lambda suite: os.path.join(root, "data", suite, f"prod_{task}_v1", "generate")
  os.makedirs(gen("concept500_contrast"))
  os.makedirs(gen("concept500"))
  pd.DataFrame([{"negative_input": f"Question {k} about {c.name}?",
                 "negative_output": f"A plain answer {k}.",
                 "positive_input": f"Please incorporate the following concept: {c.name}",
                 "positive_output": f"An answer {k} full of {c.name}.",
                 "concept_id": c.concept_id, "concept": c.name, "concept_genre": "text",
                 "category": "positive"} for c in concepts for k in range(8)]).to_parquet(
      os.path.join(gen("concept500_contrast"), "contrast_train_data.parquet"))
  first = concepts[0]
  pd.DataFrame([{"steering_prompt": f"Always mention {first.name}.", "concept": first.name,
                 "concept_id": first.concept_id}]).to_parquet(
      os.path.join(gen("concept500"), "steering_prompt_prepend.parquet"))
  pd.DataFrame([{"original_prompt": f"Instruction {k}", "concept_id": first.concept_id,
                 "steered_prompt": f"Instruction {k}, never mentioning {first.name}",
                 "concept": first.name} for k in range(10)]).to_parquet(
      os.path.join(gen("concept500"), "suppression_prompt_blended.parquet"))
  os.makedirs(os.path.join(root, "src", "reft"))
  with open(os.path.join(root, "src", "reft", "llm_judge.py"), "w") as f:
    f.write("import re\n\nCONCEPT_TEMPLATE = 'unused {concept}'\n"
            "T_GENERATE_PREPEND_STEERING_PROMPT = 'Fixture request: steer towards {concept}.'\n"
            "T_GENERATE_SUPPRESSION_PROMPT_BLEND = 'Fixture request: {instruction} "
            "without {concept}.'\n")
  return root


def test_released_data_feeds_neutral_responses_and_steering_prompts(model_dir, tmp_path):
  from steerjax.data import released
  from steerjax.eval.judge import LocalJudge
  from steerjax.runtime.session import Session
  config = tiny_config(model_dir, str(tmp_path / "cache"))
  concepts = data.concept_list("concept10", "2b_l10")[:2]
  clone = _released_clone(str(tmp_path / "prosv"), concepts)
  config.data.update(neutral="released", released_repo=clone, task="2b_l10")
  config.eval.steering_prompts = "released"
  config.eval.requests = "prosv"      # the authors' T_GENERATE_* for what the file lacks
  lines, asked = [], []

  def chat(prompts):
    asked.extend(prompts)
    return [WRITTEN_REPLY] * len(prompts)
  ctx = context.setup(config, log=lines.append, bundle=context.load_model(config))
  with LocalJudge(chat, name="writer", cache_dir=None) as judge:
    session = Session(ctx, str(tmp_path / "run"), judge)
    simpo = methods.from_config(config, "prosv_simpo")
    train = session.training_data(simpo)
    tok = ctx.tok
    assert train[1].prompts[2] == tok.chat_prompt(f"Question 2 about {concepts[1].name}?")
    d = config.data
    assert train[1].responses[2] == tok.encode(
        f"An answer 2 full of {concepts[1].name}.")[:d.max_response_tokens]
    assert train[1].neutral[2] == tok.encode("A plain answer 2.")[:d.neutral_max_tokens]
    assert len(train[0].prompts) == config.data.n_train and asked == []
    prompts = session.steering_prompts(session.bench.concepts)
    assert prompts == {concepts[0].concept_id: f"Always mention {concepts[0].name}.",
                       concepts[1].concept_id: WRITTEN_REPLY}
    # the judge wrote the missing one, asked with the authors' request read from the clone
    assert asked == [f"Fixture request: steer towards {concepts[1].name}."]
    kind, request = session.request("suppression_prompt", "ours {concept} {instruction}")
    assert (kind, request) == ("suppression_prompt@prosv",
                               "Fixture request: {instruction} without {concept}.")
    # the neutral y's request is AxBench's T_RESPONSE_WITHOUT_CONCEPT (the paper's Fig. 40)
    templates = os.path.join(str(tmp_path / "axbench"), "axbench", "templates")
    os.makedirs(templates)
    with open(os.path.join(templates, "prompt_templates.py"), "w") as f:
      f.write("T_RESPONSE_WITHOUT_CONCEPT = 'Fixture: answer {INSTRUCTION} without {CONCEPT}.'\n")
    config.data.axbench_repo = str(tmp_path / "axbench")
    assert session.request("neutral", "ours") == (
        "neutral@prosv", "Fixture: answer {instruction} without {concept}.")
    assert any("1 concept(s) not in the file" in line for line in lines)
    session.store.close()
  attack = released.frame("suppression", "2b_l10", local_clone=clone)
  assert list(attack["steered_prompt"])[3] == f"Instruction 3, never mentioning {concepts[0].name}"

  bad = os.path.join(clone, "data", "concept500", "prod_2b_l10_v1", "generate",
                     "steering_prompt_prepend.parquet")
  pd.DataFrame([{"prompt": "x", "concept": "y", "concept_id": 0}]).to_parquet(bad)
  with pytest.raises(ValueError, match=r"not the released steering_prompts schema; missing "
                                       r"\['steering_prompt'\]"):
    released.frame("steering_prompts", "2b_l10", local_clone=clone)


def test_paper_ablation_configs_plan_and_run_on_the_fixture(model_dir, tmp_path, monkeypatch):
  """Fig. 3 and Table 1: one command each; their search over positions and seeds runs on
  the fixture model and writes the seed means and the heatmap."""
  from configs import paper_fig3, paper_table1
  from steerjax import main
  from steerjax.jobs import search
  fig3 = paper_fig3.get_config("q32b")
  rows = main.plan(fig3, log=lambda *a: None)
  assert len(rows) == 16 and rows[0]["svs"] == 10 * 3            # 10 concepts x 3 seeds
  assert fig3.method_overrides.ablation.positions == "f2+l2"
  assert paper_fig3.get_config().method_overrides.ablation.positions == "f4+l4"
  table1 = paper_table1.get_config("g2b")
  assert [p["positions"] for p in search.grid(table1)] == list(paper_table1.POSITIONS)
  assert rows[0]["steps_per_sv"] == (72 // 12) * 6
  with pytest.raises(ValueError, match="use one of"):
    paper_fig3.get_config("g7b")

  monkeypatch.setenv(KEY_ENV, "sk-axbench-test")
  with JudgeServer() as server:
    config = tiny_config(model_dir, str(tmp_path / "cache"), server.url)
    config.job = "search"
    config.search.update(method="prosv_lang", concepts="config", beta=(1.0, 4.0),
                         lr_factor=(), lam=(), lr_direction=(), epochs=(1,), batch_size=(3,),
                         positions=("f2", "l2"), seeds=(1, 2), heatmap=("beta", "positions"))
    lines = []
    out = search.run(config, str(tmp_path / "search"), log=lines.append,
                     bundle=context.load_model(config))
  points = out["points"]
  assert len(points) == 4 and all(p["seeds"] == 2 for p in points)
  for p in points:
    per_seed = [s["overall"] for s in p["per_seed"]]
    assert [s["seed"] for s in p["per_seed"]] == [1, 2]
    assert p["overall"] == pytest.approx(np.mean(per_seed))
  # positions change the compiled step: one stacked group per (seed, positions)
  assert sum("search rows 0..3" in line and "steps" in line for line in lines) == 4
  assert os.path.exists(tmp_path / "search" / "seed_2" / "shapes" / "b3_e1_l2")
  assert os.path.getsize(tmp_path / "search" / "heatmap.png") > 0
  assert "overall_std" in open(tmp_path / "search" / "search.md").read()


def test_fixed_unit_factor_row_steers_in_units_of_the_max_activation(model_dir, tmp_path):
  """AxBench's steering vector: v starts at 0.01 everywhere; at inference the factor is
  times the concept's max h.v on the latent eval rows (input and output as a chat, after
  the chat prefix), checked against transformers' hidden states of the same checkpoint."""
  import torch
  import transformers
  from steerjax.eval.judge import LocalJudge
  from steerjax.runtime.session import Session
  from steerjax.steering import init_sv
  config = tiny_config(model_dir, str(tmp_path / "cache"))
  method = methods.from_config(config, "fssv_lang_fixed")
  assert (method.scale, method.spec.positions, method.spec.train_positions) == (
      "max_act", "all", "all-bos")
  sv = init_sv(None, 8, method.loop.beta, method.loop.lam, method.loop.direction_init)
  assert np.all(np.asarray(sv["direction"]) == np.float32(0.01))
  config.eval.batch_size = 16
  ctx = context.setup(config, log=lambda *a: None, bundle=context.load_model(config))
  concept = data.concept_list("concept10", "2b_l10")[1]
  v = np.random.default_rng(0).normal(size=ctx.model.cfg.dim).astype(np.float32)
  svs = {concept.name: {"factor": np.float32(1.0), "direction": v}}
  with LocalJudge(lambda p: ["x"] * len(p), name="unused", cache_dir=None) as judge:
    session = Session(ctx, str(tmp_path / "run"), judge)
    found = session.max_activations(method, svs)
    scaled = session.scaled_by_max_act(method, svs)
    session.store.close()

  latent = data.latent_frame("concept10", "2b_l10", DATA)
  hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
  best = -np.inf
  rows = latent[latent["concept_id"] == concept.concept_id]
  for x, y in zip(rows["input"], rows["output"]):
    # Gemma's template written out, without the closing "<end_of_turn>\n"
    ids = ctx.tok.encode(f"<bos><start_of_turn>user\n{x}<end_of_turn>\n"
                         f"<start_of_turn>model\n{y}")
    with torch.no_grad():
      h = hf(torch.tensor([ids]), output_hidden_states=True).hidden_states[1][0].numpy()
    best = max(best, float((h @ v)[4:].max()))      # 4 = Gemma's chat prefix
  assert best > 0                                   # a real maximum, not the fallback
  expected = best
  assert found[concept.name] == pytest.approx(expected, abs=2e-3)
  np.testing.assert_allclose(scaled[concept.name]["direction"], v * found[concept.name],
                             rtol=1e-6)


def test_search_job_writes_a_config_the_axbench_job_runs(model_dir, tmp_path, monkeypatch):
  import importlib.util
  from steerjax.jobs import search
  monkeypatch.setenv(KEY_ENV, "sk-axbench-test")
  with JudgeServer() as server:
    config = tiny_config(model_dir, str(tmp_path / "cache"), server.url)
    config.job = "search"
    config.search.update(method="prosv_lang", concepts="config", beta=(1.0, 4.0),
                         lr_factor=(1.0, 10.0), lam=(1.0,), lr_direction=(0.04,), epochs=(1,),
                         batch_size=(3,))
    bundle = context.load_model(config)
    lines = []
    out = search.run(config, str(tmp_path / "search"), log=lines.append, bundle=bundle)
    assert len(out["points"]) == 4 and out["best"]["overall"] == max(
        p["overall"] for p in out["points"])
    # The four points trained stacked as 8 rows (4 points x 2 concepts) of one step.
    assert sum("search rows 0..7" in line and "steps" in line for line in lines) == 1
    table = open(tmp_path / "search" / "search.md").read()
    assert table.count("| 00") == 4

    spec = importlib.util.spec_from_file_location("best", tmp_path / "search" / "best_config.py")
    best = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(best)
    final = best.get_config()
    assert final.job == "axbench" and tuple(final.methods) == ("prosv_lang",)
    chosen = final.method_overrides.prosv_lang
    assert (chosen.beta, chosen.lr_factor) == (out["best"]["beta"], out["best"]["lr_factor"])
    assert isinstance(final.data.concepts, tuple)
    result = axbench_job.run(final, str(tmp_path / "final"), log=lambda *a: None, bundle=bundle)
    assert [m["method"] for m in result["methods"]] == ["prosv_lang"]


def test_the_judge_rates_one_chunk_while_the_next_is_made(model_dir, tmp_path, monkeypatch):
  """With a slow judge the job takes less than generating alone plus judging alone, and
  its results are those of a run with an instant judge."""
  import time
  from steerjax.eval import judges
  monkeypatch.setenv(KEY_ENV, "sk-axbench-test")
  quiet = lambda *a: None

  def config(server, name):
    c = tiny_config(model_dir, str(tmp_path / name / "cache"), server.url)
    c.methods = ("fssv_lang_sampled", "unsteered")
    c.eval.concepts_per_chunk, c.eval.max_new_tokens = 1, 24   # 4 chunks to rate
    c.judge.concurrency = 256
    return c

  def timed_run(server, name, bundle):
    t0 = time.perf_counter()
    result = axbench_job.run(config(server, name), str(tmp_path / name / "work"), log=quiet,
                             bundle=bundle)
    return time.perf_counter() - t0, result

  with JudgeServer() as instant, JudgeServer(latency_s=1.0) as slow:
    bundle = context.load_model(config(instant, "warm"))
    timed_run(instant, "warm", bundle)                 # compiles every program
    generating, sequential = timed_run(instant, "instant", bundle)
    gens = [r for m in ("fssv_lang_sampled", "unsteered") for cid in (0, 1)
            for r in read_jsonl(str(tmp_path / "instant" / "work" / "methods" / m /
                                    "generations" / f"{cid:04d}.jsonl"))]
    judge = judges.from_config(config(slow, "alone"), bundle)
    t0 = time.perf_counter()
    for m in ("fssv_lang_sampled", "unsteered"):       # one rate call per chunk, as the job
      for cid in (0, 1):
        judge.rate([{k: g[k] for k in ("concept", "instruction", "continuation")}
                    for g in gens if g["method"] == m and g["concept_id"] == cid])
    judging = time.perf_counter() - t0
    judge.close()
    overlapped, result = timed_run(slow, "slow", bundle)
  assert result["methods"] == sequential["methods"]
  assert overlapped < generating + judging, (overlapped, generating, judging)
