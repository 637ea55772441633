"""Sharding: meshes, logical-axis rules, sharded init and the sharded train step.

The 8-device checks run in one subprocess (`python tests/test_sharding.py`) with
`--xla_force_host_platform_device_count=8`, because jax in this pytest process is already
initialised with one CPU device. Each check prints `ok NAME` or `FAIL NAME: why`.
"""

import functools
import json
import os
import subprocess
import sys
import tempfile
import traceback

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from steerjax import sharding
from steerjax.models import Decoder, ModelConfig
from steerjax.steering import SteerSpec, init_sv, steer
from steerjax.train import initial_sv, train_concepts
from synthetic import synthetic_concepts, train_configs

CFG = ModelConfig(family="llama", vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                  head_dim=8, hidden_dim=64, max_seq_len=64, tie_embeddings=False, pad_id=0)
OPTS = dict(batch_size=4, epochs=2, max_steps=3, beta=1.0, lam=4.0, lr_factor=0.5,
            lr_direction=0.05, log_every=1, checkpoint_every=1000)
quiet = lambda *a, **k: None
N_DEVICES = 8


@functools.lru_cache(maxsize=None)
def _tiny():
  """(model, params) with params drawn by numpy: compiling a random init costs seconds."""
  model, rng = Decoder(CFG), np.random.default_rng(0)
  draw = lambda x: jnp.asarray(rng.normal(1.0 if x.ndim == 1 else 0.0, 0.05, x.shape), x.dtype)
  return model, jax.tree.map(draw, nn.unbox(sharding.abstract_params(model)))


# --------------------------------------------------------------------------- in this process

@pytest.mark.parametrize("shape,want", [((2, -1, 1, 1), (2, 4, 1, 1)), ((-1,), (8,)),
                                        ((1, 2, 2, 2), (1, 2, 2, 2))])
def test_mesh_shape_fills_in_minus_one(shape, want):
  assert sharding.resolve_shape(shape, 8) == want


@pytest.mark.parametrize("shape,match", [
    ((-1, -1), "at most one axis"), ((3, -1), "does not divide the 8 devices"),
    ((2, 2), "needs 4 devices but 8 are available"), ((0, 8), "sizes must be >= 1")])
def test_mesh_refuses_bad_shapes(shape, match):
  with pytest.raises(ValueError, match=match):
    sharding.resolve_shape(shape, 8)


def test_mesh_needs_one_size_per_axis():
  with pytest.raises(ValueError, match="2 sizes for 4 axes"):
    sharding.make_mesh((1, -1))
  with pytest.raises(ValueError, match="repeat a name"):
    sharding.make_mesh((1, -1), ("data", "data"))


def test_default_rules_give_the_documented_param_specs():
  mesh = sharding.make_mesh((1, 1, 1, 1))
  specs = jax.tree.map(lambda s: tuple(s.spec), sharding.param_shardings(Decoder(CFG), mesh),
                       is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding))
  attn, mlp = specs["layers_0"]["attn"], specs["layers_0"]["mlp"]
  assert attn["q"] == ("fsdp", "tensor", None)
  assert attn["k"] == ("fsdp", "tensor", None)
  assert attn["o"] == ("tensor", None, "fsdp")
  assert mlp["gate"] == ("fsdp", "tensor") and mlp["down"] == ("tensor", "fsdp")
  assert specs["embedding"] == ("tensor", "fsdp") and specs["lm_head"] == ("fsdp", "tensor")
  assert specs["layers_0"]["attn_norm"]["scale"] == ("fsdp",)


def test_a_logical_axis_without_a_rule_is_an_error():
  mesh = sharding.make_mesh((1, 1, 1, 1))
  rules = [r for r in sharding.DEFAULT_RULES if r[0] != "mlp"]
  with pytest.raises(ValueError, match=r"logical axes \['mlp'\] are covered by no sharding rule"):
    sharding.param_shardings(Decoder(CFG), mesh, rules)
  with pytest.raises(ValueError, match=r"names mesh axes \['model'\]"):
    sharding.param_shardings(Decoder(CFG), mesh, [("embed", "model")] + rules)


def test_steering_works_through_remat():
  tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, CFG.vocab_size)
  _, params = _tiny()
  sv = init_sv(jax.random.key(2), CFG.dim, 1.0, 4.0)

  def grads(remat):
    fn = steer(Decoder(CFG, remat=remat).apply, SteerSpec(0, "all"))
    loss = lambda sv: fn({"params": params}, sv, tokens, jnp.ones((2, 8), bool)).sum()
    return jax.jit(jax.grad(loss))(sv)
  plain, remat = grads(False), grads(True)
  assert float(jnp.abs(plain["direction"]).max()) > 0
  for leaf in ("factor", "direction"):
    np.testing.assert_allclose(remat[leaf], plain[leaf], rtol=1e-6, atol=1e-7)


def test_config_gives_no_mesh_by_default_and_builds_a_configured_one():
  from configs import base
  config = base.get_config()
  assert sharding.from_config(config) == (None, None)
  config.mesh.shape = (1, 1, 1, -1)
  mesh, rules = sharding.from_config(config)
  assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1, "concept": jax.device_count()}
  assert rules == sharding.normalize_rules(sharding.DEFAULT_RULES)


def _distributed_config(**fields):
  dist = dict(enabled=True, coordinator_address="", num_processes=0, process_id=-1)
  dist.update(fields)
  return ml_collections.ConfigDict({"mesh": {"distributed": dist}})


def test_distributed_init_passes_the_configured_coordinator(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  assert sharding.maybe_initialize_distributed(_distributed_config())
  assert sharding.maybe_initialize_distributed(
      _distributed_config(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=1))
  assert calls == [{}, dict(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=1)]
  assert not sharding.maybe_initialize_distributed(_distributed_config(enabled=False))
  with pytest.raises(ValueError, match="num_processes >= 1"):
    sharding.maybe_initialize_distributed(_distributed_config(coordinator_address="h:1"))


# --------------------------------------------------------------------------- 8 fake devices

@pytest.fixture(scope="module")
def device_checks():
  # LLVM optimisation is most of the compile time of these tiny programs; level 0 skips it.
  flags = f"--xla_force_host_platform_device_count={N_DEVICES} --xla_backend_optimization_level=0"
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
  out = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env, cwd=repo,
                       capture_output=True, text=True, timeout=300)
  results = {}
  for line in out.stdout.splitlines():
    status, _, rest = line.partition(" ")
    if status in ("ok", "FAIL"):
      name, _, why = rest.partition(": ")
      results[name] = why if status == "FAIL" else "ok"
  assert results, f"no results (exit {out.returncode}):\n{out.stdout[-3000:]}{out.stderr[-3000:]}"
  return results


@pytest.mark.parametrize("name", ["mesh_shapes", "param_placement", "init_sharded",
                                  "train_fsdp_tensor", "train_data_concept",
                                  "indivisible_param"])
def test_on_eight_devices(device_checks, name):
  assert device_checks.get(name) == "ok", device_checks.get(name, "check did not run")


_concepts = synthetic_concepts


def _metrics(path):
  """Per-step loss and gradient norms from a metrics file."""
  rows = [json.loads(line) for line in open(path)]
  return np.array([[r["loss"], r["grad_factor"], r["grad_direction"]] for r in rows])


def _train_one_and_sharded(mesh_shape, n_concepts, opts, workdir):
  """Per-step losses and SV updates (final minus initial SV), on one device and on a mesh."""
  model, params = _tiny()
  concepts, spec = _concepts(n_concepts), SteerSpec(0, "f2+l2")
  mesh = sharding.make_mesh(mesh_shape)
  out = {}
  for name, m in (("one", None), ("mesh", mesh)):
    metrics = os.path.join(workdir, f"{name}.jsonl")
    placed = params if m is None else sharding.shard_params(
        params, sharding.param_shardings(model, m, sharding.DEFAULT_RULES))
    out[name] = train_concepts(model, placed, spec, concepts, range(n_concepts),
                               *train_configs(**opts), os.path.join(workdir, name), log=quiet,
                               metrics_path=metrics, mesh=m, rules=sharding.DEFAULT_RULES)
    out[name + "_metrics"] = _metrics(metrics)
  start = initial_sv(*train_configs(**opts), CFG.dim, range(n_concepts))
  return out, {k: out["one"][k] - start[k] for k in start}, {k: out["mesh"][k] - start[k]
                                                            for k in start}


def _relative_error(got, want):
  return np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30)


def _assert_same_training(out, one, mesh):
  """Same loss and gradient norms at every step, same SV updates, within 1e-5 relative."""
  assert len(out["one_metrics"]) == OPTS["max_steps"]
  np.testing.assert_allclose(out["mesh_metrics"], out["one_metrics"], rtol=1e-5)
  assert np.abs(one["direction"]).max() > 0, "the directions did not move"
  for leaf in ("factor", "direction"):
    err = _relative_error(mesh[leaf], one[leaf])
    assert err <= 1e-5, f"{leaf} updates differ by {err:.2e} relative"


def check_mesh_shapes():
  mesh = sharding.make_mesh((2, -1, 1, 2))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 1, "concept": 2}, mesh.shape
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  try:
    sharding.make_mesh((3, -1, 1, 1))
  except ValueError as e:
    assert "does not divide the 8 devices" in str(e)
  else:
    raise AssertionError("a mesh of 3 x ? on 8 devices was accepted")


def check_param_placement():
  mesh = sharding.make_mesh((1, 4, 2, 1))
  model, params = _tiny()
  params = sharding.shard_params(params, sharding.param_shardings(model, mesh))
  q = params["layers_0"]["attn"]["q"]
  assert tuple(q.sharding.spec) == ("fsdp", "tensor", None), q.sharding.spec
  assert q.addressable_shards[0].data.shape == (32 // 4, 4 // 2, 8)
  assert params["lm_head"].addressable_shards[0].data.shape == (32 // 4, 64 // 2)


def check_init_sharded():
  mesh = sharding.make_mesh((1, 4, 2, 1))
  model = Decoder(CFG.replace(n_layers=1))  # a random init takes seconds to compile per layer
  plain = nn.unbox(jax.jit(lambda k: model.init(k, jnp.ones((1, 1), jnp.int32)))(
      jax.random.key(0))["params"])
  sharded = sharding.init_sharded(model, mesh, rng=jax.random.key(0))
  assert jax.tree.structure(sharded) == jax.tree.structure(plain)
  for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(plain)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  emb = sharded["embedding"]
  assert tuple(emb.sharding.spec) == ("tensor", "fsdp") and not emb.is_fully_replicated


def check_train_fsdp_tensor():
  with tempfile.TemporaryDirectory() as d:
    _assert_same_training(*_train_one_and_sharded((1, 4, 2, 1), 2, OPTS, d))


def check_train_data_concept():
  # A frozen factor: SimPO's factor gradient here is ~1e-7, so Adam's normalised update of it
  # is rounding noise; the direction and the loss carry the comparison.
  opts = dict(OPTS, objective="simpo", factor_mode="fixed", fixed_factor=4.0,
              prefix_cache="off")
  with tempfile.TemporaryDirectory() as d:
    _assert_same_training(*_train_one_and_sharded((2, 1, 1, 4), 4, opts, d))


def check_indivisible_param():
  mesh = sharding.make_mesh((1, 1, 8, 1))  # 8-way tensor split of 4 heads
  try:
    sharding.param_shardings(Decoder(CFG), mesh)
  except ValueError as e:
    assert "does not divide it" in str(e) and "layers_0/attn/k" in str(e), e
  else:
    raise AssertionError("an 8-way split of 4 heads was accepted")


def run_checks():
  assert jax.device_count() == N_DEVICES, jax.devices()
  for name, fn in list(globals().items()):
    if name.startswith("check_"):
      try:
        fn()
        print(f"ok {name[6:]}", flush=True)
      except Exception as e:  # report every check, not just the first failure
        why = f"{type(e).__name__}: {e}".replace("\n", " ")[:2000]
        print(f"FAIL {name[6:]}: {why}", flush=True)
        traceback.print_exc()


if __name__ == "__main__":
  run_checks()
