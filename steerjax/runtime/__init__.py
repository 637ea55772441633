"""What the jobs run on, one concern per module:

  context   the model, tokenizer and mesh a job sets up once (`setup`)
  training  one method's SVs over many concepts (`train_svs`), SV stacking for generation
  session   generate -> judge -> score over a benchmark, resumable per concept (`Session`)
  chat      the chat benchmark's concept responses, written by its model (`benchmark`)
  nll       utility as NLL per token of fixed texts with SVs on (`mean_nll`)
  rows      the utility and attack tables' rows: a method's SVs at a factor scale
  plans     cost rows for `--plan`
"""
