"""steerjax: training and evaluating steering vectors on Flax LLMs."""

__version__ = "0.1.0"
