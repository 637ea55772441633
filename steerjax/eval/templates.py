"""The judge's three rating prompts (concept, instruction, fluency) and its reply parser.

Each prompt asks for a brief explanation ending in `Rating: [[k]]`; the last such line
counts, and anything unreadable or out of range counts as 0.
"""

from __future__ import annotations

import re
from typing import Mapping, Optional, Tuple

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
{continuation}

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
{continuation}

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
{continuation}

Scale:
0 - the text is incomprehensible, broken, or keeps repeating itself.
1 - the text is somewhat fluent: mostly readable, with clumsy or broken passages.
2 - the text is fluent, natural language.

Grade only the quality of the language; ignore what the text is about and whether it \
follows any request.
""" + _ANSWER_FORMAT

PROMPTS = {"concept": CONCEPT_PROMPT, "instruction": INSTRUCTION_PROMPT,
           "fluency": FLUENCY_PROMPT}

_RATING = re.compile(r"rating\s*:", re.IGNORECASE)
_VALUE = re.compile(r"\s*\[*\s*(-?\d+(?:\.\d+)?)\s*\]*")


def render_prompt(kind: str, item: Mapping[str, str]) -> str:
  """The judge prompt for criterion `kind` of one item."""
  return PROMPTS[kind].format(concept=item["concept"], instruction=item["instruction"],
                              continuation=item["continuation"])


def parse_rating(text: Optional[str]) -> Tuple[int, bool]:
  """-> (rating, ok) from the last `Rating:` in `text`; (0, False) if unreadable or not 0..2."""
  marks = list(_RATING.finditer(text or ""))
  if not marks:
    return 0, False
  value = _VALUE.match(text, marks[-1].end())
  if not value:
    return 0, False
  number = float(value.group(1))
  if number != int(number) or not 0 <= number <= MAX_RATING:
    return 0, False
  return int(number), True
