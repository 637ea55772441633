"""The one method vocabulary: what a table row of the paper is, built from config.

A config names its methods in `config.methods` and describes each in
`config.method_overrides.<name>`: keys that override the shared config groups for that
method (`OVERRIDES`), plus `kind`, `grid` and `neutral`. A method with `positions` is
trained; one without is `prompting` or `unsteered`. Unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from steerjax import losses
from steerjax.steering import SteerSpec
from steerjax.train_config import LoopConfig, StepConfig, factor_mode

METHOD_KINDS = ("trained", "prompting", "unsteered")
NEUTRAL_SOURCES = ("model", "judge", "released")   # where SimPO / RePS get their y
# method key -> (config group, field) it overrides
OVERRIDES = {
    "positions": ("steer", "positions"), "objective": ("train", "objective"),
    "batch_size": ("train", "batch_size"), "epochs": ("train", "epochs"),
    "factor_mode": ("sv", "factor_mode"), "beta": ("sv", "beta"), "lam": ("sv", "lam"),
    "init": ("sv", "init"), "fixed_factor": ("sv", "fixed_factor"),
    "factor_set": ("sv", "factor_set"), "lr_factor": ("optim", "lr_factor"),
    "lr_direction": ("optim", "lr_direction"), "ref_width": ("optim", "ref_width"),
    "grad_accum_steps": ("train", "grad_accum_steps"),
    "schedule_steps": ("train", "schedule_steps"), "param_dtype": ("sv", "param_dtype"),
    "train_positions": ("steer", "train_positions"), "bias": ("sv", "bias"),
    "dropout": ("sv", "dropout"),
}
OTHER_KEYS = {
    "kind": "trained | prompting | unsteered (default: trained with positions, else the name)",
    "grid": "factors searched at inference (picked on ids 0..4, scored on 5..9)",
    "neutral": "where SimPO's / RePS's neutral y comes from (default: data.neutral)",
    "scale": "max_act: the factor is in units of the concept's max activation h.v on "
             "AxBench's latent eval data (AxBench's steering vector); '' = none",
}
SCALES = ("", "max_act")


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  kind: str                          # trained | prompting | unsteered
  spec: Optional[SteerSpec] = None   # where and how a trained method steers
  step: Optional[StepConfig] = None  # what its compiled train step depends on
  loop: Optional[LoopConfig] = None  # its init, rates and loop
  grid: Optional[tuple] = None       # factors searched at inference; None: the learned one
  neutral: str = "model"             # source of the neutral y when the objective needs one
  scale: str = ""                    # max_act: factors in units of the max activation

  @property
  def trained(self) -> bool:
    return self.kind == "trained"


def value(config, over, key):
  """A method key's value: the method's override, else its config group's field."""
  group, field = OVERRIDES[key]
  if key in over:
    return over[key]
  return config[group][field]


def step_config(config, over=None) -> StepConfig:
  over = over or {}
  get = lambda key: value(config, over, key)
  o = config.optim
  return StepConfig(objective=get("objective"), factor_mode=get("factor_mode"),
                    factor_set=tuple(get("factor_set")), batch_size=get("batch_size"),
                    epochs=get("epochs"), clip_direction=o.clip_direction,
                    clip_factor=o.clip_factor, schedule=o.schedule,
                    warmup_steps=o.warmup_steps, weight_decay=o.weight_decay,
                    grad_accum_steps=get("grad_accum_steps"),
                    schedule_steps=get("schedule_steps"), param_dtype=get("param_dtype"),
                    bias=bool(get("bias")), dropout=float(get("dropout")))


def loop_config(config, over=None) -> LoopConfig:
  over = over or {}
  get = lambda key: value(config, over, key)
  t = config.train
  return LoopConfig(beta=float(get("beta")), lam=float(get("lam")), direction_init=get("init"),
                   fixed_factor=float(get("fixed_factor")), lr_factor=float(get("lr_factor")),
                   lr_direction=float(get("lr_direction")), ref_width=int(get("ref_width")),
                   seed=config.seed, max_steps=t.max_steps, prefix_cache=t.prefix_cache,
                   log_every=t.log_every, checkpoint_every=t.checkpoint_every)


def steer_spec(config, over=None) -> SteerSpec:
  over = over or {}
  return SteerSpec(layer=config.steer.layer, positions=value(config, over, "positions"),
                   op=config.steer.op, train_positions=value(config, over, "train_positions"))


def from_config(config, name: str) -> Method:
  """The method `config.method_overrides[name]` over the shared groups of `config`."""
  overrides = config.method_overrides
  if name not in overrides:
    raise ValueError(f"config.methods names {name!r}, which config.method_overrides does not "
                     f"define; defined: {sorted(overrides)}")
  over = dict(overrides[name])
  where = f"config.method_overrides.{name}"
  unknown = sorted(set(over) - set(OVERRIDES) - set(OTHER_KEYS))
  if unknown:
    raise ValueError(f"{where}.{unknown[0]} is not a method key; known keys: "
                     f"{sorted(OVERRIDES) + sorted(OTHER_KEYS)}")
  neutral = over.get("neutral", config.data.neutral)
  if neutral not in NEUTRAL_SOURCES:
    raise ValueError(f"{where}.neutral={neutral!r}; use one of {NEUTRAL_SOURCES}")
  kind = over.get("kind", "trained" if "positions" in over else name)
  if kind not in METHOD_KINDS:
    raise ValueError(f"{where}.kind={kind!r}; use one of {METHOD_KINDS} (a method without positions "
                     "is untrained, so it needs kind='prompting' or 'unsteered')")
  if kind != "trained":
    if "positions" in over:
      raise ValueError(f"{where}: kind={kind!r} is untrained but the method sets positions")
    return Method(name, kind, neutral=neutral)
  if "positions" not in over:
    raise ValueError(f"{where}: a trained method needs positions (e.g. 'f2+l2' or 'all')")
  try:
    spec, step = steer_spec(config, over), step_config(config, over)
    loop = loop_config(config, over)
  except ValueError as err:
    raise ValueError(f"{where}: {err}") from None
  grid = tuple(float(g) for g in over["grid"]) if "grid" in over else None
  scale = over.get("scale", "")
  if scale not in SCALES:
    raise ValueError(f"{where}.scale={scale!r}; use one of {SCALES}")
  if grid is None and not factor_mode(step.factor_mode).trained:
    raise ValueError(f"{where}: factor_mode={step.factor_mode!r} leaves the factor untrained, "
                     "so the method needs a factor grid (grid=(...))")
  return Method(name, "trained", spec, step, loop, grid, neutral, scale)


def of_config(config) -> list:
  """Every method of `config.methods`, validated."""
  return [from_config(config, name) for name in config.methods]


def base_method(config, name: str = "train") -> Method:
  """The one trained method the shared config groups describe (the train job's)."""
  return Method(name, "trained", steer_spec(config), step_config(config), loop_config(config),
                neutral=config.data.neutral)


def needs_neutral(method: Method) -> bool:
  """Whether the method trains on (x, y_c, y) triples."""
  return method.trained and losses.objective(method.step.objective).needs_neutral


def check_model(config, model_cfg):
  """Errors that need the model's shape, raised before anything is compiled."""
  layer, n = config.steer.layer, model_cfg.n_layers
  if not 0 <= layer < n:
    raise ValueError(f"steer.layer={layer} is beyond the model: {config.model.path} has {n} "
                     f"blocks, so use 0..{n - 1}")
