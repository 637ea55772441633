"""Calibrate the offline judge on real TinyStories text and write docs/judge_calibration.md.

Text sets, all built from the openings of the local TinyStories stories (first two sentences):
  real        the story's own next CONTINUATION_TOKENS tokens
  greedy      the unsteered model's greedy continuation of the opening
  mismatched  the real continuation of a different story
  shuffled    the real continuation with its words in random order
  looped      the first six words of the real continuation, five times over
For each set it prints the rating distributions and the measurements behind them, checks the
fluency thresholds against real vs shuffled text and the relevance rule against real vs
mismatched continuations, and prints the concept rating's confusion table.

  PYTHONPATH=. STEERJAX_DATA=../shared/assets \
      python -m experiments.paper.calibrate_judge
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import sys
import time
import warnings

import numpy as np

from steerjax import paths
from steerjax.data import tinystories as ts
from steerjax.eval.offline_judge import THRESHOLDS, OfflineJudge
from steerjax.eval.scoring import RATINGS, record_score
from steerjax.generate import generate_many
from steerjax.models import load, load_tokenizer

MODEL = "stories260K/stories260K.bin"
COMMAND = ("PYTHONPATH=. STEERJAX_DATA=../shared/assets "
           "python -m experiments.paper.calibrate_judge")
MIN_CONTINUATION_TOKENS = 16
SETS = ("real", "greedy", "mismatched", "shuffled", "looped")


# ---------------------------------------------------------------- building the text sets

def real_items(stories, tokenizer, budget):
  """(story index, opening, real continuation) for every story long enough."""
  out = []
  for i, story in enumerate(stories):
    if not story.isascii():
      continue
    opening = ts.story_opening(story, tokenizer)
    if opening is None:
      continue
    ids = tokenizer.encode(story[len(opening["x_text"]):].strip())[:budget]
    if len(ids) >= MIN_CONTINUATION_TOKENS:
      out.append((i, opening["x_text"], tokenizer.decode(ids)))
  return out


def shuffle_words(text, rng):
  words = text.split()
  rng.shuffle(words)
  return " ".join(words)


def loop_words(text, size=6, times=5):
  return " ".join(text.split()[:size] * times)


def greedy_continuations(model, params, tokenizer, openings, budget, batch_size=64):
  prompts = [tokenizer.encode(o, bos=True) for o in openings]
  ids = generate_many(model, params, prompts, max_new_tokens=budget, batch_size=batch_size,
                      fixed_batch=True)
  return [tokenizer.decode(x) for x in ids]


def text_sets(real, model, params, tokenizer, budget, seed):
  rng = random.Random(seed)
  openings = [o for _, o, _ in real]
  continuations = [c for _, _, c in real]
  order = list(range(len(real)))
  rng.shuffle(order)
  other = {order[k]: order[(k + 1) % len(order)] for k in range(len(order))}  # no fixed point
  return {
      "real": continuations,
      "greedy": greedy_continuations(model, params, tokenizer, openings, budget),
      "mismatched": [continuations[other[k]] for k in range(len(real))],
      "shuffled": [shuffle_words(c, rng) for c in continuations],
      "looped": [loop_words(c) for c in continuations],
  }


# ---------------------------------------------------------------- summaries

def percentiles(values, qs=(0, 1, 5, 50, 95, 99, 100)):
  v = np.asarray(values, float)
  v = v[~np.isnan(v)]
  return {q: float(np.percentile(v, q)) for q in qs}


def distribution(ratings, key):
  counts = collections.Counter(r[key] for r in ratings)
  n = max(len(ratings), 1)
  return [counts[k] / n for k in (0, 1, 2)]


def measure_sets(judge, real, sets, y_c_items):
  """Measurements and ratings per set; `y_c` (each pair under its own concept) comes last."""
  openings = [o for _, o, _ in real]
  item_sets = {name: [{"concept": "dog", "instruction": o, "continuation": c}
                      for o, c in zip(openings, sets[name])] for name in SETS}
  item_sets["y_c"] = y_c_items
  measured, ratings = {}, {}
  for name, items in item_sets.items():
    measured[name] = judge.measure(items)
    ratings[name] = [judge.rating(m) for m in measured[name]]
  return measured, ratings


def training_continuations(stories, tokenizer):
  """Every concept's (x, y_c) pairs available in the stories."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    bench = ts.build_benchmark(stories, tokenizer, n_train=len(stories), n_eval=0,
                               allow_fewer=True)
  return [{"concept": name, "instruction": x, "continuation": y}
          for name, entry in bench.items() for x, y in entry["train_text"]]


def concept_confusion(real, y_c_items):
  """concept -> {row: [count rated 0, 1, 2]}: y_c, then real continuations with / without a
  concept word."""
  table = {}
  for name, concept in ts.CONCEPTS.items():
    rows = {"y_c": [0, 0, 0], "with": [0, 0, 0], "without": [0, 0, 0]}
    for item in y_c_items:
      if item["concept"] == name:
        rows["y_c"][min(concept.mentions(item["continuation"]), 2)] += 1
    for _, _, continuation in real:
      mentions = concept.mentions(continuation)
      rows["with" if mentions else "without"][min(mentions, 2)] += 1
    table[name] = rows
  return table


def relevance_detail(measured):
  """Shares of real and mismatched continuations with 0 / 1 / 2+ shared content words."""
  out = {}
  for name in ("real", "mismatched"):
    shared = [min(m["shared_words"], 2) for m in measured[name]]
    out[name] = [shared.count(k) / len(shared) for k in (0, 1, 2)]
  return out


# ---------------------------------------------------------------- report

def fmt_row(cells):
  return "| " + " | ".join(str(c) for c in cells) + " |"


def pct(x):
  return f"{100 * x:.1f}%"


def shares(ratings, key):
  return " / ".join(pct(x) for x in distribution(ratings, key))


def report(n_stories, real, measured, ratings, confusion, seconds, budget):
  lines = ["# Offline judge calibration", "",
           "Thresholds of `steerjax/eval/offline_judge.py` checked on real TinyStories text, "
           "with stories260K as the unsteered model. Reproduce with:", "", "```", COMMAND, "```",
           "", f"{len(real)} openings (the first two sentences of the {n_stories} stories of the "
           f"local excerpt), each followed by up to {budget} tokens of:", "",
           "* `real`: the story's own next tokens;",
           "* `greedy`: the unsteered model's greedy continuation;",
           "* `mismatched`: the real continuation of another story;",
           "* `shuffled`: the real continuation with its words shuffled;",
           "* `looped`: the real continuation's first six words, five times over;",
           f"* `y_c`: the benchmark's {len(ratings['y_c'])} training pairs of all concepts (x, "
           "then the story from the sentence with the concept's first mention), rated for "
           "their own concept.", "", f"Wall time {seconds:.0f} s on a 2-core CPU.", ""]
  lines += distribution_lines(measured, ratings)
  lines += _threshold_notes(measured, ratings, THRESHOLDS)
  lines += _confusion_lines(confusion)
  return "\n".join(lines) + "\n"


def distribution_lines(measured, ratings, sets=SETS):
  """The rating shares and measurement percentiles of `sets` and `y_c`, as markdown."""
  lines = ["## Ratings (share of items rated 0 / 1 / 2)", "",
           fmt_row(["set", "instruction", "fluency", "concept", "mean score"]),
           fmt_row(["---"] * 5)]
  for name in sets + ("y_c",):
    concept, mean = "-", "-"
    if name == "y_c":
      concept = shares(ratings[name], "concept_score")
      mean = f"{np.mean([record_score(r) for r in ratings[name]]):.2f}"
    lines.append(fmt_row([name, shares(ratings[name], "instruction_score"),
                          shares(ratings[name], "fluency_score"), concept, mean]))
  lines += ["", "Concept ratings and scores are only meaningful for `y_c`: the other sets are "
            "not about a particular concept.", "",
            "## Measurements (percentiles 0 / 1 / 5 / 50 / 95 / 99 / 100)", "",
            fmt_row(["set", "NLL (nats/token)", "repeated word 3-grams", "PMI (nats/token)",
                     "shared content words"]),
            fmt_row(["---"] * 5)]
  for name in sets + ("y_c",):
    cells = [" / ".join(f"{v:.2f}" for v in percentiles([m[key] for m in measured[name]]).values())
             for key in ("nll", "repetition", "pmi", "shared_words")]
    lines.append(fmt_row([name] + cells))
  return lines


def _threshold_notes(measured, ratings, t):
  real_nll = percentiles([m["nll"] for m in measured["real"]], (99, 99.9, 100))
  shuf_nll = percentiles([m["nll"] for m in measured["shuffled"]], (0, 1))
  real_rep = percentiles([m["repetition"] for m in measured["real"]], (99, 100))
  loop_rep = percentiles([m["repetition"] for m in measured["looped"]], (0,))
  greedy_rep = np.array([m["repetition"] for m in measured["greedy"]])
  rel = relevance_detail(measured)
  real_ok = np.mean([m["nll"] <= t.fluent_nll for m in measured["real"]])
  shuf_broken = np.mean([m["nll"] > t.broken_nll for m in measured["shuffled"]])
  return ["", "## Why these thresholds", "",
          f"* Fluency, NLL: real continuations reach {real_nll[99]:.2f} nats/token (p99), "
          f"{real_nll[99.9]:.2f} (p99.9) and {real_nll[100]:.2f} (max); shuffled words start at "
          f"{shuf_nll[0]:.2f} (min), {shuf_nll[1]:.2f} (p1). With `fluent_nll = {t.fluent_nll}` "
          f"{pct(real_ok)} of real continuations count as fluent, and with `broken_nll = "
          f"{t.broken_nll}` {pct(shuf_broken)} of shuffled ones as broken; the gap between "
          "them gives 1 to text that reads partly wrong.",
          f"* Fluency, repetition: real continuations repeat at most {real_rep[100]:.2f} of their "
          f"word 3-grams (p99 {real_rep[99]:.2f}); looped texts repeat {loop_rep[0]:.2f} or more "
          "while their NLL often looks fluent, which is why the "
          f"repetition measure is there. `fluent_repetition = {t.fluent_repetition}` leaves room "
          f"for a story's own refrains; above `broken_repetition = {t.broken_repetition}` a text "
          "is a loop. The unsteered model's own greedy text sometimes loops: "
          f"{pct(np.mean(greedy_rep > t.fluent_repetition))} of it repeats more than "
          f"{t.fluent_repetition} of its 3-grams, {pct(np.mean(greedy_rep > t.broken_repetition))} "
          f"more than {t.broken_repetition}.",
          f"* Instruction (relevance): {pct(rel['real'][0])} of real continuations share no "
          f"content word with their opening (pronoun-only sentences such as \"She smiled.\"), "
          f"against {pct(rel['mismatched'][0])} of mismatched ones, so word overlap alone would "
          "fail real text; the PMI points (>= "
          f"{t.related_pmi} and >= {t.strongly_related_pmi} nats/token) cover those. Real "
          f"continuations get 0 / 1 / 2 = {shares(ratings['real'], 'instruction_score')}, "
          f"mismatched ones {shares(ratings['mismatched'], 'instruction_score')}. TinyStories "
          "openings are generic, so another story's text can still fit an opening; those land "
          "at 1 more often than at 2.",
          "* Concept: the word count (none 0, once 1, twice or more 2). A real continuation that "
          "shows the concept usually names it once, so it gets 1; a 2 takes a text that keeps "
          "coming back to the concept."]


def _confusion_lines(confusion):
  lines = ["", "## Concept rating on real text (counts rated 0 / 1 / 2)", "",
           "`y_c`: the benchmark's training continuations. `with` / `without`: the real "
           "continuation windows above (opening's next tokens), split by whether they use one of "
           "the concept's words. `without` can only be 0, since the rating sees nothing but the "
           "words; it is listed for the base rates.", "",
           fmt_row(["concept", "y_c", "with a concept word", "without"]), fmt_row(["---"] * 4)]
  totals = collections.defaultdict(lambda: np.zeros(3, int))
  for name, rows in confusion.items():
    lines.append(fmt_row([name] + [" / ".join(map(str, counts)) for counts in rows.values()]))
    for row, counts in rows.items():
      totals[row] += counts
  lines.append(fmt_row(["**all**"] + [" / ".join(map(str, totals[r])) for r in
                                       ("y_c", "with", "without")]))
  return lines


def print_console(measured, ratings, confusion):
  for name in SETS + ("y_c",):
    parts = [f"{k.split('_')[0]} " + "/".join(f"{x:.2f}" for x in distribution(ratings[name], k))
             for k in RATINGS]
    nll = percentiles([m["nll"] for m in measured[name]], (0, 50, 100))
    print(f"{name:11s} " + "  ".join(parts) + "  nll min/med/max " +
          "/".join(f"{v:.2f}" for v in nll.values()))
  print("concept rating, counts of 0/1/2:  y_c | with a concept word | without")
  for name, rows in confusion.items():
    print(f"  {name:7s} " + " | ".join("/".join(map(str, c)) for c in rows.values()))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data-root", default=None)
  parser.add_argument("--stories", type=int, default=None, help="use only the first N stories")
  parser.add_argument("--continuation-tokens", type=int, default=ts.CONTINUATION_TOKENS)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=os.path.join("docs", "judge_calibration.md"))
  args = parser.parse_args(argv)

  started = time.time()
  root = paths.data_root(args.data_root)
  if root is None:
    sys.exit("set STEERJAX_DATA (or --data-root) to the folder holding stories260K/")
  model, params = load(os.path.join(root, MODEL))
  tokenizer = load_tokenizer(os.path.join(root, MODEL))
  stories = ts.load_stories(root, limit=args.stories)
  real = real_items(stories, tokenizer, args.continuation_tokens)
  sets = text_sets(real, model, params, tokenizer, args.continuation_tokens, args.seed)
  y_c_items = training_continuations(stories, tokenizer)
  judge = OfflineJudge(model, params, tokenizer)
  measured, ratings = measure_sets(judge, real, sets, y_c_items)
  confusion = concept_confusion(real, y_c_items)
  seconds = time.time() - started

  print_console(measured, ratings, confusion)
  text = report(len(stories), real, measured, ratings, confusion, seconds,
                args.continuation_tokens)
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    f.write(text)
  print(f"wrote {args.out} ({seconds:.0f} s)")


if __name__ == "__main__":
  main()
