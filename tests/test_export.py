"""SVs that travel: lm-eval's own `steered` model scores an exported FSSV as steerjax does,
the control vector reads back as llama.cpp expects, lossy and wrong-width exports are
refused, every format round-trips to the same edit, AxBench and pyvene weights import, and
SV folders go to a (local stand-in) hub and come back by name."""

import http.server
import json
import os
import shutil
import threading

import gguf
import huggingface_hub
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from lm_eval.api.instance import Instance
from lm_eval.models.hf_steered import SteeredModel
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors

import hf_tiny
from steerjax import export
from steerjax.checkpoint import load_sv, save_sv
from steerjax.eval.lm_eval_model import SteerjaxLM
from steerjax.export.__main__ import run as cli
from steerjax.models import load, load_tokenizer
from steerjax.steering import SteerSpec, positions_mask, steer

PAIRS = [("Once upon a time", " there was a cat."), ("The dog", " ran to the park."),
         ("", "Hello world")]


def _char_tokenizer(directory):
  """A character-level tokenizer that prepends <s>, saved beside the tiny checkpoint."""
  vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
  for code in range(32, 127):
    vocab[chr(code)] = len(vocab)
  assert len(vocab) <= hf_tiny.VOCAB
  backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
  backend.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                         special_tokens=[("<s>", 1)])
  transformers.PreTrainedTokenizerFast(
      tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
      unk_token="<unk>").save_pretrained(directory)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """(directory, model, params, tokenizer) of a tiny random Llama with a tokenizer."""
  directory = str(tmp_path_factory.mktemp("tiny_llama"))
  hf_tiny.build("llama_mha", directory, seed=3)
  _char_tokenizer(directory)
  model, params = load(directory)
  return directory, model, params, load_tokenizer(directory)


def _sv_file(path, model, layer, positions="all", op="add", seed=0, factor=2.5):
  rng = np.random.default_rng(seed)
  direction = rng.normal(size=model.cfg.dim).astype(np.float32)
  sv = {"factor": np.float32(factor), "direction": direction}
  meta = {"model": "tiny", "model_fingerprint": model.cfg.fingerprint(), "width": model.cfg.dim,
          "layer": layer, "op": op, "positions": positions, "objective": "lang",
          "factor": factor, "concept": "dog"}
  save_sv(str(path), sv, meta)
  return str(path)


def _requests():
  return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(PAIRS)]


@pytest.fixture(scope="module")
def steered_logits(tiny):
  """(sv, meta) -> logits of the tiny model on fixed prompts, steered as the header says."""
  _, model, params, _ = tiny
  rng = np.random.default_rng(7)
  tokens = jnp.asarray(rng.integers(4, 99, size=(2, 12)), jnp.int32)
  prompt = jnp.asarray(np.arange(12)[None, :] < np.array([[7], [9]]))
  valid = jnp.ones_like(prompt)

  def run(sv, meta):
    spec = SteerSpec(int(meta["layer"]), meta["positions"], meta["op"])
    mask = positions_mask(spec.positions, prompt, valid)
    sv = {"factor": jnp.float32(np.asarray(sv["factor"])),
          "direction": jnp.asarray(sv["direction"])}
    return np.asarray(steer(model.apply, spec)({"params": params}, sv, tokens, mask))
  return run


# ---------------------------------------------------------------------------- lm-eval parity

@pytest.mark.parametrize("layer,op", [(0, "add"), (1, "add"), (1, "clamp")])
def test_lm_eval_steered_model_scores_an_exported_fssv_as_steerjax(tiny, tmp_path, layer, op):
  directory, model, params, tok = tiny
  sv_path = _sv_file(tmp_path / "sv.safetensors", model, layer, op=op, seed=layer)
  cli(["lmeval", sv_path, "-o", str(tmp_path / "sv.pt"), "--model", directory], log=lambda _: 0)
  theirs = SteeredModel(pretrained=directory, steer_path=str(tmp_path / "sv.pt"), device="cpu",
                        batch_size=2, dtype="float32").loglikelihood(_requests())
  bundle = (model, params, tok)
  ours = SteerjaxLM(bundle=bundle, sv=sv_path, batch_size=2).loglikelihood(_requests())
  plain = SteerjaxLM(bundle=bundle, batch_size=2).loglikelihood(_requests())
  for (a, _), (b, _), (c, _) in zip(theirs, ours, plain):
    assert a == pytest.approx(b, abs=1e-4)
    assert abs(b - c) > 0.05          # the SV does change the scores


# ---------------------------------------------------------------------------- llama.cpp

def test_control_vector_reads_back_as_llama_cpp_expects(tiny, tmp_path):
  _, model, _, _ = tiny
  sv_path = _sv_file(tmp_path / "dog.safetensors", model, layer=1)
  sv, meta = load_sv(sv_path)
  out = str(tmp_path / "dog.gguf")
  cli(["llamacpp", sv_path, "-o", out], log=lambda _: 0)
  reader = gguf.GGUFReader(out)
  fields = {k: f.contents() for k, f in reader.fields.items()}
  assert fields["general.architecture"] == "controlvector"
  assert fields["controlvector.model_hint"] == "tiny"
  assert fields["controlvector.layer_count"] == 1
  assert fields["steerjax.positions"] == "all" and fields["steerjax.lossy"] is False
  assert json.loads(fields["steerjax.header"])["concept"] == "dog"
  (tensor,) = reader.tensors
  assert tensor.name == "direction.1"          # added to the output of block 1, as ours
  assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
  assert list(tensor.shape) == [model.cfg.dim]
  np.testing.assert_allclose(tensor.data, 2.5 * sv["direction"], rtol=1e-6)


def test_lossy_exports_need_the_flag_and_say_so(tiny, tmp_path):
  _, model, _, _ = tiny
  prosv = _sv_file(tmp_path / "prosv.safetensors", model, layer=1, positions="f2+l2")
  for command in ("llamacpp", "lmeval"):
    with pytest.raises(ValueError, match="positions='f2\\+l2'.*--lossy"):
      cli([command, prosv, "-o", str(tmp_path / f"x.{command}")])
  out = str(tmp_path / "prosv.gguf")
  cli(["llamacpp", prosv, "-o", out, "--lossy"], log=lambda _: 0)
  fields = {k: f.contents() for k, f in gguf.GGUFReader(out).fields.items()}
  assert fields["steerjax.lossy"] is True and fields["steerjax.positions"] == "f2+l2"
  _, meta = export.from_control_vector(out)
  assert meta["positions"] == "all" and meta["trained_positions"] == "f2+l2"
  with pytest.raises(ValueError, match="layer 0"):
    cli(["llamacpp", _sv_file(tmp_path / "l0.safetensors", model, layer=0), "-o", out])
  with pytest.raises(ValueError, match="op='clamp'"):
    cli(["llamacpp", _sv_file(tmp_path / "c.safetensors", model, 1, op="clamp"), "-o", out])
  with pytest.raises(ValueError, match="op='null'"):
    cli(["lmeval", _sv_file(tmp_path / "n.safetensors", model, 1, op="null"), "-o", out])


def test_wrong_width_is_refused_at_export_and_import(tiny, tmp_path):
  directory, model, _, _ = tiny
  sv, meta = load_sv(_sv_file(tmp_path / "sv.safetensors", model, layer=1))
  narrow = model.cfg.replace(dim=48)
  for write, out in ((export.to_control_vector, "a.gguf"), (export.to_lm_eval, "a.pt")):
    with pytest.raises(ValueError, match="SV width 64 does not match the model width 48"):
      write(sv, meta, str(tmp_path / out), model_cfg=narrow)
  export.to_control_vector(sv, meta, str(tmp_path / "a.gguf"))
  export.to_lm_eval(sv, meta, str(tmp_path / "a.pt"))
  with pytest.raises(ValueError, match="width 64 does not match the model width 48"):
    export.from_control_vector(str(tmp_path / "a.gguf"), model_cfg=narrow)
  with pytest.raises(ValueError, match="width 64 does not match the model width 48"):
    export.from_lm_eval(str(tmp_path / "a.pt"), model_cfg=narrow)
  axbench = _axbench_dir(tmp_path / "ax", width=32)
  with pytest.raises(ValueError, match="width 32 does not match the model width 64"):
    cli(["import", "axbench", axbench, "-o", str(tmp_path / "x.safetensors"),
         "--model", directory])
  with pytest.raises(ValueError, match="direction width 64 does not match the header's width 32"):
    export.to_control_vector(sv, dict(meta, width=32), str(tmp_path / "b.gguf"))


# ---------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("fmt,layer,positions,op", [
    ("llamacpp", 1, "all", "add"), ("easysteer", 1, "f2+l2", "add"),
    ("easysteer", 0, "all-bos", "add"), ("easysteer", 1, "prompt", "add"),
    ("lmeval", 0, "all", "add"), ("lmeval", 1, "all", "clamp")])
def test_round_trip_gives_the_same_edit(tiny, tmp_path, steered_logits, fmt, layer, positions,
                                        op):
  directory, model, _, _ = tiny
  sv_path = _sv_file(tmp_path / "sv.safetensors", model, layer, positions=positions, op=op,
                     seed=5)
  sv, meta = load_sv(sv_path)
  out = str(tmp_path / ("sv" if fmt == "easysteer" else f"sv.{fmt}"))
  cli([fmt, sv_path, "-o", out], log=lambda _: 0)
  back = str(tmp_path / "back.safetensors")
  cli(["import", fmt, out + ".json" if fmt == "easysteer" else out, "-o", back,
       "--model", directory], log=lambda _: 0)
  sv2, meta2 = load_sv(back, model.cfg)
  assert (meta2["layer"], meta2["positions"], meta2["op"]) == (layer, positions, op)
  assert meta2["source"]["format"]
  unsteered = steered_logits(dict(sv, factor=np.float32(0.0)), dict(meta, op="add"))
  want = steered_logits(sv, meta)
  assert np.abs(want - unsteered).max() > 0.1
  np.testing.assert_allclose(steered_logits(sv2, meta2), want, atol=1e-5)


# ---------------------------------------------------------------------------- AxBench, pyvene

CONCEPTS = ["dogs", "the color red", "legal terms"]


def _axbench_dir(folder, width=64, layer=1, method="PreferenceVector", seed=11):
  """An AxBench `train/` folder: config.json, metadata.jsonl, <Method>_{weight,bias}.pt."""
  train = os.path.join(str(folder), "train")
  os.makedirs(train, exist_ok=True)
  gen = torch.Generator().manual_seed(seed)
  torch.save(torch.randn(len(CONCEPTS), width, generator=gen),
             os.path.join(train, f"{method}_weight.pt"))
  torch.save(torch.tensor([0.5, -0.25, 1.0]), os.path.join(train, f"{method}_bias.pt"))
  with open(os.path.join(train, "config.json"), "w") as f:
    json.dump({"model_name": "google/gemma-2-2b-it", "layer": layer, "component": "res"}, f)
  with open(os.path.join(train, "metadata.jsonl"), "w") as f:
    for i, name in enumerate(CONCEPTS):
      f.write(json.dumps({"concept_id": i, "concept": name, "ref": ""}) + "\n")
  return str(folder)


def test_axbench_weights_import_and_steer_like_the_equivalent_sv(tiny, tmp_path, steered_logits):
  directory, model, _, _ = tiny
  folder = _axbench_dir(tmp_path / "run")
  weight = torch.load(os.path.join(folder, "train", "PreferenceVector_weight.pt")).numpy()
  cli(["import", "axbench", folder, "-o", str(tmp_path / "svs"), "--concept", "all",
       "--factor", "4", "--model", directory], log=lambda _: 0)
  assert sorted(os.listdir(tmp_path / "svs")) == [f"000{i}.safetensors" for i in range(3)]
  sv, meta = load_sv(str(tmp_path / "svs" / "0001.safetensors"), model.cfg)
  assert meta["concept"] == "the color red"
  assert (meta["layer"], meta["positions"], meta["op"]) == (1, "all-bos", "add")
  assert meta["factor"] == 4.0
  assert meta["source"]["format"] == "AxBench" and meta["source"]["concept_id"] == 1
  equivalent = {"factor": np.float32(4.0), "direction": weight[1]}
  np.testing.assert_array_equal(steered_logits(sv, meta), steered_logits(equivalent, meta))
  by_name, name_meta = export.from_axbench(folder, "legal terms", with_bias=True, factor=2.0)
  assert name_meta["factor"] == 3.0          # RePS adds the concept's bias to the factor
  np.testing.assert_array_equal(by_name["direction"], weight[2])
  with pytest.raises(ValueError, match="no concept named 'cats'"):
    export.from_axbench(folder, "cats")


def _pyvene_dir(folder, state, layer=2, component="block_input", kind="AdditionIntervention"):
  key = f"layer_{layer}_comp_{component}_unit_pos_nunit_1#0"
  os.makedirs(folder, exist_ok=True)
  torch.save(state, os.path.join(folder, f"intkey_{key}.bin"))
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump({"representations": [[layer, component, "pos", 1]], "sorted_keys": [key],
               "intervention_types": [f"<class 'pyvene.models.interventions.{kind}'>"]}, f)
  return str(folder)


def test_pyvene_additive_intervention_imports(tiny, tmp_path, steered_logits):
  directory, model, _, _ = tiny
  vector = torch.randn(model.cfg.dim, generator=torch.Generator().manual_seed(2))
  folder = _pyvene_dir(tmp_path / "reft", {"source_representation": vector})
  cli(["import", "pyvene", folder, "-o", str(tmp_path / "sv.safetensors"), "--factor", "3",
       "--model", directory], log=lambda _: 0)
  sv, meta = load_sv(str(tmp_path / "sv.safetensors"), model.cfg)
  assert meta["layer"] == 1       # the input of block 2 is the output of block 1
  equivalent = {"factor": np.float32(3.0), "direction": vector.numpy()}
  np.testing.assert_array_equal(steered_logits(sv, meta), steered_logits(equivalent, meta))
  loreft = _pyvene_dir(tmp_path / "loreft", {"rotate_layer.weight": torch.zeros(64, 4),
                                             "learned_source.weight": torch.zeros(4, 64)},
                       component="block_output", kind="LoreftIntervention")
  with pytest.raises(ValueError, match="LoreftIntervention, not an additive intervention"):
    export.from_pyvene(loreft)


# ---------------------------------------------------------------------------- hub

class FakeHub:
  """Stands in for huggingface_hub.HfApi: repos are folders under `root`."""

  def __init__(self, root):
    self.root, self.calls = root, []

  def _repo(self, repo_id, repo_type):
    return os.path.join(self.root, "datasets" if repo_type == "dataset" else "", repo_id)

  def create_repo(self, repo_id, repo_type=None, private=None, exist_ok=False):
    self.calls.append(("create_repo", repo_id, repo_type))
    os.makedirs(self._repo(repo_id, repo_type), exist_ok=exist_ok)
    return f"http://hub.local/{repo_id}"

  def upload_folder(self, repo_id, folder_path, repo_type=None, commit_message=""):
    self.calls.append(("upload_folder", repo_id, repo_type, sorted(os.listdir(folder_path))))
    shutil.copytree(folder_path, self._repo(repo_id, repo_type), dirs_exist_ok=True)


def _serve(root):
  """A loopback server answering the hub's file URLs (/[datasets/]org/repo/resolve/rev/file)."""

  class Handler(http.server.BaseHTTPRequestHandler):
    def _file(self):
      head, _, rest = self.path.partition("/resolve/")
      return os.path.join(root, head.strip("/"), rest.split("/", 1)[1])

    def do_HEAD(self, body=False):
      path = self._file()
      if not os.path.isfile(path):
        self.send_response(404)
        self.send_header("X-Error-Code", "EntryNotFound")
        self.end_headers()
        return
      data = open(path, "rb").read()
      self.send_response(200)
      self.send_header("X-Repo-Commit", "a" * 40)
      self.send_header("ETag", f'"{abs(hash(data)):x}"')
      self.send_header("Content-Length", str(len(data)))
      self.end_headers()
      if body:
        self.wfile.write(data)

    def do_GET(self):
      self.do_HEAD(body=True)

    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  return server


def test_hub_push_and_pull_against_a_local_stand_in(tiny, tmp_path, monkeypatch):
  _, model, _, _ = tiny
  folder = tmp_path / "svs"
  for i, concept in enumerate(("dog", "cat")):
    _sv_file(folder / f"{concept}.safetensors", model, layer=1, seed=i)
  results = tmp_path / "results.json"
  results.write_text(json.dumps([{"method": "fssv_lang", "concept_id": 0, "concept": "dog",
                                  "factor": 2.5, "concept_score": 1.5, "overall": 1.25}]))
  fake = FakeHub(str(tmp_path / "hub"))
  export.push(str(folder), "org/svs", repo_type="dataset", results=str(results), api=fake,
              log=lambda _: 0)
  assert fake.calls == [("create_repo", "org/svs", "dataset"),
                        ("upload_folder", "org/svs", "dataset",
                         ["README.md", "cat.safetensors", "dog.safetensors", "results.json"])]
  card = (tmp_path / "hub" / "datasets" / "org" / "svs" / "README.md").read_text()
  assert card.startswith("---\nlibrary_name: steerjax\n")
  assert "| dog.safetensors | dog | tiny | 1 | all | add | lang | 2.5 | 64 |" in card
  assert "| fssv_lang | 0 | dog | 2.5 | 1.5 | 1.25 |" in card
  assert 'load_sv("datasets/org/svs/cat")' in card

  class Offline(FakeHub):
    def create_repo(self, *args, **kwargs):
      raise RuntimeError("Name or service not known\nmore detail")

  with pytest.raises(ConnectionError, match="^pushing to the hub model repo org/svs failed "
                     r"\(RuntimeError: Name or service not known\); check") as err:
    export.push(str(folder), "org/svs", api=Offline(str(tmp_path / "hub")), log=lambda _: 0)
  assert "\n" not in str(err.value)

  server = _serve(str(tmp_path / "hub"))
  monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
  try:
    pulled, meta = load_sv("datasets/org/svs/dog", model.cfg)
  finally:
    server.shutdown()
    server.server_close()
  local, _ = load_sv(str(folder / "dog.safetensors"))
  np.testing.assert_array_equal(pulled["direction"], local["direction"])
  assert meta["concept"] == "dog"
  # Offline (HF_HUB_OFFLINE=1; unset, the client first retries for about 20 s), a hub
  # name that is not cached fails with one line naming what to do.
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
  with pytest.raises(FileNotFoundError) as err:
    load_sv("org/svs/dog")
  assert "\n" not in str(err.value)
  assert "downloading dog.safetensors from the hub model repo org/svs failed" in str(err.value)


def test_a_missing_local_sv_is_not_looked_up_on_the_hub(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  os.makedirs("runs/x/svs")
  with pytest.raises(FileNotFoundError, match="no SV file at runs/x/svs/dog.safetensors"):
    load_sv("runs/x/svs/dog.safetensors")
