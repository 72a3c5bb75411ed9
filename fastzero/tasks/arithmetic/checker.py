"""The arithmetic task's reward: an exact integer checker (never eval), linear in the response length.

## Scoring rules

The response is the generated text only (not the prompt).

1. **Extraction** (the same rule as Countdown's). The answer is the *last* match of
   `re.findall(r"<answer>(.*?)</answer>", response, re.DOTALL)`: non-greedy, scanned left to right,
   non-overlapping. No match: reward **0.0**.
2. **Strip.** Only `' '`, `'\\t'`, `'\\n'`, `'\\r'` are stripped from both ends.
3. **Integer.** What is left must be, in full:
   - an optional sign, `+` or `-`, directly before the first digit;
   - ASCII digits `0-9` (no other Unicode digits), at most 100 of them;
   - either no commas, or commas as thousands separators: a first group of 1-3 digits, then groups
     of exactly 3 (`1,234,567`; not `12,34`, `1,,234`, `,123` or `123,`);
   - no leading zero unless the number is `0` itself (`07`, `0,123` are invalid; `-0` and `+0` are 0).
   Anything else is invalid: inner whitespace (`1 000`), decimals (`12.0`, `12.`), exponents
   (`1e3`), units or currency (`$12`, `12 apples`), underscores (`1_000`), expressions (`3+4`).
4. **Reward.** A valid integer equal to the problem's answer: `correct_score` (1.0). An answer tag
   with anything else (a wrong number or any invalid case above): `format_score` (0.1).

GSM8K's reference answers (the text after `####`) are read with the same integer rule, so a model
answer and a dataset answer that print the same number always agree.
"""
from __future__ import annotations

from typing import Sequence

OPEN, CLOSE = "<answer>", "</answer>"
STRIP = " \t\n\r"
MAX_DIGITS = 100
_DIGITS = frozenset("0123456789")


def extract_answer(response: str) -> str | None:
    """The content of the last `<answer>...</answer>` (regex-findall semantics), or None.

    Equivalent to `re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)[-1]`, but linear: a match
    starting at an open tag ends at the first close tag after it, and once an open tag has no close
    tag after it, no later one has either."""
    last, position = None, 0
    while True:
        start = response.find(OPEN, position)
        if start < 0:
            return last
        end = response.find(CLOSE, start + len(OPEN))
        if end < 0:
            return last
        last, position = response[start + len(OPEN):end], end + len(CLOSE)


def parse_integer(text: str) -> int | None:
    """The integer `text` spells under rule 3 above (after stripping), or None when it is invalid."""
    text = text.strip(STRIP)
    sign = 1
    if text[:1] in ("+", "-"):
        sign, text = (-1 if text[0] == "-" else 1), text[1:]
    if not text or text[0] not in _DIGITS:
        return None
    groups = text.split(",")
    if any(not group or not _DIGITS.issuperset(group) for group in groups):
        return None
    if len(groups) > 1 and (len(groups[0]) > 3 or any(len(g) != 3 for g in groups[1:])):
        return None
    digits = "".join(groups)
    if len(digits) > MAX_DIGITS or (digits[0] == "0" and len(digits) > 1):
        return None
    return sign * int(digits)


def score(response: str, answer: int, *, format_score: float = 0.1, correct_score: float = 1.0) -> float:
    """Reward of one response for a problem whose answer is `answer`."""
    content = extract_answer(response)
    if content is None:
        return 0.0
    return correct_score if parse_integer(content) == answer else format_score


def score_batch(responses: Sequence[str], answers: Sequence[int], *, format_score: float = 0.1,
                correct_score: float = 1.0) -> list[float]:
    if len(responses) != len(answers):
        raise ValueError(f"responses and answers must have the same length, got {len(responses)} and {len(answers)}")
    for i, response in enumerate(responses):
        if not isinstance(response, str):
            raise TypeError(f"responses[{i}] must be a str, got {type(response).__name__}")
    return [score(r, a, format_score=format_score, correct_score=correct_score) for r, a in zip(responses, answers)]
