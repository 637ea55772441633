"""Sample from a model, optionally steered by a saved SV.

  python -m steerjax.sample --model=stories260K --prompt="Once upon a time" \
      --max_new_tokens=256 --temperature=0
  python -m steerjax.sample --model=smollm2-135m-instruct --chat \
      --prompt="What is the capital of France?" --dtype=bfloat16

Prints the prompt followed directly by its continuation, as one text; with `--chat`, the
prompt as a user turn under the model's chat template, then the answer on the next line.
"""

import sys

from absl import app, flags, logging

_MODEL = flags.DEFINE_string("model", "stories260K", "Alias, local path or hub id.")
_TOKENIZER = flags.DEFINE_string("tokenizer", "", "Tokenizer path; '' = next to the model.")
_PROMPT = flags.DEFINE_string("prompt", "Once upon a time", "Text to continue.")
_CHAT = flags.DEFINE_bool("chat", False, "Wrap the prompt in the model's chat template.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 256, "Tokens to generate at most.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = greedy.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Model dtype.")
_SV = flags.DEFINE_string("sv", "", "A saved SV (.safetensors) to steer with.")
_FACTOR = flags.DEFINE_float("factor", None, "Override the SV's factor.")
_DATA_ROOT = flags.DEFINE_string("data_root", "", "Local data root ('' = $STEERJAX_DATA).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  import jax
  import jax.numpy as jnp

  from steerjax.checkpoint import load_sv
  from steerjax.generate import generate
  from steerjax.models import load, load_tokenizer
  from steerjax.steering import SteerSpec

  root = _DATA_ROOT.value or None
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[_DTYPE.value]
  model, params = load(_MODEL.value, dtype, data_root=root)
  tok = load_tokenizer(_TOKENIZER.value or _MODEL.value, data_root=root)
  ids = tok.chat_prompt(_PROMPT.value) if _CHAT.value else tok.encode(_PROMPT.value, bos=True)
  sv = spec = None
  if _SV.value:
    sv, meta = load_sv(_SV.value, model.cfg)
    if _FACTOR.value is not None:
      sv["factor"] = _FACTOR.value
    spec = SteerSpec(meta["layer"], meta["positions"], meta["op"])
  out = generate(model, params, [ids], max_new_tokens=_MAX_NEW.value,
                 temperature=_TEMPERATURE.value, top_p=_TOP_P.value,
                 rng=jax.random.key(_SEED.value), sv=sv, spec=spec)[0]
  if _CHAT.value:
    sys.stdout.write(_PROMPT.value + "\n" + tok.decode(out) + "\n")
  else:
    prompt_ids = ids[1:] if ids and ids[0] == tok.bos_id else ids
    sys.stdout.write(tok.decode(prompt_ids + out) + "\n")


if __name__ == "__main__":
  app.run(main)
