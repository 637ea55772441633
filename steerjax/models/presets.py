"""Architectures of the models the paper steers and of one model per newer family (random
init; real weights come from `load`)."""

from steerjax.models.config import ModelConfig

_GEMMA2 = dict(family="gemma2", vocab_size=256000, activation="gelu_tanh", embed_scale=True,
               norm_plus_one=True, sandwich_norms=True, attn_softcap=50.0, final_softcap=30.0,
               sliding_window=4096, max_seq_len=8192, norm_eps=1e-6, bos_id=2,
               stop_ids=(1, 107), pad_id=0, tie_embeddings=True)


def _gemma2(dim, layers, heads, kv, hidden, query_scale):
  return ModelConfig(dim=dim, n_layers=layers, n_heads=heads, n_kv_heads=kv, head_dim=256,
                     hidden_dim=hidden, query_scale=query_scale,
                     sliding_layers=tuple(range(0, layers, 2)), **_GEMMA2)


_GEMMA3 = dict(family="gemma3", activation="gelu_tanh", embed_scale=True, norm_plus_one=True,
               sandwich_norms=True, qk_norm=True, head_dim=256, query_scale=256, norm_eps=1e-6,
               rope_theta=1e6, local_rope_theta=10000.0, bos_id=2, stop_ids=(1, 106), pad_id=0,
               tie_embeddings=True)


def _gemma3(vocab, dim, layers, heads, kv, hidden, window, max_len, linear_factor=None):
  # Five sliding-window layers, then one global layer, repeated.
  return ModelConfig(vocab_size=vocab, dim=dim, n_layers=layers, n_heads=heads, n_kv_heads=kv,
                     hidden_dim=hidden, sliding_window=window, max_seq_len=max_len,
                     sliding_layers=tuple(i for i in range(layers) if (i + 1) % 6),
                     rope_linear_factor=linear_factor, **_GEMMA3)


PRESETS = {
    # Published sizes: 2,614,341,888 / 9,241,705,984 / 32,763,876,352 / 8,030,261,248.
    "gemma-2-2b": _gemma2(2304, 26, 8, 4, 9216, 256),
    "gemma-2-9b": _gemma2(3584, 42, 16, 8, 14336, 256),
    "qwen2.5-32b": ModelConfig(
        family="qwen2", vocab_size=152064, dim=5120, n_layers=64, n_heads=40, n_kv_heads=8,
        head_dim=128, hidden_dim=27648, max_seq_len=32768, norm_eps=1e-6, rope_theta=1e6,
        tie_embeddings=False, qkv_bias=True, bos_id=None, stop_ids=(151645, 151643),
        pad_id=151643),
    "llama-3-8b": ModelConfig(
        family="llama", vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8,
        head_dim=128, hidden_dim=14336, max_seq_len=8192, norm_eps=1e-5, rope_theta=500000.0,
        tie_embeddings=False, bos_id=128000, stop_ids=(128001, 128009), pad_id=128001),
    # Newer families: text decoders as their published config.json describe them (the
    # 4B's language model sits inside a multimodal checkpoint).
    "gemma-3-1b": _gemma3(262144, 1152, 26, 4, 1, 6912, 512, 32768),
    "gemma-3-4b": _gemma3(262208, 2560, 34, 8, 4, 10240, 1024, 131072, linear_factor=8.0),
    "qwen3-8b": ModelConfig(
        family="qwen3", vocab_size=151936, dim=4096, n_layers=36, n_heads=32, n_kv_heads=8,
        head_dim=128, hidden_dim=12288, max_seq_len=40960, norm_eps=1e-6, rope_theta=1e6,
        tie_embeddings=False, qk_norm=True, bos_id=None, stop_ids=(151645, 151643),
        pad_id=151643),
    "mistral-7b": ModelConfig(
        family="mistral", vocab_size=32768, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8,
        head_dim=128, hidden_dim=14336, max_seq_len=32768, norm_eps=1e-5, rope_theta=1e6,
        tie_embeddings=False, bos_id=1, stop_ids=(2,), pad_id=0),
}
PUBLISHED_PARAMS = {"gemma-2-2b": 2_614_341_888, "gemma-2-9b": 9_241_705_984,
                    "qwen2.5-32b": 32_763_876_352, "llama-3-8b": 8_030_261_248,
                    # transformers' count for the published config (tests/test_families.py);
                    # the 4B's is its language model's, without the vision tower
                    "gemma-3-1b": 999_885_952, "gemma-3-4b": 3_880_263_168,
                    "qwen3-8b": 8_190_735_360, "mistral-7b": 7_248_023_552}


def preset(name: str) -> ModelConfig:
  if name not in PRESETS:
    raise KeyError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
  return PRESETS[name]
