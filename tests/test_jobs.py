"""The job layer: one entry, one method vocabulary, registries, your own data, bad input."""

import json
import os
import subprocess
import sys

import pytest

from configs import base, demo as demo_config
from steerjax import jobs, losses, main, methods, train
from steerjax.checkpoint import load_sv
from steerjax.runtime import context, training
from steerjax.jobs import train as train_job

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
quiet = lambda *a, **k: None


def _config(**train_fields):
  c = base.get_config()
  c.data_root = os.environ["STEERJAX_DATA"]
  c.data.concepts = ("dog",)
  c.data.n_train = 8
  c.train.update(dict(dict(batch_size=4, epochs=1, log_every=1, checkpoint_every=100),
                      **train_fields))
  return c


@pytest.fixture(scope="module")
def bundle():
  return context.load_model(_config())


@pytest.fixture
def no_compile(monkeypatch):
  """Fails the test if training or generation starts."""
  def refuse(*a, **k):
    raise AssertionError("the job compiled before it checked its input")
  monkeypatch.setattr(train, "precompute", refuse)
  monkeypatch.setattr(training, "generate_many", refuse)


# ---- registries

def test_a_toy_objective_is_one_registry_entry(bundle, tmp_path, monkeypatch):
  half_lang = lambda logprob, batch, group, groups: 0.5 * losses.lang(*logprob("pos"), group,
                                                                      groups)
  monkeypatch.setitem(losses.OBJECTIVES, "half_lang", losses.Objective(half_lang))
  for name in ("lang", "half_lang"):
    config = _config(objective=name)
    train_job.run(config, str(tmp_path / name), log=quiet, bundle=bundle)
    _, meta = load_sv(str(tmp_path / name / "svs" / "dog.safetensors"))
    assert meta["objective"] == name
  first = {name: json.loads(open(tmp_path / name / "metrics.jsonl").readline())["loss"]
           for name in ("lang", "half_lang")}
  assert first["half_lang"] == pytest.approx(0.5 * first["lang"], rel=1e-6)
  rows = main.plan(_config(objective="half_lang"), log=quiet)
  assert rows[0]["train_sequences"] == 2 * 4      # 2 steps x 4 examples x 1 pass


def test_sweeps_over_run_config_compile_one_step(bundle, tmp_path):
  before = train.train_step._cache_size()
  for k, (beta, lr, seed) in enumerate(((4.0, 0.04, 1), (2.0, 0.5, 2), (8.0, 0.01, 3))):
    config = _config()
    config.sv.beta, config.optim.lr_direction, config.seed = beta, lr, seed
    train_job.run(config, str(tmp_path / str(k)), log=quiet, bundle=bundle)
  assert train.train_step._cache_size() - before <= 1


# ---- bad input at the door

def test_unknown_method_key_names_it():
  config = demo_config.get_config("quick")
  config.method_overrides.prosv_lang.lr_factr = 1.0
  with pytest.raises(ValueError, match=r"^config.method_overrides.prosv_lang.lr_factr is not a "
                                       r"method key") as err:
    main.plan(config, log=quiet)
  assert "\n" not in str(err.value)


def test_unknown_job_names_the_jobs():
  config = _config()
  config.job = "trian"
  with pytest.raises(ValueError, match=r"^config.job='trian' is not a job; jobs: train") as err:
    main.run(config, "unused")
  assert "\n" not in str(err.value)


def test_layer_beyond_the_model_fails_before_any_compile(bundle, tmp_path, no_compile):
  config = _config()
  config.steer.layer = 99
  with pytest.raises(ValueError, match=r"^steer.layer=99 is beyond the model: .* has 5 blocks, "
                                       r"so use 0..4$"):
    train_job.run(config, str(tmp_path), log=quiet, bundle=bundle)


def test_cli_prints_one_line_for_bad_input(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO)
  out = subprocess.run([sys.executable, "-m", "steerjax.main", "--config=configs/base.py",
                        f"--workdir={tmp_path}", "--config.steer.layer=99"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1
  assert out.stderr.strip().splitlines() == [
      "error: steer.layer=99 is beyond the model: stories260K has 5 blocks, so use 0..4  "
      "(STEERJAX_TRACEBACK=1 shows where)"]


def test_a_runaway_learning_rate_warns(bundle, tmp_path):
  config = _config(epochs=4)
  config.optim.lr_direction = 1e30
  lines = []
  train_job.run(config, str(tmp_path), log=lines.append, bundle=bundle)
  warnings = [line for line in lines if "WARNING" in line]
  assert any("the residual stream's norm" in w for w in warnings), lines
  assert any("stopped learning" in w for w in warnings), lines


# ---- your own data

def _write_jsonl(path, rows):
  with open(path, "w") as f:
    for r in rows:
      f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


CONCEPT_ROWS = {
    "dogs": ("The dog ran to the park and barked.", "A dog wagged its tail."),
    "rain": ("Rain fell on the roof all day.", "The rain made big puddles."),
    "cake": ("She baked a big cake for the party.", "The cake was sweet."),
}


def _rows(neutral: bool):
  rows = []
  for k in range(4):
    for concept, (response, other) in CONCEPT_ROWS.items():
      row = {"concept": concept, "prompt": f"Once upon a time, story {k}.",
             "response": response if k % 2 else other}
      if neutral:
        row["neutral"] = "They went home and slept."
      rows.append(row)
  return rows


@pytest.mark.parametrize("objective,neutral", [("lang", False), ("simpo", True),
                                               ("simpo", False)])
def test_train_job_on_your_own_jsonl(bundle, tmp_path, objective, neutral):
  path = str(tmp_path / "concepts.jsonl")
  _write_jsonl(path, _rows(neutral))
  config = _config(objective=objective, batch_size=2, concepts_per_step=3)
  config.data.source, config.data.path = "file", path
  lines = []
  svs = train_job.run(config, str(tmp_path / "run"), log=lines.append, bundle=bundle)
  assert sorted(svs) == sorted(CONCEPT_ROWS)
  for concept in CONCEPT_ROWS:
    _, meta = load_sv(str(tmp_path / "run" / "svs" / f"{concept}.safetensors"))
    assert meta["concept"] == concept and meta["objective"] == objective
  assert any("3 concept(s) x 4 training pairs (file)" in line for line in lines)


def test_own_data_tokens_and_the_neutral_made_by_the_model(bundle, tmp_path):
  model, params, tok = bundle
  path = str(tmp_path / "concepts.jsonl")
  _write_jsonl(path, _rows(neutral=False))
  config = _config()
  config.data.source, config.data.path = "file", path
  from steerjax.data import sources
  concepts, ids = sources.training_concepts(config, tok)
  assert [c.name for c in concepts] == list(CONCEPT_ROWS) and ids == [0, 1, 2]
  assert concepts[0].prompts[0] == tok.encode("Once upon a time, story 0.", bos=True)
  assert concepts[0].responses[1] == tok.encode(CONCEPT_ROWS["dogs"][0])
  ctx = context.Context(config, model, params, tok)
  made = training.with_model_neutral(ctx, concepts[:1])[0]
  assert len(made.neutral) == 4 and all(len(y) <= len(r) for y, r in
                                        zip(made.neutral, made.responses))


@pytest.mark.parametrize("line,why", [
    ('{"concept": "dogs", "prompt": "Hi."}', "line 3: missing 'response'"),
    ('{"concept": "dogs", "prompt": "Hi.", "response": ""}', "line 3: 'response' must be a "
                                                             "non-empty string"),
    ('{"concept": "dogs", "prompt": "Hi.", "response": "Ok.", "reply": "x"}',
     "line 3: unknown key 'reply'"),
    ('{"concept": "dogs", "prompt": "Hi.", "response": "Ok."', "line 3: not valid JSON"),
])
def test_a_malformed_row_is_refused_naming_its_line(tmp_path, line, why, no_compile):
  path = str(tmp_path / "bad.jsonl")
  _write_jsonl(path, _rows(False)[:2] + [line])
  config = _config()
  config.data.source, config.data.path = "file", path
  with pytest.raises(ValueError, match=why):
    main.plan(config, log=quiet)


def test_parquet_rows_and_a_half_given_neutral(bundle, tmp_path):
  import pandas as pd
  rows = _rows(neutral=True)
  del rows[4]["neutral"]
  path = str(tmp_path / "concepts.parquet")
  pd.DataFrame(rows).to_parquet(path)
  config = _config()
  config.data.source, config.data.path = "file", path
  with pytest.raises(ValueError, match=r"row 4: concept 'rain' has a 'neutral' in some rows"):
    main.plan(config, log=quiet)
  pd.DataFrame(_rows(neutral=True)).drop(columns=["prompt"]).to_parquet(path)
  with pytest.raises(ValueError, match=r"lack \['prompt'\]"):
    main.plan(config, log=quiet)


def test_every_job_plans_its_example_from_the_command_line_without_a_model():
  script = ("import sys\n"
            "from steerjax.runtime import context\n"
            "def refuse(*a, **k):\n"
            "  raise SystemExit('plan loaded a model')\n"
            "context.load_model = refuse\n"
            "from absl import app\n"
            "from steerjax import main\n"
            "sys.argv = ['steerjax.main', '--plan'] + sys.argv[1:]\n"
            "app.run(main.main)\n")
  procs = {name: subprocess.Popen([sys.executable, "-c", script, *job.example.split()],
                                  cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for name, job in jobs.JOBS.items()}
  for name, proc in procs.items():
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"{name}: {stderr[-2000:]}"
    lines = [line for line in stdout.splitlines() if line.startswith("| total |")]
    assert len(lines) == 1, f"{name}: {stdout[-2000:]}"


def test_plan_counts_the_demo():
  rows = main.plan(demo_config.get_config(), log=quiet)
  by_method = {r["method"]: r for r in rows}
  assert by_method["prosv_lang"]["svs"] == 3 and by_method["unsteered"]["svs"] == 0
  assert by_method["fssv_lang_sampled"]["generations"] == 3 * 10 * 14
  assert methods.from_config(demo_config.get_config(), "prompting").kind == "prompting"


def test_an_alias_offline_says_to_set_the_data_root(monkeypatch):
  import huggingface_hub
  from steerjax.models import LoadError, load

  def offline(*a, **k):
    raise ConnectionError("no network")
  monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
  monkeypatch.delenv("STEERJAX_DATA")
  with pytest.raises(LoadError, match=r"STEERJAX_DATA is unset.*ConnectionError.*Set "
                                      r"STEERJAX_DATA to a folder that holds "
                                      r"stories260K/stories260K.bin"):
    load("stories260K")


def test_concepts_per_step_chosen_by_memory_trains_the_same_svs(bundle, tmp_path, monkeypatch):
  from steerjax import memory, methods as method_lib
  from steerjax.data import sources
  import numpy as np
  model, params, tok = bundle
  config = _config(concepts_per_step=1)
  config.data.concepts = ("dog", "cat", "sun", "tree")
  concepts, _ = sources.training_concepts(config, tok)
  m = method_lib.base_method(config)
  two = memory.step_bytes(model, params, m.spec, m.step, m.loop, concepts[:2])
  four = memory.step_bytes(model, params, m.spec, m.step, m.loop, concepts)
  assert four > two
  monkeypatch.setattr(memory, "device_bytes", lambda device=None: (two + four) // 2)
  config.train.memory_fraction = 1.0
  one_by_one = train_job.run(config, str(tmp_path / "c1"), log=quiet, bundle=bundle)
  config.train.concepts_per_step = 0
  lines = []
  auto = train_job.run(config, str(tmp_path / "auto"), log=lines.append, bundle=bundle)
  assert any("2 concept(s) per step (memory)" in line for line in lines), lines
  for name in config.data.concepts:
    for leaf in ("factor", "direction"):
      np.testing.assert_allclose(auto[name][leaf], one_by_one[name][leaf], rtol=1e-5,
                                 atol=1e-6)
