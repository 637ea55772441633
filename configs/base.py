"""Every config group any job reads, with its default: stories260K, a PrOSV f2+l2 Lang SV,
joint training (the `train` job).

  STEERJAX_DATA=../shared/assets python -m steerjax.main --config=configs/base.py --workdir=runs/train

Other configs start from this one and change values, never add groups. Override any field on
the command line, e.g. `--config.steer.positions=all`. Names of registered things (jobs,
objectives, ops, factor modes, data sources) are keys of their registries, cited per field.
"""

import ml_collections

from steerjax.sharding import AXES, DEFAULT_RULES


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.job = "train"                   # a key of steerjax.jobs.JOBS
  c.seed = 42
  c.data_root = ""                  # local data folder; '' = $STEERJAX_DATA, else the hub
  c.cache_dir = ""                  # judge replies, judge-written texts, pinned downloads;
                                    #   '' = ~/.cache/steerjax
  c.results_dir = ""                # evaluating jobs' tables and plots; '' = <workdir>/results
  c.model = ml_collections.ConfigDict(dict(
      path="stories260K",           # alias, local path (HF dir or llama2.c .bin) or hub id
      tokenizer="",                 # '' = next to the model
      dtype="float32",              # float32 | bfloat16 (SVs always stay float32)
      remat=False,                  # recompute block activations in the backward pass
      thinking=False,               # chat templates with a thinking switch (Qwen3): on or off
      vocab_chunk=0,                # > 0: the loss's softmax over this many vocabulary rows at
                                    #   a time, recomputed in the backward pass (big vocabularies)
  ))
  c.steer = ml_collections.ConfigDict(dict(
      layer=2,                      # 0-based block whose output is edited
      positions="f2+l2",            # all (FSSV) | all-bos | prompt | fN | lN | fN+lM (PrOSV)
      op="add",                     # a key of steerjax.steering.OPS
      train_positions="",           # positions steered in training ('' = positions), e.g.
                                    #   all-f4: AxBench's RePS skips the chat prefix
  ))
  c.sv = ml_collections.ConfigDict(dict(
      beta=4.0,                     # factor init: alpha0 = beta * sqrt(width)
      lam=8.0,                      # direction init size
      init="normal",                # normal: N(0, lam/n) (paper) | uniform: U(+-lam/sqrt(n)) (code)
                                    #   | constant: lam in every entry (AxBench's SSV)
      factor_mode="joint",          # a key of steerjax.train_config.FACTOR_MODES
      fixed_factor=1.0,             # alpha in factor_mode=fixed
      factor_set=tuple(range(2, 21, 2)),  # alphas drawn from in factor_mode=sampled
      bias=False,                   # a learned bias b: h + (alpha + b) v (AxBench's RePS)
      dropout=0.0,                  # dropout on the added v in training (AxBench's RePS)
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
      objective="lang",             # a key of steerjax.losses.OBJECTIVES
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
      source="tinystories",         # a key of steerjax.data.sources.SOURCES
      path="",                      # source=file: .jsonl / .parquet rows of concept, prompt,
                                    #   response and optionally neutral
      n_train=72,                   # training pairs per concept (axbench, file: 0 = all)
      max_response_tokens=128,      # axbench, file: y_c (and y) cut to this many tokens
      neutral="model",              # SimPO/RePS y when the data has none: one of
                                    #   steerjax.methods.NEUTRAL_SOURCES
      neutral_max_tokens=128,       # judge-written y of the axbench job: at most this long
      model_neutral_tokens=128,     # the target model's greedy y of the axbench job
      released_repo="",             # a local clone of colored-dye/prosv ('' = download, cached)
      axbench_repo="",              # a local clone of stanfordnlp/axbench (the same)
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
      # chat (also concepts, n_train, n_eval, seed; steerjax.data.chat)
      n_candidates=72,              # training instructions answered under the concept request
      max_instruction_tokens=48,    # longest AlpacaEval instruction used
  ))
  # The methods an evaluating job runs: names in `methods`, each described in
  # `method_overrides.<name>` by method keys (steerjax.methods.OVERRIDES, OTHER_KEYS).
  c.methods = ()
  c.method_overrides = ml_collections.ConfigDict()
  c.eval = ml_collections.ConfigDict(dict(
      max_new_tokens=128,           # tokens generated per test instruction
      temperature=1.0,
      top_p=1.0,                    # sampling=plain only
      sampling="plain",             # one of steerjax.generate.SAMPLING_MODES
      batch_size=64,                # generations per device batch
      concepts_per_chunk=16,        # concepts generated and judged together (resume unit)
      prompt_template=" {prompt}\n\nQuestion: {instruction}",   # the prompting baseline's input
      steering_prompts="judge",     # one of steerjax.runtime.session.STEERING_PROMPT_SOURCES
      requests="steerjax",          # what the judge is asked to write steering / suppression
                                    #   prompts and neutral y with: steerjax | prosv (the
                                    #   authors' T_GENERATE_* from their llm_judge.py,
                                    #   data.released_repo; AxBench's T_RESPONSE_WITHOUT_CONCEPT,
                                    #   the paper's Fig. 40, data.axbench_repo)
      samples_shown=1,              # generations the demo prints per method
  ))
  c.judge = ml_collections.ConfigDict(dict(
      kind="openai",                # one of steerjax.eval.judges.JUDGE_KINDS
      templates="steerjax",         # steerjax | prosv | axbench | a .py/.json path
      templates_repo="",            # a local clone of that repository ('' = download, cached)
      base_url="https://api.openai.com/v1",
      model="gpt-4o-mini",
      api_key_env="OPENAI_API_KEY",
      temperature=0.01,
      max_tokens=500,
      mode="online",                # online (paced by the server's rate-limit headers) | batch
      concurrency=512,              # online: most requests in flight
      max_pending=50000,            # unanswered requests before more wait
      headroom=0.95,                # fraction of the account's RPM / TPM to run at
      max_retries=5,
      rate_limit_wait_s=900.0,      # waiting on 429s per request before it counts as failed
      timeout_s=60.0,
      batch_max_lines=50000,        # batch input files: lines and bytes (the Batch API's limits)
      batch_max_bytes=200 * 2**20,
      batch_poll_s=30.0,
      batch_max_rounds=3,           # batches a failing line gets before batch_fallback
      batch_fallback="online",      # online | none
      batch_wait_s=-1.0,            # -1: wait for the batches; 0: submit, stop, rerun later
      price_input_per_m=0.15,       # USD per million tokens (gpt-4o-mini); batch: half, unless
      price_output_per_m=0.60,      #   price_batch_* say otherwise
      price_batch_input_per_m=0.075,
      price_batch_output_per_m=0.30,
      plan_rpm=10000,               # the account limits --plan assumes for the judge's time
      plan_tpm=10_000_000,
      plan_latency_s=2.0,
      cache_dir="",                 # '' = <cache_dir>/judge
      local_path="",                # kind=local: an instruct model steerjax loads ('' = target)
      local_dtype="bfloat16",
      local_max_new_tokens=256,
      local_batch_size=32,
  ))
  # job=utility and job=attack (paper Section 6.4): rows `method[@factor scale]` over the
  # first num_concepts concepts, with the SVs an axbench run (svs_from) trained.
  rows = ("unsteered", "prompting", "fssv_lang", "fssv_lang@0.8", "fssv_lang@0.5", "prosv_lang",
          "fssv_simpo", "fssv_simpo@0.8", "fssv_simpo@0.5", "prosv_simpo")
  c.utility = ml_collections.ConfigDict(dict(
      svs_from="",                  # the axbench run's workdir
      rows=rows,
      num_concepts=10,              # the paper's Table 16 averages 10 (the first 10 are also
                                    #   reported beside any larger set)
      tinymmlu="",                  # '' = hub tinyBenchmarks/tinyMMLU, or a local .jsonl/.parquet
      tinygsm8k="",                 # '' = hub tinyBenchmarks/tinyGSM8k, or a local file
      mmlu_tokens=128,
      gsm8k_tokens=512,
      mmlu_judge=True,              # grade MMLU answers with the judge (the paper's way)
      long_context_score=True,      # judge the GSM8K answers' steering too (Table 17)
      limit=0,                      # items per benchmark (0 = all 100)
      # job=chat: beside the steering score
      reference_answers=24,         # AlpacaEval reference answers scored as NLL, SV on
      reference_tokens=96,          # of each answer, its first this many tokens
      mmlu_items=32,                # MMLU test items, 5-shot letter accuracy through lm-eval
                                    #   (0 = no MMLU column)
      mmlu_max_tokens=384,          # only items whose 5-shot prompt is at most this long
      mmlu_concepts=1,              # SVs of the first this many concepts (0 = all)
  ))
  c.attack = ml_collections.ConfigDict(dict(
      svs_from="",
      utility_from="",              # a utility job's workdir: also write tradeoff.{md,png}
      rows=rows,
      num_concepts=15,              # the authors' attack runs: concepts 0..14
      prompts="released",           # released (the authors' file) | judge (written by it)
  ))
  # job=search: the paper's Table 10 grid for one jointly trained method (an empty axis
  # keeps the method's own value).
  c.search = ml_collections.ConfigDict(dict(
      method="prosv_lang",          # the method whose values are searched
      concepts="hp_tuning",         # hp_tuning (the paper's 3, released) | config (data range)
      beta=(1.0, 2.0, 4.0, 8.0),
      lr_factor=(0.1, 1.0, 10.0, 20.0),
      lam=(1.0, 8.0),
      lr_direction=(0.04, 0.08),
      epochs=(12, 18, 24),
      batch_size=(),
      positions=(),                 # where the SV acts, e.g. ("f2", "l2", "f2+l2", "prompt")
      seeds=(),                     # repeat the grid per training seed (() = config.seed);
                                    #   the table reports each point's mean over them
      heatmap=(),                   # two axes (rows, columns) drawn to heatmap.png
      heatmap_score="concept",      # overall | concept | instruction | fluency
  ))
  # --plan's wall-clock estimate: FLOPs on one chip at an assumed model-FLOP utilisation.
  c.plan = ml_collections.ConfigDict(dict(
      chip="h100",                  # a key of steerjax.runtime.plans.CHIPS (v5e, v5p, h100, a100)
      mfu=0.4,                      # of peak bf16 FLOP/s in training, prefill and scoring
      decode_mfu=0.05,              # token-by-token decoding (memory-bound: far below mfu)
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
