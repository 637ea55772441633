"""What the jobs run on, one concern per module:

  context   the model, tokenizer and mesh a job sets up once (`setup`)
  training  one method's SVs over many concepts (`train_svs`), SV stacking for generation
  session   generate -> judge -> score over a benchmark, resumable per concept (`Session`)
  rows      the utility and attack tables' rows: a method's SVs at a factor scale
  plans     cost rows for `--plan`
"""
