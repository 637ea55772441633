"""Tokenizers: sentencepiece (llama2.c models) or Hugging Face, behind one small interface."""

from __future__ import annotations

import os
from typing import Optional, Sequence

from steerjax.models.loading import LoadError, resolve


class Tokenizer:
  """`encode(text) -> ids`, `decode(ids) -> text`, and chat prompts.

  `encode` adds no special tokens unless `bos=True`. `chat_prompt(instruction)` returns the
  ids of a user turn plus the generation prompt under the model's chat template, or just
  BOS + the text for a model without one (stories260K).

  `thinking`: a template with a thinking switch (Qwen3's `enable_thinking`) gets it set to
  this; off by default, so a steered response is the answer itself and not a reasoning
  trace. Templates without the switch are unaffected.
  """

  def __init__(self, backend, kind: str, thinking: bool = False):
    self._tok, self.kind, self.thinking = backend, kind, bool(thinking)
    if kind == "sentencepiece":
      self.bos_id, self.eos_id = backend.bos_id(), backend.eos_id()
      self.vocab_size = backend.vocab_size()
      self.pad_id = 0
    else:
      self.bos_id, self.eos_id = backend.bos_token_id, backend.eos_token_id
      self.vocab_size = len(backend)
      self.pad_id = backend.pad_token_id if backend.pad_token_id is not None else 0

  @property
  def has_chat_template(self) -> bool:
    return bool(self.chat_template)

  @property
  def chat_template(self) -> str:
    """The chat template's source ('' when the tokenizer has none)."""
    return (getattr(self._tok, "chat_template", None) or "") if self.kind == "hf" else ""

  def special_token_id(self, text: str) -> Optional[int]:
    """The id of `text` when it is one known token (e.g. "<end_of_turn>"), else None."""
    found = self.encode(text)
    unk = self._tok.unk_id() if self.kind == "sentencepiece" else self._tok.unk_token_id
    return found[0] if len(found) == 1 and found[0] != unk else None

  def _template_options(self) -> dict:
    if "enable_thinking" in (getattr(self._tok, "chat_template", None) or ""):
      return {"enable_thinking": self.thinking}
    return {}

  @property
  def bos_text(self) -> str:
    """The BOS token as text ('' when there is none or it has no text form)."""
    if self.kind == "sentencepiece" or self.bos_id is None:
      return ""
    return self._tok.convert_ids_to_tokens(self.bos_id) or ""

  def chat_text(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
    """`messages` ([{"role", "content"}]) under the chat template, as text; without a
    template, the contents one after another."""
    if not self.has_chat_template:
      return "\n\n".join(m["content"] for m in messages)
    return self._tok.apply_chat_template(list(messages), tokenize=False,
                                         add_generation_prompt=add_generation_prompt,
                                         **self._template_options())

  def chat_ids(self, messages: Sequence[dict]) -> list:
    """Token ids of a (multi-turn) chat ending in the generation prompt; BOS + the joined
    contents for a model without a chat template."""
    if not self.has_chat_template:
      return self.encode(self.chat_text(messages), bos=True)
    return self.encode(self.chat_text(messages))

  def encode(self, text: str, bos: bool = False) -> list:
    if self.kind == "sentencepiece":
      ids = self._tok.encode(text)
    else:
      ids = self._tok.encode(text, add_special_tokens=False)
    return ([self.bos_id] if bos and self.bos_id is not None else []) + list(ids)

  def decode(self, ids: Sequence[int]) -> str:
    ids = [int(i) for i in ids]
    if self.kind == "sentencepiece":
      return self._tok.decode(ids)
    return self._tok.decode(ids, skip_special_tokens=True)

  def chat_prompt(self, instruction: str) -> list:
    if not self.has_chat_template:
      return self.encode(instruction, bos=True)
    out = self._tok.apply_chat_template(
        [{"role": "user", "content": instruction}], add_generation_prompt=True, tokenize=True,
        **self._template_options())
    if isinstance(out, dict) or hasattr(out, "keys"):
      out = out["input_ids"]
    return list(out)


def load_tokenizer(path_or_id: str, data_root: Optional[str] = None,
                   thinking: bool = False, hub: bool = True) -> Tokenizer:
  """From a tokenizer file (`.model`, `tokenizer.json`), a model directory, a GGUF file
  (vocabulary, special tokens and chat template from its metadata), a llama2.c `.bin`
  (its sentencepiece model sits beside it), an alias or (`hub`) a hub id. `thinking` sets a
  chat template's thinking switch (see Tokenizer)."""
  path = resolve(path_or_id, data_root, hub)
  if path.endswith(".bin"):
    directory = os.path.dirname(path)
    candidates = [f for f in sorted(os.listdir(directory)) if f.endswith(".model")]
    if not candidates:
      raise LoadError(f"no sentencepiece .model file beside {path}; pass the tokenizer path")
    path = os.path.join(directory, "tokenizer.model" if "tokenizer.model" in candidates
                        else candidates[0])
  if path.endswith(".model"):
    import sentencepiece as spm
    return Tokenizer(spm.SentencePieceProcessor(model_file=path), "sentencepiece")
  from transformers import AutoTokenizer, PreTrainedTokenizerFast
  if path.endswith(".json"):
    return Tokenizer(PreTrainedTokenizerFast(tokenizer_file=path), "hf", thinking)
  if os.path.isdir(path):
    return Tokenizer(AutoTokenizer.from_pretrained(path, trust_remote_code=False), "hf",
                     thinking)
  if path.endswith(".gguf"):
    return Tokenizer(_gguf_tokenizer(path), "hf", thinking)
  raise LoadError(f"{path}: expected a sentencepiece .model, a tokenizer.json, "
                  "a model directory, a .gguf file or a llama2.c .bin")


# llama.cpp pre-tokenizers that isolate every digit before the GPT-2 split. transformers
# applies the GPT-2 split alone for them, so "\n\n2" became "\n", "\n", "2" where SmolLM2
# itself writes "\n\n", "2".
_DIGITS_FIRST = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")


def _gguf_tokenizer(path: str):
  """transformers' tokenizer built from a GGUF file's `tokenizer.*` metadata."""
  from tokenizers import pre_tokenizers
  from transformers import AutoTokenizer

  from steerjax.models.gguf import read_file
  try:
    tok = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(path)),
                                        gguf_file=os.path.basename(path))
  except (ValueError, KeyError) as err:
    raise LoadError(f"{path}: cannot build a tokenizer from its GGUF metadata ({err})") from None
  pre = read_file(path).metadata.get("tokenizer.ggml.pre")
  byte_level = tok.backend_tokenizer.pre_tokenizer
  if (pre in _DIGITS_FIRST
      and isinstance(byte_level, pre_tokenizers.ByteLevel)):
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), byte_level])
  return tok


END_OF_TURN = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>")


def stop_ids(model_cfg, tok: Tokenizer) -> tuple:
  """The model's stop ids plus the tokenizer's EOS and end-of-turn token, if it has one."""
  ids = set(model_cfg.stop_ids) | ({tok.eos_id} if tok.eos_id is not None else set())
  if tok.kind == "hf":
    ids |= {i for i in map(tok.special_token_id, END_OF_TURN) if i is not None}
  return tuple(sorted(ids))
