"""Flax LLMs (Llama, Qwen2, Gemma-2, Gemma-3, Qwen3, Mistral), their loaders and tokenizers."""

from steerjax.models.config import ModelConfig
from steerjax.models.decoder import Decoder, init_cache, SITE_METHOD, block_name
from steerjax.models.loading import DTYPES, LoadError, load
from steerjax.models.tokenizer import Tokenizer, load_tokenizer, stop_ids
from steerjax.models.presets import PRESETS, preset

__all__ = ["ModelConfig", "Decoder", "init_cache", "SITE_METHOD", "block_name", "DTYPES",
           "LoadError", "load", "Tokenizer", "load_tokenizer", "stop_ids", "PRESETS", "preset"]
