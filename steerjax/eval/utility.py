"""The paper's utility benchmarks (tinyMMLU, tinyGSM8K; its Section 6.4 and App. M): prompts,
answer scoring and accuracy.

Each item's `input_formatted` (tinyBenchmarks' column: five solved examples, then the
question) becomes a multi-turn chat, five user/assistant turns and the question, as the
paper's authors built it; a steering prompt (the prompting baseline) goes before the last
question. GSM8K answers are scored by the paper's rule (App. M.1, the authors'
`tinygsm8k_eval`: correct when any number in the answer equals the gold one) and, beside it,
by lm-eval's own extraction (its tinyGSM8k `flexible-extract` and `strict-match` filters,
the last number and `#### n`); MMLU answers by a judge's
verdict on the generated text (the paper's way) and, beside it, by the answer letter's
log-likelihood (lm-eval's standard, run through lm-eval). Accuracy is the plain mean.
"""

from __future__ import annotations

import json
import os
import re
from typing import List, Optional, Sequence

import numpy as np

from steerjax import paths

LETTERS = ("A", "B", "C", "D")
# lm-eval 0.4.13 tasks/tinyBenchmarks/tinyGSM8k.yaml
GSM8K_FILTERS = {"flexible": ("(-?[$0-9.,]{2,})|(-?[0-9]+)", -1),
                 "strict": ("#### (\\-?[0-9\\.\\,]+)", 0)}
GSM8K_IGNORE = (",", "\\$", "(?s).*#### ", "\\.$")
GSM8K_MODES = ("paper",) + tuple(GSM8K_FILTERS)
# The paper's rule (prosv experiments/benchmark/benchmark_utils.py, tinygsm8k_eval and
# extract_answer_numbers): commas dropped, every number `-?\d+\.?\d*` compared to the
# answer, both rounded to 3 decimals, within 1e-3.
_NUMBER = re.compile(r"-?\d+\.?\d*")
HUB = {"tinymmlu": ("tinyBenchmarks/tinyMMLU", "all"), "tinygsm8k": ("tinyBenchmarks/tinyGSM8k",
                                                                     "main")}
MMLU_JUDGE_REQUEST = """\
A student answered a multiple-choice question. Decide whether the student's answer picks \
the correct option, by its letter or by its text; ignore any extra text around it.

Question and options:
{question}

Correct option: {correct}

Student's answer:
{response}

Explain in one sentence, then finish with one last line of exactly this form, 1 if the \
answer picks the correct option and 0 if it does not or picks none:
Rating: [[k]]"""


def load_items(name: str, source: str = "", data_root: Optional[str] = None) -> List[dict]:
  """The test items of `name` (tinymmlu | tinygsm8k): from a local `.jsonl`/`.parquet` file
  in the tinyBenchmarks schema if `source` is one, else the hub dataset."""
  if source and os.path.exists(source):
    if source.endswith(".jsonl"):
      with open(source, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    else:
      import pandas as pd
      rows = pd.read_parquet(source).to_dict("records")
  else:
    import datasets
    repo, subset = HUB[name] if not source else (source, HUB[name][1])
    rows = list(datasets.load_dataset(repo, subset, split="test"))
  need = ("input_formatted", "answer") if name == "tinymmlu" else ("question", "answer")
  for i, row in enumerate(rows):
    missing = [k for k in need if k not in row]
    if missing:
      raise ValueError(f"{source or name} item {i}: no {missing}; the tinyBenchmarks schema has "
                       f"{list(need)}")
  return rows


def _mmlu_turns(text: str) -> List[dict]:
  """tinyMMLU's `input_formatted` as chat turns: each solved example a user turn (the task
  line, the question, its options, "Answer:") and an assistant turn ("The answer is: X.")."""
  head = re.match(r"The following .*\n", text)
  task = head.group(0).strip() if head else ""
  body = text[head.end():] if head else text
  parts = body.split("Answer:")
  messages = []
  for k, part in enumerate(parts[:-1]):
    question = part.strip()
    if k:   # the letter that answered the previous question opens this part
      letter, _, question = question.partition("\n")
      messages.append({"role": "assistant", "content": f"The answer is: {letter.strip()}."})
      question = question.strip()
    messages.append({"role": "user", "content": f"{task}\n\n{question}\nAnswer:".lstrip()})
  return messages


def _gsm8k_turns(text: str) -> List[dict]:
  """tinyGSM8K's `input_formatted` as chat turns: each solved example's question a user
  turn and its worked answer an assistant turn; the last question alone."""
  messages = []
  for block in text.split("\n\n"):
    question = re.search(r"Question:.*", block)
    answer = re.search(r"Answer: .*", block, re.DOTALL)
    if question:
      messages.append({"role": "user", "content": question.group(0).strip()})
    if answer and question:
      messages.append({"role": "assistant", "content": answer.group(0).strip()})
  return messages


def chat(name: str, item: dict, steering_prompt: str = "",
         shots: Sequence[dict] = ()) -> List[dict]:
  """The item's multi-turn chat; `steering_prompt` goes before the last question. A GSM8K
  item without `input_formatted` takes `shots` (items with question and answer)."""
  if name == "tinymmlu":
    messages = _mmlu_turns(item["input_formatted"])
  elif item.get("input_formatted"):
    messages = _gsm8k_turns(item["input_formatted"])
  else:
    messages = []
    for shot in shots:
      messages += [{"role": "user", "content": f"Question: {shot['question']}"},
                   {"role": "assistant", "content": f"Answer: {shot['answer']}"}]
    messages.append({"role": "user", "content": f"Question: {item['question']}"})
  if steering_prompt:
    messages[-1] = dict(messages[-1], content=f"{steering_prompt}\n\n{messages[-1]['content']}")
  return messages


def _normalise(text: str) -> str:
  for pattern in GSM8K_IGNORE:
    text = re.sub(pattern, "", text)
  return text.strip().lower()


def gsm8k_answer(item: dict) -> str:
  return _normalise(item["answer"].split("####")[-1])


def _numbers(text: str) -> List[float]:
  return [float(n) for n in _NUMBER.findall(text.replace(",", ""))]


def gsm8k_any_number(response: str, item: dict) -> bool:
  """The paper's rule: any number in `response` equals the gold answer (3 decimals)."""
  gold = round(float(item["answer"].split("####")[-1].strip().replace(",", "")), 3)
  return any(abs(round(n, 3) - gold) < 1e-3 for n in _numbers(response))


def gsm8k_correct(responses: Sequence[str], items: Sequence[dict], mode: str = "paper"
                  ) -> List[bool]:
  """Whether each response is right: `paper`, any number in it equals the gold answer (the
  table's rule); `flexible` / `strict`, the number lm-eval's tinyGSM8k filter extracts (the
  last one / `#### n`) equals it after lm-eval's exact-match normalisation."""
  if mode not in GSM8K_MODES:
    raise ValueError(f"GSM8K scoring mode={mode!r}; use one of {GSM8K_MODES}")
  if mode == "paper":
    return [gsm8k_any_number(r, item) for r, item in zip(responses, items)]
  from lm_eval.filters.extraction import RegexFilter
  pattern, group = GSM8K_FILTERS[mode]
  extracted = RegexFilter(regex_pattern=pattern, group_select=group).apply(
      [[r] for r in responses], list(items))
  return [_normalise(e[0]) == gsm8k_answer(item) for e, item in zip(extracted, items)]


def mmlu_letter(item: dict) -> str:
  answer = item["answer"]
  return LETTERS[int(answer)] if not isinstance(answer, str) else answer.strip()


def mmlu_judge_requests(items: Sequence[dict], responses: Sequence[str]) -> List[str]:
  """One grading request per answer: the question with its options (the item's last
  question in `input_formatted`), the correct option and the response."""
  out = []
  for item, response in zip(items, responses):
    question = item["input_formatted"].split("Answer:")[-2].split("\n", 1)[-1].strip()
    letter = mmlu_letter(item)
    choices = item.get("choices")
    correct = f"{letter}" + (f". {choices[LETTERS.index(letter)]}" if choices is not None else "")
    out.append(MMLU_JUDGE_REQUEST.format(question=question, correct=correct,
                                         response=response.strip()))
  return out


def mmlu_task(items_path: str, steering_prompt: str = "") -> dict:
  """lm-eval's tinyMMLU protocol as an inline task over a local file: the answer letter
  with the highest log-likelihood after `input_formatted`, plain accuracy (`acc`)."""
  doc_to_text = "{{input_formatted}}"
  if steering_prompt:
    prefix = steering_prompt + "\n\n"
    doc_to_text = lambda doc: prefix + doc["input_formatted"]
  return {"task": "steerjax_tinymmlu", "dataset_path": "json",
          "dataset_kwargs": {"data_files": {"test": items_path}}, "test_split": "test",
          "output_type": "multiple_choice", "doc_to_text": doc_to_text,
          "doc_to_choice": list(LETTERS), "doc_to_target": "answer",
          "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}


# ---------------------------------------------------------------- MMLU from its own files

MMLU_HUB = "cais/mmlu"


def _mmlu_local(root: str, split: str):
  import pandas as pd
  folder = os.path.join(root, "mmlu", split)
  frames = []
  for name in sorted(os.listdir(folder)):
    frame = pd.read_csv(os.path.join(folder, name))
    frame["subject"] = name[:-len(f"_{split}.csv")]
    frame["choices"] = frame[[f"choice{k}" for k in range(4)]].astype(str).values.tolist()
    frames.append(frame[["subject", "question", "choices", "answer"]])
  return pd.concat(frames, ignore_index=True)


def mmlu_frames(data_root: Optional[str] = None):
  """(dev, test) MMLU rows [subject, question, choices, answer 0..3]: the csv files under
  `<data root>/mmlu/{dev,test}` (header question,choice0..3,answer; the data root is
  `data_root`, else $STEERJAX_DATA), else the hub's `cais/mmlu`."""
  root = paths.data_root(data_root)
  if root and os.path.isdir(os.path.join(root, "mmlu", "test")):
    return _mmlu_local(root, "dev"), _mmlu_local(root, "test")
  from datasets import load_dataset
  hub = load_dataset(MMLU_HUB, "all")
  return hub["dev"].to_pandas(), hub["test"].to_pandas()


def _mmlu_question(row) -> str:
  options = "\n".join(f"{letter}. {str(c).strip()}" for letter, c in zip(LETTERS, row["choices"]))
  return f"{str(row['question']).strip()}\n{options}\nAnswer:"


def mmlu_items(n: int, max_tokens: int, count_tokens, seed: int = 0,
               data_root: Optional[str] = None) -> List[dict]:
  """`n` MMLU test items in tinyMMLU's schema: `input_formatted` is lm-eval's 5-shot prompt
  (the subject's five dev questions with their answers, then the question). Drawn in a
  `seed`-shuffled order among the items whose prompt is at most `max_tokens` long
  (`count_tokens(text) -> int`)."""
  dev, test = mmlu_frames(data_root)
  shots = {}
  for subject, rows in dev.groupby("subject"):
    head = ("The following are multiple choice questions (with answers) about "
            f"{subject.replace('_', ' ')}.\n\n")
    shots[subject] = head + "".join(f"{_mmlu_question(r)} {LETTERS[int(r['answer'])]}\n\n"
                                    for _, r in rows.head(5).iterrows())
  out = []
  for i in np.random.default_rng(seed).permutation(len(test)):
    row = test.iloc[int(i)]
    text = shots[row["subject"]] + _mmlu_question(row)
    if count_tokens(text) <= max_tokens:
      out.append({"subject": row["subject"], "question": str(row["question"]),
                  "choices": [str(c) for c in row["choices"]], "answer": int(row["answer"]),
                  "input_formatted": text})
      if len(out) == n:
        return out
  raise ValueError(f"only {len(out)} MMLU items fit utility.mmlu_max_tokens={max_tokens}; "
                   f"raise it or lower utility.mmlu_items={n}")
