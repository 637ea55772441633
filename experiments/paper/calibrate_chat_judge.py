"""Calibrate the offline judge's chat mode on SmolLM2-135M-Instruct's own answers and write
docs/chat_judge_calibration.md.

Text sets, on the chat benchmark's training candidates and test instructions
(configs/chat_smollm2.py), each cut to the benchmark's answer length:
  answer      the model's greedy answer (no concept request)
  reference   AlpacaEval's reference answer
  mismatched  the model's answer to a different instruction
  shuffled    the model's answer with its words in random order
  looped      the first six words of the model's answer, five times over
  y_c         the benchmark's kept concept responses, rated for their own concept

  PYTHONPATH=. STEERJAX_DATA=../shared/assets python -m experiments.paper.calibrate_chat_judge
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

from configs import chat_smollm2
from experiments.paper.calibrate_judge import (distribution_lines, fmt_row, loop_words,
                                               shuffle_words)
from steerjax import paths
from steerjax.data import axbench
from steerjax.data import chat as chat_data
from steerjax.runtime import chat
from steerjax.runtime.session import open_session

COMMAND = ("PYTHONPATH=. STEERJAX_DATA=../shared/assets "
           "python -m experiments.paper.calibrate_chat_judge")
SETS = ("answer", "reference", "mismatched", "shuffled", "looped")


def text_sets(session, instructions, seed):
  cfg, tok = session.config, session.ctx.tok
  tokens = cfg.data.max_response_tokens
  ids = session.generate([tok.chat_prompt(x) for x in instructions], max_new_tokens=tokens,
                         temperature=0.0)
  answers = [tok.decode(x) for x in ids]
  alpaca = axbench.alpaca_frame(cfg.data_root or None)
  reference = dict(zip(alpaca["instruction"], alpaca["output"]))
  rng = random.Random(seed)
  return {"answer": answers,
          "reference": [tok.decode(tok.encode(reference[x])[:tokens]) for x in instructions],
          "mismatched": answers[1:] + answers[:1],
          "shuffled": [shuffle_words(a, rng) for a in answers],
          "looped": [loop_words(a) for a in answers]}


def concept_table(session, pools, answers):
  """concept -> (candidates mentioning it under the request, kept y_c rated 0/1/2, plain
  answers rated 0/1/2 for it)."""
  out = {}
  requests = {c.name: [chat_data.request(chat_data.CONCEPTS[c.name], x) for x in pools.train]
              for c in session.bench.concepts}
  for c in session.bench.concepts:
    concept = chat_data.CONCEPTS[c.name]
    under_request = chat.concept_responses(session, requests[c.name])
    found = sum(concept.mentions(y) > 0 for y in under_request)
    kept = [0, 0, 0]
    for _, y in session.bench.pairs[c.concept_id]:
      kept[min(concept.mentions(y), 2)] += 1
    plain = [0, 0, 0]
    for a in answers:
      plain[min(concept.mentions(a), 2)] += 1
    out[c.name] = (f"{found}/{len(pools.train)}", kept, plain)
  return out


def report(n, measured, ratings, concepts, seconds, config):
  t = ratings["thresholds"]
  lines = ["# Offline judge calibration: chat mode on SmolLM2-135M-Instruct", "",
           "The offline judge's chat mode (`OfflineJudge(chat=True)`, `CHAT_THRESHOLDS` in "
           "`steerjax/eval/offline_judge.py`) checked on the chat benchmark's own text "
           "(`configs/chat_smollm2.py`), with SmolLM2-135M-Instruct as the unsteered model. "
           "Reproduce with:", "", "```", COMMAND, "```", "",
           f"{n} AlpacaEval instructions (the benchmark's training candidates and test "
           f"instructions), each followed by up to {config.data.max_response_tokens} tokens of:",
           "", "* `answer`: the model's greedy answer;",
           "* `reference`: AlpacaEval's reference answer;",
           "* `mismatched`: the model's answer to another instruction;",
           "* `shuffled`: the model's answer with its words shuffled;",
           "* `looped`: the answer's first six words, five times over;",
           f"* `y_c`: the benchmark's {len(ratings['y_c'])} kept concept responses, rated for "
           "their own concept.", "",
           f"Thresholds: fluent NLL <= {t.fluent_nll}, broken > {t.broken_nll}; fluent "
           f"repetition <= {t.fluent_repetition}, broken > {t.broken_repetition}; relevance "
           f"PMI points at {t.related_pmi} and {t.strongly_related_pmi} nats/token. Wall time "
           f"{seconds:.0f} s on a 2-core CPU.", ""] + distribution_lines(measured, ratings, SETS)
  lines += ["", "## Concept rating", "",
            "Per concept: candidate answers that mention it when asked (the benchmark keeps "
            "the first `data.n_train` of them), the kept y_c's ratings, and the ratings the "
            "plain `answer` set gets for it (its base rate without a request), as counts "
            "rated 0 / 1 / 2.", "", fmt_row(["concept", "mention it under the request",
                                             "kept y_c", "plain answers"]),
            fmt_row(["---"] * 4)]
  for name, (found, kept, plain) in concepts.items():
    lines.append(fmt_row([name, found, " / ".join(map(str, kept)),
                          " / ".join(map(str, plain))]))
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=os.path.join("docs", "chat_judge_calibration.md"))
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  t0 = time.time()
  config = chat_smollm2.get_config()
  with tempfile.TemporaryDirectory() as workdir, open_session(config, workdir) as session:
    pools = chat.split(config, session.ctx.tok)
    instructions = pools.train + [x for c in config.data.concepts for x in pools.test[c]]
    sets = text_sets(session, instructions, args.seed)
    judge = session.judge
    items = {name: [{"concept": config.data.concepts[0], "instruction": x, "continuation": y}
                    for x, y in zip(instructions, sets[name])] for name in SETS}
    items["y_c"] = [{"concept": c.name, "instruction": x, "continuation": y}
                    for c in session.bench.concepts for x, y in session.bench.pairs[c.concept_id]]
    measured = {name: judge.measure(v) for name, v in items.items()}
    ratings = {name: [judge.rating(m) for m in v] for name, v in measured.items()}
    ratings["thresholds"] = judge.thresholds
    concepts = concept_table(session, pools, sets["answer"])
  text = report(len(instructions), measured, ratings, concepts, time.time() - t0, config)
  paths.write_atomic(args.out, text)
  sys.stdout.write(text)


if __name__ == "__main__":
  main()
