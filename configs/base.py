"""Defaults shared by every config: stories260K, a PrOSV f2+l2 Lang SV, joint training.

  STEERJAX_DATA=../shared/assets python -m steerjax.main --config=configs/base.py --workdir=runs/train

Override any field on the command line, e.g. `--config.steer.positions=all`.
"""

import ml_collections

from steerjax.sharding import AXES, DEFAULT_RULES


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.job = "train"                   # a key of steerjax.jobs.JOBS: train | demo | axbench
  c.seed = 42
  c.data_root = ""                  # local data folder; '' = $STEERJAX_DATA, else the hub
  c.model = ml_collections.ConfigDict(dict(
      path="stories260K",           # alias, local path (HF dir or llama2.c .bin) or hub id
      tokenizer="",                 # '' = next to the model
      dtype="float32",              # float32 | bfloat16 (SVs always stay float32)
      remat=False,                  # recompute block activations in the backward pass
      vocab_chunk=0,                # > 0: the loss's softmax over this many vocabulary rows at
                                    #   a time, recomputed in the backward pass (big vocabularies)
  ))
  c.steer = ml_collections.ConfigDict(dict(
      layer=2,                      # 0-based block whose output is edited
      positions="f2+l2",            # all (FSSV) | prompt | fN | lN | fN+lM (PrOSV)
      op="add",                     # add | clamp | null
  ))
  c.sv = ml_collections.ConfigDict(dict(
      beta=4.0,                     # factor init: alpha0 = beta * sqrt(width)
      lam=8.0,                      # direction init size
      init="normal",                # normal: N(0, lam/n) (paper) | uniform: U(+-lam/sqrt(n)) (code)
      factor_mode="joint",          # joint | fixed | sampled
      fixed_factor=1.0,             # alpha in factor_mode=fixed
      factor_set=tuple(range(2, 21, 2)),  # alphas drawn from in factor_mode=sampled
      param_dtype="float32",        # bfloat16: emulate the authors' bf16 SV storage (rounds
                                    #   every update, so small factor steps vanish)
  ))
  c.optim = ml_collections.ConfigDict(dict(
      lr_factor=10.0,               # factor learning rate at ref_width
      lr_direction=0.04,            # direction learning rate at ref_width
      ref_width=0,                  # width the rates were tuned at; 0 = the model's own
      clip_direction=1.0,           # gradient-norm clip of the direction (0 = off)
      clip_factor=0.0,              # gradient clip of the factor (0 = off, as the authors ran)
      schedule="linear",            # linear decay to 0 | constant
      warmup_steps=0,
      weight_decay=0.0,
  ))
  c.train = ml_collections.ConfigDict(dict(
      objective="lang",             # lang | simpo | reps
      batch_size=12,                # examples per concept per step
      epochs=12,
      max_steps=0,                  # stop early (0 = all epochs)
      grad_accum_steps=1,           # micro-batches per update; batch_size is the whole batch
      schedule_steps="updates",     # updates | micro_batches (the authors' schedule length
                                    #   under accumulation: their rate ends near 1 - 1/accum)
      concepts_per_step=8,          # concepts stacked in one jitted step; 0 = as many as fit
                                    #   in memory_fraction of the device (steerjax/memory.py)
      memory_fraction=0.9,
      max_concepts_per_step=64,
      prefix_cache="auto",          # reuse frozen block outputs across epochs: auto | on | off
      log_every=24,                 # steps between progress lines
      checkpoint_every=100,         # steps between Orbax checkpoints
      tensorboard=False,            # also write TensorBoard scalars (needs tensorboardX)
  ))
  c.data = ml_collections.ConfigDict(dict(
      source="tinystories",         # tinystories | axbench | file (see steerjax/data/sources.py)
      path="",                      # source=file: .jsonl / .parquet rows of concept, prompt,
                                    #   response and optionally neutral
      n_train=72,                   # training pairs per concept (axbench, file: 0 = all)
      max_response_tokens=128,      # axbench, file: y_c (and y) cut to this many tokens
      neutral="model",              # SimPO/RePS y when the data has none: model (greedy) | judge
      neutral_max_tokens=128,       # judge/model-written y of the axbench job: at most this long
      released_repo="",             # a local clone of colored-dye/prosv ('' = download, cached)
      # tinystories
      concepts=("dog", "rain", "sea", "flower", "ball", "bird", "cat", "tree", "sun", "music"),
      n_eval=10,                    # eval prompts per concept (ids 0..4 select, 5..9 test)
      seed=0,
      max_stories=0,                # 0 = every story in the source
      prefix_tokens=128,            # longest prompt x (tokens, BOS included)
      continuation_tokens=64,       # y_c (and the neutral y) cut to this many tokens
      # axbench
      suite="concept500",           # concept500 | concept10
      task="2b_l10",                # 2b_l10 | 2b_l20 | 9b_l20 | 9b_l31
      first_concept=0,              # position in the concept list (= concept_id)
      num_concepts=0,               # 0 = to the end of the list
  ))
  c.mesh = ml_collections.ConfigDict(dict(
      shape=(),                     # devices per axis of `axes`, one -1 = the rest; () = no mesh
      axes=AXES,                    # mesh axis names, outer to inner (see steerjax/sharding.py)
      rules=DEFAULT_RULES,          # ordered (logical axis, mesh axes) pairs; None replicates
      distributed=ml_collections.ConfigDict(dict(
          enabled=False,            # jax.distributed.initialize before anything else (multi-host)
          coordinator_address="",   # host:port of process 0; '' = auto-detect (TPU pod, SLURM)
          num_processes=0,          # with coordinator_address: total processes
          process_id=-1,            # with coordinator_address: this process, 0-based
      )),
  ))
  return c
