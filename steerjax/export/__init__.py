"""SVs to and from other tools: llama.cpp control vectors, EasySteer requests, lm-eval's
`steered` model, AxBench / RePS weights, pyvene / pyreft interventions, and the hub.

Command line: `python -m steerjax.export --help` (see docs/export.md). Every converter
takes and returns `(sv, meta)` as `steerjax.checkpoint.load_sv` does.
"""

from steerjax.export.foreign import axbench_concepts, from_axbench, from_pyvene
from steerjax.export.formats import (from_control_vector, from_easysteer, from_lm_eval,
                                     read_gguf, to_control_vector, to_easysteer, to_lm_eval)
from steerjax.export.hub import model_card, push

__all__ = ["axbench_concepts", "from_axbench", "from_pyvene", "from_control_vector",
           "from_easysteer", "from_lm_eval", "read_gguf", "to_control_vector", "to_easysteer",
           "to_lm_eval", "model_card", "push"]
