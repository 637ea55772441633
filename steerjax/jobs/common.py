"""What every job sets up once (model, mesh, sharded params) and the pieces they share:
training a method's SVs, the model's neutral responses, cost plans."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Callable, Dict, List, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from steerjax import checkpoint, losses, methods, sharding
from steerjax.data import sources
from steerjax.data.batching import ConceptData
from steerjax.generate import generate_many
from steerjax.models import load, load_tokenizer
from steerjax.train import train_concepts

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
END_OF_TURN = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>")


@dataclasses.dataclass
class Context:
  """A job's model, tokenizer and mesh, set up once and shared by all its methods."""
  config: object
  model: object
  params: object
  tok: object
  mesh: object = None
  rules: object = None
  log: Callable = print
  memo: dict = dataclasses.field(default_factory=dict)   # what the job computes once

  @property
  def bundle(self):
    return self.model, self.params, self.tok


def check_config(config):
  """Errors found from the config alone: raised before any model is loaded."""
  if config.model.dtype not in DTYPES:
    raise ValueError(f"model.dtype={config.model.dtype!r}; use one of {sorted(DTYPES)}")
  sources.check(config)
  methods.base_method(config)


def load_model(config):
  """(model, params, tokenizer) from `config.model` and the data root."""
  root = config.data_root or None
  model, params = load(config.model.path, DTYPES[config.model.dtype], data_root=root)
  if config.model.get("remat"):
    model = model.clone(remat=True)
  if config.model.get("vocab_chunk"):
    model = model.clone(vocab_chunk=int(config.model.vocab_chunk))
  tok = load_tokenizer(config.model.tokenizer or config.model.path, data_root=root,
                       thinking=bool(config.model.get("thinking", False)))
  return model, params, tok


def setup(config, log=print, bundle=None) -> Context:
  """Load the model (unless `bundle` is given), check the config against it, build the mesh
  and place the frozen params on it once."""
  check_config(config)
  mesh, rules = sharding.from_config(config)   # (None, None) unless config.mesh.shape is set
  model, params, tok = bundle or load_model(config)
  methods.check_model(config, model.cfg)
  if mesh is not None:
    params = sharding.shard_params(params, sharding.param_shardings(model, mesh, rules))
  return Context(config, model, params, tok, mesh, rules, log)


def stop_ids(model, tok) -> tuple:
  """The model's stop ids plus the tokenizer's EOS and end-of-turn token, if it has one."""
  ids = set(model.cfg.stop_ids) | ({tok.eos_id} if tok.eos_id is not None else set())
  if tok.kind == "hf":
    for marker in END_OF_TURN:
      found = tok.encode(marker)
      if len(found) == 1 and found[0] != getattr(tok._tok, "unk_token_id", None):
        ids.add(found[0])
  return tuple(sorted(ids))


def with_model_neutral(ctx: Context, concepts: Sequence[ConceptData],
                       batch_size: int = 32) -> List[ConceptData]:
  """`concepts` with a neutral y wherever one is missing: the unsteered model's greedy
  continuation of each x, as long as its y_c at most (EOS not kept). Made once per concept
  and job, in fixed-size batches so the compiled programs are reused."""
  out = []
  for c in concepts:
    if c.neutral is None:
      key = ("neutral", c.name, tuple(map(tuple, c.prompts)), tuple(map(len, c.responses)))
      if key not in ctx.memo:
        ctx.memo[key] = generate_many(
            ctx.model, ctx.params, c.prompts, max_new_tokens=[len(y) for y in c.responses],
            batch_size=batch_size, fixed_batch=True, temperature=0.0)
      c = dataclasses.replace(c, neutral=ctx.memo[key])
    out.append(c)
  return out


def sv_filename(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".safetensors"


def sv_meta(ctx: Context, method, concept: str, factor) -> dict:
  spec = method.spec
  return {"model": ctx.config.model.path, "model_fingerprint": ctx.model.cfg.fingerprint(),
          "width": ctx.model.cfg.dim, "layer": spec.layer, "op": spec.op,
          "positions": spec.positions, "concept": concept, "factor": float(np.mean(factor)),
          "objective": method.step.objective, "factor_mode": method.step.factor_mode,
          "hyperparameters": {**dataclasses.asdict(method.step), **dataclasses.asdict(method.run)}}


def _tensorboard(config, workdir):
  if not config.train.tensorboard:
    return None
  try:
    from tensorboardX import SummaryWriter
  except ImportError as e:
    raise ImportError("config.train.tensorboard=True needs tensorboardX: "
                      "pip install 'steerjax[tensorboard]'") from e
  return SummaryWriter(os.path.join(workdir, "tensorboard"))


def write_config(config, workdir: str):
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2) if hasattr(config, "to_json_best_effort")
            else json.dumps(dict(config), indent=2, default=str))


def train_svs(ctx: Context, method, concepts: Sequence[ConceptData], workdir: str,
              concept_ids: Optional[Sequence[int]] = None, tag: str = "",
              row_methods: Optional[Sequence] = None) -> Dict[str, dict]:
  """Train one SV per concept; `train.concepts_per_step` concepts share each jitted step.

  SVs go to `workdir/svs/<concept>.safetensors`, metrics to `workdir/metrics.jsonl`.
  Finished concepts are skipped on a rerun and a killed group resumes from its checkpoint.
  `concept_ids` (one global id per concept) seed each SV's init and name the group folders,
  so a run over a different concept range never reuses another group's checkpoint.
  `row_methods` (one per concept, sharing `method`'s spec and step) give each row its own
  init sizes and rates, as a grid search stacks its points; groups are then named by
  their rows. Returns {concept: {"factor", "direction"}}.
  """
  config, log = ctx.config, ctx.log
  os.makedirs(workdir, exist_ok=True)
  write_config(config, workdir)
  per_step = config.train.concepts_per_step
  if per_step <= 0:   # as many as the device holds
    from steerjax import memory
    fraction = config.train.get("memory_fraction", 0.9)
    per_step = memory.pick_concepts_per_step(
        ctx.model, ctx.params, method.spec, method.step, method.run, concepts,
        budget=int(fraction * memory.device_bytes()),
        most=config.train.get("max_concepts_per_step", 64), log=log)
    log(f"{tag}{per_step} concept(s) per step (memory)")
  writer = _tensorboard(config, workdir)
  ids = list(range(len(concepts))) if concept_ids is None else [int(i) for i in concept_ids]
  if len(ids) != len(concepts):
    raise ValueError(f"{len(ids)} concept_ids for {len(concepts)} concepts")
  svs = {}
  for start in range(0, len(concepts), per_step):
    group = list(concepts[start:start + per_step])
    group_ids = ids[start:start + len(group)]
    rows = None if row_methods is None else list(row_methods[start:start + len(group)])
    folder = (f"{start:04d}" if concept_ids is None or rows is not None
              else f"{group_ids[0]:04d}-{group_ids[-1]:04d}")
    paths = [os.path.join(workdir, "svs", sv_filename(c.name)) for c in group]
    if all(os.path.exists(p) for p in paths):
      log(f"{tag}skipping {[c.name for c in group]}: SVs already in {workdir}/svs")
      for c, p in zip(group, paths):
        svs[c.name] = checkpoint.load_sv(p, ctx.model.cfg)[0]
      continue
    label = (f"{tag}[{', '.join(c.name for c in group)}] " if rows is None
             else f"{tag}rows {start}..{start + len(group) - 1} ")
    stacked = train_concepts(
        ctx.model, ctx.params, method.spec, group, group_ids, method.step, method.run,
        os.path.join(workdir, "groups", folder), log=log,
        metrics_path=os.path.join(workdir, "metrics.jsonl"), tag=label, writer=writer,
        mesh=ctx.mesh, rules=ctx.rules, row_runs=None if rows is None else [m.run for m in rows])
    for k, (c, p) in enumerate(zip(group, paths)):
      sv = {"factor": stacked["factor"][k], "direction": stacked["direction"][k]}
      checkpoint.save_sv(p, sv, sv_meta(ctx, rows[k] if rows else method, c.name, sv["factor"]))
      svs[c.name] = sv
  if writer is not None:
    writer.close()
  log(f"{tag}{len(svs)} SV(s) in {os.path.join(workdir, 'svs')}")
  return svs


def stacked_sv(names: Sequence[str], svs: Dict[str, dict], grid: Optional[tuple],
               capacity: int = 0):
  """(stacked SV with one row per (concept, factor), {(name, factor): row}) for steering
  many concepts in one generation batch; grid None keeps each SV's learned factor. Zero
  rows fill it up to `capacity`, so a short last chunk reuses the compiled programs."""
  factors, directions, index = [], [], {}
  for name in names:
    for g in (grid or (None,)):
      index[(name, g)] = len(factors)
      factors.append(float(np.asarray(svs[name]["factor"])) if g is None else g)
      directions.append(np.asarray(svs[name]["direction"], np.float32))
  fill = max(0, capacity - len(factors))
  factors += [0.0] * fill
  directions += [np.zeros_like(directions[0])] * fill
  return {"factor": jnp.asarray(factors, jnp.float32),
          "direction": jnp.asarray(np.stack(directions), jnp.float32)}, index


# --------------------------------------------------------------------------- cost plans

PLAN_COLUMNS = ("method", "svs", "steps_per_sv", "train_sequences", "train_tokens",
                "generations", "new_tokens", "judge_calls")


def method_cost(method, n_concepts: int, n_train: int, tokens_per_sequence: int,
                n_eval: int = 0, new_tokens: int = 0, judged: bool = True) -> dict:
  """Expected work of one method over `n_concepts` concepts: SVs, steps, sequences and
  tokens through the model in training (upper bounds), generations and judge calls."""
  row = {"method": method.name, "svs": 0, "steps_per_sv": 0, "train_sequences": 0,
         "train_tokens": 0}
  if method.trained:
    steps = (n_train // method.step.batch_size) * method.step.epochs
    if method.run.max_steps:
      steps = min(steps, method.run.max_steps)
    seqs = steps * method.step.batch_size * losses.objective(method.step.objective).passes
    row.update(svs=n_concepts, steps_per_sv=steps, train_sequences=n_concepts * seqs,
               train_tokens=n_concepts * seqs * tokens_per_sequence)
  gens = n_concepts * n_eval * len(method.grid or (None,))
  row.update(generations=gens, new_tokens=gens * new_tokens,
             judge_calls=(3 * gens + (n_concepts if method.kind == "prompting" else 0))
             if judged else 0)
  return row


def total_row(rows: List[dict]) -> dict:
  return dict({k: sum(r.get(k, 0) for r in rows)
               for k in ("svs", "train_sequences", "train_tokens", "generations", "new_tokens",
                         "judge_calls")}, method="total")
