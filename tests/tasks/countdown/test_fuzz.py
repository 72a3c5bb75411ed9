"""Time-bounded fuzzing of the C++ verifier against the pure-Python oracle.

Runs FASTZERO_FUZZ_SECONDS (default 10) seconds from seed FASTZERO_FUZZ_SEED (default 0). Inputs mix
answer-tag fragments, operators, digits, whitespace variants, arbitrary Unicode (lone surrogates
too), valid expressions with random edits, and answers buried in long reasoning; they go through
`score` and, in batches with a random thread count, `score_batch`. Any disagreement or crash fails.
"""
import os
import random
import time

from fastzero import _countdown  # noqa: F401  (the extension must be built for this test)
from fastzero.tasks.countdown.reference import evaluate_answer, reference_score
from fastzero.tasks.countdown.verifier import score, score_batch

FRAGMENTS = ["<answer>", "</answer>", "<answer", "answer>", "</", "<", ">", "(", ")", "((", "))",
             "+", "-", "*", "/", "**", "//", ".", "%", "=", "0", "00", "05", "1", "3", "7", "12", "19",
             "4611686018427387904", "2147483648", "99999999999999999999", " ", "\t", "\n", "\r",
             "\x0b", "\x0c", "\u00a0", "\u2009", "\u3000", "\uff11", "\u0661", "\x00", "é", "→", "😀",
             "\ud800", "\udbff\udc00", "\udfff", "<think>", "</think>", "Let me compute: "]
NUMBER_POOL = [0, 1, 3, 7, 12, 19, 2147483648]


def random_char(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.5:
        return chr(rng.randrange(32, 127))
    if kind < 0.8:
        return chr(rng.randrange(0, 0x800))
    if kind < 0.9:
        return chr(rng.randrange(0xD800, 0xE000))  # lone surrogates
    return chr(rng.randrange(0, 0x110000))


def random_expression(rng: random.Random, numbers: list[int]) -> str:
    parts = [str(numbers[0])]
    for x in numbers[1:]:
        parts.append(rng.choice("+-*/"))
        parts.append(str(x))
    if len(parts) >= 3 and rng.random() < 0.5:
        i = rng.randrange(0, len(parts) - 2, 2)
        parts[i] = "(" + parts[i]
        parts[i + 2] = parts[i + 2] + ")"
    return rng.choice(["", " ", "\n"]).join(parts)


def value_or(expression: str, numbers: list[int], default: int) -> int:
    """The expression's value when it is a valid integer answer (so that correct answers are common)."""
    try:
        value = evaluate_answer(expression, numbers)
    except Exception:
        return default
    return int(value) if value.denominator == 1 else default


def random_input(rng: random.Random) -> tuple[str, list[int], int]:
    numbers = rng.sample(NUMBER_POOL, rng.randrange(0, 4)) if rng.random() < 0.8 else [
        rng.randrange(0, 30) for _ in range(rng.randrange(1, 5))]
    target = rng.choice([0, 1, 7, 19, 21, 84, -2, rng.randrange(-50, 200)])
    style = rng.random()
    if style < 0.35:
        text = "".join(rng.choice(FRAGMENTS) if rng.random() < 0.7 else random_char(rng)
                       for _ in range(rng.randrange(0, 60)))
    elif style < 0.75:
        expression = random_expression(rng, numbers) if numbers else ""
        target = value_or(expression, numbers, target) if rng.random() < 0.7 else target
        text = f"<answer>{expression}</answer>"
        for _ in range(rng.randrange(0, 4)):
            at = rng.randrange(len(text) + 1)
            insert = rng.choice(FRAGMENTS) if rng.random() < 0.7 else random_char(rng)
            text = text[:at] + insert + text[at + rng.randrange(0, 3):]
    else:
        reasoning = "".join(rng.choice(["We need ", "so ", "7 * 3 = 21. ", "hmm, ", "é→ ", "😀 ", "\n",
                                        "<answer>x</answer> ", "<answer> ", "</answer> "])
                            for _ in range(rng.randrange(0, 80)))
        expression = random_expression(rng, numbers) if numbers else "1"
        target = value_or(expression, numbers, target) if rng.random() < 0.7 else target
        text = reasoning + f"<answer>{expression}</answer>" + rng.choice(["", "\n", "<answer>", "</answer>"])
    return text, numbers, target


def test_fuzz_cpp_against_reference():
    seconds = float(os.environ.get("FASTZERO_FUZZ_SECONDS", "10"))
    seed = int(os.environ.get("FASTZERO_FUZZ_SEED", "0"))
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    checked = 0
    while time.monotonic() < deadline:
        batch = [random_input(rng) for _ in range(200)]
        responses, numbers, targets = map(list, zip(*batch))
        batch_scores = score_batch(responses, numbers, targets, num_threads=rng.choice([1, 2, 3]))
        for (text, nums, target), batch_score in zip(batch, batch_scores):
            expected = reference_score(text, nums, target)
            got = score(text, nums, target)
            assert got == expected == batch_score, (
                f"seed={seed} input #{checked}: {text!r} {nums} {target}: "
                f"score={got} score_batch={batch_score} reference={expected}")
            checked += 1
    print(f"fuzz: {checked} inputs in {seconds:.0f} s (seed {seed}), no mismatches")
    assert checked > 0
