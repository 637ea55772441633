"""The judge's three rating prompts (concept, instruction, fluency) and its reply parser.

`judge.templates` picks the prompts:
  steerjax  ours (below), the offline default
  prosv     the 0..2 templates of the paper's authors (colored-dye/prosv,
            `src/reft/llm_judge.py`), AxBench's wording; the paper configs' default
  axbench   AxBench's own (stanfordnlp/axbench, `axbench/evaluators/prompt_templates.py`) at
            the commit the paper cites
  a path    a `.py` file in AxBench's layout (its three constant names) or a `.json` file
            {"concept": ..., "instruction": ..., "fluency": ...}
`prosv` and `axbench` are read at run time from their pinned commit and cached (or from a
local clone given as `judge.templates_repo`); their text is never copied here.
Every template uses the placeholders `{concept}`, `{instruction}` and `{sentence}` (the
rated text). Each asks for an explanation ending in `Rating: [[k]]`; the last rating in the
reply counts, and anything unreadable or out of range counts as 0.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Mapping, Optional, Tuple

from steerjax import pinned
from steerjax.pinned import constants_of

KINDS = ("concept", "instruction", "fluency")
MAX_RATING = 2

_ANSWER_FORMAT = """\
First explain your judgement in two or three sentences. Then finish with one last line of \
exactly this form, where k is 0, 1 or 2:
Rating: [[k]]"""

CONCEPT_PROMPT = """\
You are grading a piece of text on a single question: does it bring in the given concept?

Concept: {concept}

Text:
{sentence}

Scale:
0 - the concept is absent from the text.
1 - the concept shows up only partly, vaguely, or in a forced, awkward way.
2 - the concept is clearly present in the text.

Grade only the presence of the concept; ignore grammar, style and whether the text \
follows any request.
""" + _ANSWER_FORMAT

INSTRUCTION_PROMPT = """\
You are grading a piece of text on a single question: is it a response related to the \
given instruction?

Instruction: {instruction}

Text:
{sentence}

Scale:
0 - the text has nothing to do with the instruction.
1 - the text is somewhat related to the instruction, or addresses it only in part.
2 - the text clearly relates to and addresses the instruction.

Grade only how the text relates to the instruction; ignore grammar, style and any \
unrelated topic the text drifts into.
""" + _ANSWER_FORMAT

FLUENCY_PROMPT = """\
You are grading a piece of text on a single question: how fluent is it?

Text:
{sentence}

Scale:
0 - the text is incomprehensible, broken, or keeps repeating itself.
1 - the text is somewhat fluent: mostly readable, with clumsy or broken passages.
2 - the text is fluent, natural language.

Grade only the quality of the language; ignore what the text is about and whether it \
follows any request.
""" + _ANSWER_FORMAT

PROMPTS = {"concept": CONCEPT_PROMPT, "instruction": INSTRUCTION_PROMPT,
           "fluency": FLUENCY_PROMPT}

AXBENCH_NAMES = {"concept": "UNIDIRECTIONAL_PAIRWISE_EVALUATION_CONCEPT_RELEVANCE_TEMPLATE",
                 "instruction": "UNIDIRECTIONAL_PAIRWISE_EVALUATION_INSTRUCTION_RELEVANCE_TEMPLATE",
                 "fluency": "UNIDIRECTIONAL_PAIRWISE_EVALUATION_FLUENCY_TEMPLATE"}


@dataclasses.dataclass(frozen=True)
class Pinned:
  """Three template constants in one file of a GitHub repository at a fixed commit."""
  repo: str
  commit: str
  path: str
  names: Mapping[str, str]   # kind -> constant name


PINNED = {
    # The paper's authors' judge (0..2 on every criterion).
    "prosv": Pinned("colored-dye/prosv", "1f315aaf63c98c5fe6f3bca4c825726495f0b499",
                    "src/reft/llm_judge.py", {"concept": "CONCEPT_TEMPLATE",
                                              "instruction": "RELEVANCE_TEMPLATE",
                                              "fluency": "FLUENCY_TEMPLATE"}),
    # AxBench at the commit of the paper's footnote 1.
    "axbench": Pinned("stanfordnlp/axbench", "c01a22adcc6a2e1d3ec663c7577afac85ae03771",
                      "axbench/evaluators/prompt_templates.py", AXBENCH_NAMES),
}


@dataclasses.dataclass(frozen=True)
class Templates:
  """One prompt per criterion, named by where it came from."""
  name: str
  prompts: Tuple[Tuple[str, str], ...]   # ((kind, template), ...) in KINDS order

  @property
  def digest(self) -> str:
    """sha256 of the three templates: part of every rating's cache key."""
    return hashlib.sha256(json.dumps(self.prompts).encode("utf-8")).hexdigest()

  def render(self, kind: str, item: Mapping[str, str]) -> str:
    return dict(self.prompts)[kind].format(concept=item["concept"],
                                           instruction=item["instruction"],
                                           sentence=item["continuation"])


def _make(name: str, prompts: Mapping[str, str], where: str) -> Templates:
  missing = [k for k in KINDS if k not in prompts]
  if missing:
    raise ValueError(f"{where}: no template for {missing}")
  for kind in KINDS:
    try:
      prompts[kind].format(concept="", instruction="", sentence="")
    except (KeyError, IndexError, ValueError) as err:
      raise ValueError(f"{where}: the {kind} template has a placeholder other than "
                       f"{{concept}}, {{instruction}}, {{sentence}} ({err!r})") from None
  return Templates(name, tuple((k, prompts[k]) for k in KINDS))


STEERJAX = _make("steerjax", PROMPTS, "steerjax.eval.templates")


def load(source: str = "steerjax", cache_dir: str = "", local_clone: str = "") -> Templates:
  """The templates `judge.templates` names (see the module docstring)."""
  if source == "steerjax":
    return STEERJAX
  if source in PINNED:
    pin = PINNED[source]
    path = pinned.fetch(pin.repo, pin.commit, pin.path, cache_dir, local_clone)
    where = path if local_clone else f"{pin.repo}@{pin.commit[:12]}:{pin.path}"
    with open(path, encoding="utf-8") as f:
      text = f.read()
    return _make(f"{source}@{pin.commit[:12]}", constants_of(text, pin.names, where), where)
  if not os.path.exists(source):
    raise ValueError(f"judge.templates={source!r}: use 'steerjax', {', '.join(map(repr, PINNED))}"
                     " or the path of a .py (AxBench's layout) or .json templates file")
  with open(source, encoding="utf-8") as f:
    text = f.read()
  prompts = (json.loads(text) if source.endswith(".json")
             else constants_of(text, AXBENCH_NAMES, source))
  return _make(f"file:{os.path.basename(source)}", prompts, source)


# `Rating:` (any case, markdown bold around it allowed), then the number, with any of
# `*`, `[`, `]`, quotes and spaces in between, as AxBench's parser strips them.
_RATING = re.compile(r"rating\s*\**\s*:", re.IGNORECASE)
_VALUE = re.compile(r"[\s*\[\]\"']*(-?\d+(?:\.\d+)?)")


def render_prompt(kind: str, item: Mapping[str, str]) -> str:
  """The steerjax judge prompt for criterion `kind` of one item."""
  return STEERJAX.render(kind, item)


def parse_rating(text: Optional[str]) -> Tuple[float, bool]:
  """-> (rating, ok) from the last `Rating:` in `text` (AxBench's rule: any number in 0..2,
  fractions included, so 1.5 counts); (0, False) if there is none, or what follows it is
  not a number in 0..2."""
  marks = list(_RATING.finditer(text or ""))
  if not marks:
    return 0, False
  value = _VALUE.match(text, marks[-1].end())
  if not value:
    return 0, False
  number = float(value.group(1))
  if not 0 <= number <= MAX_RATING:
    return 0, False
  return (int(number) if number == int(number) else number), True
