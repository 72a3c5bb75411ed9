"""Countdown verifier: every rule by name, argument checks, threads, and hypothesis properties.

Each case runs through both the C++ scorer and the pure-Python oracle (reference_score).
"""
import random
import time
import warnings
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fastzero import _countdown  # noqa: F401  (the extension must be built for these tests)
from fastzero.tasks.countdown import verifier
from fastzero.tasks.countdown.reference import VALUE_LIMIT, reference_score
from fastzero.tasks.countdown.verifier import score, score_batch

SCORERS = {"cpp": score, "reference": reference_score}
BIG = 2**31  # BIG * BIG == 2**62, the first out-of-range value


def answer(expr: str) -> str:
    return f"Let me think.\n<think>7 + 12 = 19</think>\n<answer>{expr}</answer>"


# (name, response, numbers, target, expected reward)
CASES = [
    ("correct", answer("7+12"), [7, 12], 19, 1.0),
    ("correct_reordered_numbers", answer("12+7"), [7, 12], 19, 1.0),
    ("wrong_value", answer("7*12"), [7, 12], 19, 0.1),
    ("no_tag", "7+12", [7, 12], 19, 0.0),
    ("unclosed_tag", "<answer>7+12", [7, 12], 19, 0.0),
    ("tag_case_sensitive", "<Answer>7+12</Answer>", [7, 12], 19, 0.0),
    ("broken_close", "<answer>7+12</answer", [7, 12], 19, 0.0),
    ("empty_answer", "<answer></answer>", [7, 12], 19, 0.1),
    ("blank_answer", "<answer> \n\t\r </answer>", [7, 12], 19, 0.1),
    ("last_tag_wins", "<answer>7*12</answer> no, <answer>7+12</answer>", [7, 12], 19, 1.0),
    ("last_tag_wins_wrong", "<answer>7+12</answer> no, <answer>7*12</answer>", [7, 12], 19, 0.1),
    ("nested_open_tags", "<answer><answer>7+12</answer>", [7, 12], 19, 0.1),
    ("extra_close_tag", "<answer>7+12</answer></answer>", [7, 12], 19, 1.0),
    ("close_before_open", "</answer><answer>7+12</answer>", [7, 12], 19, 1.0),
    ("unclosed_after_closed", "<answer>7+12</answer><answer>7*12", [7, 12], 19, 1.0),
    ("tags_across_lines", "<answer>\n7\n+\n12\n</answer>", [7, 12], 19, 1.0),
    ("allowed_whitespace", "<answer>\r\n\t 7 \t+\r\n 12 \n</answer>", [7, 12], 19, 1.0),
    ("vertical_tab", answer("7\x0b+12"), [7, 12], 19, 0.1),
    ("form_feed_strip", answer("\x0c7+12"), [7, 12], 19, 0.1),
    ("nbsp_inside", answer("7\u00a0+12"), [7, 12], 19, 0.1),
    ("nbsp_not_stripped", answer("7+12\u00a0"), [7, 12], 19, 0.1),
    ("fullwidth_digit", answer("\uff17+12"), [7, 12], 19, 0.1),
    ("latin1_superscript_digit", answer("7+1\u00b2"), [7, 12], 19, 0.1),
    ("wide_unit_low_byte_is_plus", answer("7\u012b12"), [7, 12], 19, 0.1),
    ("astral_unit_low_bytes_are_plus", answer("7\U0001002b12"), [7, 12], 19, 0.1),
    ("arabic_indic_digit", answer("\u0667+12"), [7, 12], 19, 0.1),
    ("nul", answer("7+12\x00"), [7, 12], 19, 0.1),
    ("letters", answer("x=7+12"), [7, 12], 19, 0.1),
    ("equals_sign", answer("7+12=19"), [7, 12], 19, 0.1),
    ("dot", answer("1.5*10"), [1, 5, 10], 15, 0.1),
    ("percent", answer("19%20"), [19, 20], 19, 0.1),
    ("floor_division", answer("39//2"), [39, 2], 19, 0.1),
    ("power", answer("2**3+5"), [2, 3, 5], 13, 0.1),
    ("power_tower", answer("9**9**9"), [9, 9, 9], 1, 0.1),
    ("leading_zero", answer("07+12"), [7, 12], 19, 0.1),
    ("double_zero", answer("00+19"), [0, 19], 19, 0.1),
    ("zero_literal", answer("0+19"), [0, 19], 19, 1.0),
    ("unary_minus", answer("-7+26"), [7, 26], 19, 0.1),
    ("unary_minus_in_parens", answer("26+(-7)"), [7, 26], 19, 0.1),
    ("unary_plus", answer("+7+12"), [7, 12], 19, 0.1),
    ("negative_result", answer("3-5"), [3, 5], -2, 1.0),
    ("digits_split_by_space", answer("1 9"), [1, 9], 19, 0.1),
    ("trailing_operator", answer("7+12+"), [7, 12], 19, 0.1),
    ("unbalanced_open", answer("(7+12"), [7, 12], 19, 0.1),
    ("unbalanced_close", answer("7+12)"), [7, 12], 19, 0.1),
    ("empty_parens", answer("()7+12"), [7, 12], 19, 0.1),
    ("implicit_multiplication", answer("2(7+12)"), [2, 7, 12], 38, 0.1),
    ("number_missing", answer("7+12"), [7, 12, 3], 19, 0.1),
    ("number_reused", answer("7+7+5"), [7, 5], 19, 0.1),
    ("number_not_given", answer("7+12"), [7, 13], 19, 0.1),
    ("duplicate_numbers", answer("7+7+5"), [7, 7, 5], 19, 1.0),
    ("no_numbers", answer("19"), [], 19, 0.1),
    ("twenty_numbers", answer("+".join(["1"] * 19 + ["2"])), [1] * 19 + [2], 21, 1.0),
    ("twenty_numbers_one_wrong", answer("+".join(["1"] * 20)), [1] * 19 + [2], 20, 0.1),
    ("512_numbers", answer("+".join(["1"] * 512)), [1] * 512, 512, 1.0),
    ("513_numbers_too_long", answer("+".join(["1"] * 513)), [1] * 513, 513, 0.1),
    ("single_number", answer("19"), [19], 19, 1.0),
    ("exact_fractions", answer("(1+1/3)*3"), [1, 1, 3, 3], 4, 1.0),
    ("fraction_result", answer("7/2"), [7, 2], 3, 0.1),
    ("float_would_round", answer("1/3*3"), [1, 3, 3], 1, 1.0),
    ("division_by_zero", answer("7/(12-12)"), [7, 12, 12], 19, 0.1),
    ("zero_divided", answer("0/7+19"), [0, 7, 19], 19, 1.0),
    ("division_by_zero_times_zero", answer("7/0*0"), [7, 0, 0], 0, 0.1),
    ("value_limit_minus_one", answer(f"{VALUE_LIMIT - 1}*1"), [VALUE_LIMIT - 1, 1], VALUE_LIMIT - 1, 1.0),
    ("literal_at_limit", answer(f"{VALUE_LIMIT}"), [VALUE_LIMIT], VALUE_LIMIT, 0.1),
    ("sum_reaches_limit", answer(f"{VALUE_LIMIT - 1}+1-1"), [VALUE_LIMIT - 1, 1, 1], VALUE_LIMIT - 1, 0.1),
    ("nineteen_digit_literal", answer(f"{10**18}+1"), [10**18, 1], 10**18 + 1, 1.0),
    ("intermediate_overflow", answer(f"{BIG}*{BIG}*0"), [BIG, BIG, 0], 0, 0.1),
    ("no_overflow_other_tree", answer(f"{BIG}*({BIG}*0)"), [BIG, BIG, 0], 0, 1.0),
    ("denominator_overflow", answer(f"1/{BIG}/{BIG}*0"), [1, BIG, BIG, 0], 0, 0.1),
    ("denominator_below_limit", answer(f"1/{VALUE_LIMIT - 1}*{VALUE_LIMIT - 1}"),
     [1, VALUE_LIMIT - 1, VALUE_LIMIT - 1], 1, 1.0),
    ("huge_literal", answer("99999999999999999999999999+1"), [1, 2], 3, 0.1),
    ("literal_wrapping_uint64", answer(f"{2**64 + 2}+1"), [2, 1], 3, 0.1),
    ("surrogates_outside", "\ud800 <answer>7+12</answer> \udfff", [7, 12], 19, 1.0),
    ("surrogate_inside", answer("7+12\udc00"), [7, 12], 19, 0.1),
    ("two_byte_text", "Ответ → <answer>7+12</answer>", [7, 12], 19, 1.0),
    ("four_byte_text", "🤔 <answer>7+12</answer> ✅😀", [7, 12], 19, 1.0),
    ("depth_100", answer("(" * 100 + "7+12" + ")" * 100), [7, 12], 19, 1.0),
    ("depth_101", answer("(" * 101 + "7+12" + ")" * 101), [7, 12], 19, 0.1),
    ("length_1024", answer("7" + " " * 1020 + "+12"), [7, 12], 19, 1.0),
    ("length_1025", answer("7" + " " * 1021 + "+12"), [7, 12], 19, 0.1),
    ("stripped_padding_not_counted", answer(" " * 3000 + "7+12" + "\n" * 3000), [7, 12], 19, 1.0),
]


@pytest.mark.parametrize("scorer", SCORERS.values(), ids=SCORERS.keys())
@pytest.mark.parametrize("name, response, numbers, target, expected", CASES, ids=[c[0] for c in CASES])
def test_rule(scorer, name, response, numbers, target, expected):
    assert scorer(response, numbers, target) == expected


@pytest.mark.parametrize("scorer", SCORERS.values(), ids=SCORERS.keys())
def test_custom_rewards(scorer):
    kwargs = dict(format_score=-0.5, correct_score=2.0)
    assert scorer(answer("7+12"), [7, 12], 19, **kwargs) == 2.0
    assert scorer(answer("7*12"), [7, 12], 19, **kwargs) == -0.5
    assert scorer("nothing", [7, 12], 19, **kwargs) == 0.0


def test_tinyzero_holes_are_closed_and_fast():
    start = time.perf_counter()
    assert score(answer("9**9**9"), [9, 9, 9], 1) == 0.1  # eval would never return
    assert score(answer("2**3+5"), [2, 3, 5], 13) == 0.1  # eval: 13, "correct"
    assert score(answer("1.5*10"), [1, 5, 10], 15) == 0.1  # eval: 15.0, "correct"
    assert time.perf_counter() - start < 1.0


PATHOLOGICAL = {  # ~10 MB each, built on demand; a quadratic scan would take hours
    "open_tags_only": lambda: "<answer>" * 1_250_000,
    "close_tags_only": lambda: "</answer>" * 1_100_000,
    "many_opens_one_close": lambda: "<answer>" * 1_250_000 + "7+12</answer>",
    "less_than_signs": lambda: "<" * 10_000_000,
    "almost_tags": lambda: "<answe</answe" * 800_000 + "<answer>7+12</answer>",
    "wide_chars": lambda: "\U0001f600<answer" * 1_000_000 + "<answer>7+12</answer>",
    "long_answer": lambda: "<answer>" + "(" * 5_000_000 + "</answer>",
}


@pytest.mark.parametrize("name", PATHOLOGICAL)
def test_ten_megabytes_in_linear_time(name):
    text = PATHOLOGICAL[name]()
    start = time.perf_counter()
    result = score(text, [7, 12], 19)
    batch = score_batch([text] * 4, [[7, 12]] * 4, [19] * 4, num_threads=2)
    assert time.perf_counter() - start < 5.0
    assert batch == [result] * 4
    assert result == reference_score(text, [7, 12], 19)


# ----------------------------------------------------------------------------- batches and threads

def mixed_batch(n: int, seed: int = 0):
    rng = random.Random(seed)
    responses, numbers, targets = [], [], []
    for i in range(n):
        name, response, nums, target, _ = CASES[rng.randrange(len(CASES))]
        responses.append("x" * rng.randrange(50) + response)
        numbers.append(nums)
        targets.append(target)
    return responses, numbers, targets


@pytest.mark.parametrize("num_threads", [None, 1, 2, 3, 7, 64])
def test_batch_matches_reference_for_any_thread_count(num_threads):
    responses, numbers, targets = mixed_batch(700)
    expected = [reference_score(r, n, t) for r, n, t in zip(responses, numbers, targets)]
    assert score_batch(responses, numbers, targets, num_threads=num_threads) == expected
    assert score_batch([], [], [], num_threads=num_threads) == []


def test_batch_accepts_tuples_numpy_and_generators_of_rows():
    rows = np.array([[7, 12], [3, 4]], dtype=np.int64)
    out = score_batch((answer("7+12"), answer("3*4")), rows, np.array([19, 12]))
    assert out == [1.0, 1.0]
    assert score(answer("7+12"), (np.int32(7), np.int64(12)), np.uint8(19)) == 1.0


BAD_BATCHES = [  # (responses, numbers, targets, error, message)
    ([answer("1")] * 2, [[1]], [1, 1], ValueError, "same length"),
    ([answer("1")], [[1]], [1, 1], ValueError, "same length"),
    ("<answer>1</answer>", [[1]], [1], TypeError, "responses must be a sequence"),
    ([b"<answer>1</answer>"], [[1]], [1], TypeError, r"responses\[0\] must be a str"),
    (["ok", None], [[1], [1]], [1, 1], TypeError, r"responses\[1\] must be a str"),
    (["ok", "ok"], [[1], [1, 2.0]], [1, 1], TypeError, r"numbers\[1\]\[1\] must be an int, got float"),
    (["ok"], [[True]], [1], TypeError, r"numbers\[0\]\[0\] must be an int, got bool"),
    (["ok"], [[np.True_]], [1], TypeError, r"numbers\[0\]\[0\] must be an int"),
    (["ok"], [["7"]], [1], TypeError, r"numbers\[0\]\[0\] must be an int, got str"),
    (["ok"], ["712"], [1], TypeError, r"numbers\[0\] must be a sequence of ints"),
    (["ok"], [7], [1], TypeError, r"numbers\[0\] must be a sequence of ints"),
    (["ok"], [[2**63]], [1], ValueError, r"numbers\[0\]\[0\] does not fit"),
    (["ok", "ok", "ok"], [[1]] * 3, [1, 2, 3.0], TypeError, r"targets\[2\] must be an int, got float"),
    (["ok"], [[1]], [False], TypeError, r"targets\[0\] must be an int, got bool"),
    (["ok"], [[1]], [-(2**63) - 1], ValueError, r"targets\[0\] does not fit"),
]


@pytest.mark.parametrize("use_extension", [True, False], ids=["cpp", "fallback"])
@pytest.mark.parametrize("responses, numbers, targets, error, message", BAD_BATCHES)
def test_batch_rejects_bad_arguments(monkeypatch, use_extension, responses, numbers, targets, error, message):
    if not use_extension:
        monkeypatch.setattr(verifier, "_countdown", None)
        monkeypatch.setattr(verifier, "_warned", True)
    with pytest.raises(error, match=message):
        score_batch(responses, numbers, targets)


@pytest.mark.parametrize("num_threads", [1, 4])
def test_late_bad_item_stops_a_big_batch_cleanly(num_threads):
    # Scoring threads start while arguments are still being converted; an error late in the batch
    # must stop them and raise, and the next call must work normally.
    responses, numbers, targets = mixed_batch(5000)
    with pytest.raises(TypeError, match=r"targets\[4999\] must be an int"):
        score_batch(responses, numbers, targets[:-1] + [None], num_threads=num_threads)
    expected = [reference_score(r, n, t) for r, n, t in zip(responses, numbers, targets)]
    assert score_batch(responses, numbers, targets, num_threads=num_threads) == expected


def test_reentrant_call_from_index():
    class Sneaky:  # an int-like whose __index__ scores another batch in the middle of this one
        def __index__(self):
            inner = score_batch([answer("3*4")] * 100, [[3, 4]] * 100, [12] * 100, num_threads=2)
            assert inner == [1.0] * 100
            return 12

    responses, numbers, targets = mixed_batch(300)
    out = score_batch(responses + [answer("7+12")], numbers + [[7, Sneaky()]], targets + [19], num_threads=2)
    assert out == [reference_score(r, n, t) for r, n, t in zip(responses, numbers, targets)] + [1.0]


@pytest.mark.parametrize("value, error", [(0, ValueError), (-1, ValueError), (1.5, TypeError),
                                          (True, TypeError), ("2", TypeError)])
def test_num_threads_is_checked(value, error):
    with pytest.raises(error, match="num_threads"):
        score_batch([answer("1")], [[1]], [1], num_threads=value)


@pytest.mark.parametrize("scorer", SCORERS.values(), ids=SCORERS.keys())
def test_single_score_rejects_bad_arguments(scorer):
    with pytest.raises(TypeError, match="response must be a str"):
        scorer(b"<answer>1</answer>", [1], 1)
    with pytest.raises(TypeError, match=r"numbers\[1\] must be an int, got bool"):
        scorer(answer("1"), [1, True], 1)
    with pytest.raises(TypeError, match="target must be an int, got float"):
        scorer(answer("1"), [1], 1.0)


def test_fallback_warns_once_and_agrees(monkeypatch):
    monkeypatch.setattr(verifier, "_countdown", None)
    monkeypatch.setattr(verifier, "_warned", False)
    responses, numbers, targets = mixed_batch(50, seed=1)
    with pytest.warns(RuntimeWarning, match="not built"):
        fallback = score_batch(responses, numbers, targets)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise here
        assert score(answer("7+12"), [7, 12], 19) == 1.0
        assert verifier.solve([7, 12], 19) is not None
    monkeypatch.undo()
    assert fallback == score_batch(responses, numbers, targets)


# ----------------------------------------------------------------------------- properties

LEAVES = st.one_of(st.integers(0, 60), st.sampled_from([BIG - 1, BIG, 3 * 2**30, VALUE_LIMIT - 1,
                                                         VALUE_LIMIT, 10**18, 2**63 - 1]))
TREES = st.recursive(LEAVES, lambda sub: st.tuples(st.sampled_from("+-*/"), sub, sub), max_leaves=7)


def tree_value(tree):
    """Exact value with the 2**62 rule on every node, or None when the expression is invalid."""
    if isinstance(tree, int):
        return Fraction(tree) if tree < VALUE_LIMIT else None
    op, left, right = tree
    a, b = tree_value(left), tree_value(right)
    if a is None or b is None or (op == "/" and b == 0):
        return None
    value = {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "/": lambda: a / b}[op]()
    ok = abs(value.numerator) < VALUE_LIMIT and value.denominator < VALUE_LIMIT
    return value if ok else None


def render(tree, rng):
    """Text that parses back to exactly this tree, with random spacing and redundant parentheses."""
    space = lambda: rng.choice(["", "", " ", "\t", "\n", "\r\n  "])  # noqa: E731
    if isinstance(tree, int):
        text = str(tree)
    else:
        op, left, right = tree
        parts = []
        for child in (left, right):
            child_text = render(child, rng)
            parts.append(child_text if isinstance(child, int) else f"({space()}{child_text}{space()})")
        text = f"{parts[0]}{space()}{op}{space()}{parts[1]}"
    return f"({text})" if rng.random() < 0.1 else text


def leaves(tree):
    return [tree] if isinstance(tree, int) else leaves(tree[1]) + leaves(tree[2])


@settings(max_examples=300, deadline=None)
@given(tree=TREES, seed=st.integers(0, 2**32 - 1))
def test_random_expressions_score_as_exact_fractions_say(tree, seed):
    rng = random.Random(seed)
    text, numbers = render(tree, rng), leaves(tree)
    rng.shuffle(numbers)
    value = tree_value(tree)
    response = "reasoning... " + answer(text)
    exact = value is not None and value.denominator == 1
    target = int(value) if exact else rng.randrange(-100, 100)
    for scorer in SCORERS.values():
        assert scorer(response, numbers, target) == (1.0 if exact else 0.1)
        if exact:
            assert scorer(response, numbers, target + 1) == 0.1
            assert scorer(response, numbers[1:], target) == 0.1  # one number short


FRAGMENTS = ["<answer>", "</answer>", "<answer", "</answer", "answer>", "<", ">", "</", "/", "(", ")",
             "+", "-", "*", "**", "//", ".", "%", "=", "0", "05", "1", "7", "12", "19", "99999999999999999999",
             " ", "\t", "\n", "\r", "\x0b", "\u00a0", "\u3000", "\uff17", "\x00", "é", "→", "😀",
             "\ud800", "\udfff", "reasoning ", "7+12", "(7+12)"]
TEXT = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=5),
                          st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)), max_size=40).map("".join)


@settings(max_examples=400, deadline=None)
@given(text=TEXT, numbers=st.lists(st.sampled_from([0, 1, 7, 12, 19, 5]), max_size=4),
       target=st.sampled_from([0, 1, 7, 12, 19, 84, -5]))
def test_cpp_agrees_with_reference_on_arbitrary_text(text, numbers, target):
    assert score(text, numbers, target) == reference_score(text, numbers, target)
    assert score_batch([text], [numbers], [target], num_threads=1) == [score(text, numbers, target)]


@settings(max_examples=300, deadline=None)
@given(tree=TREES, seed=st.integers(0, 2**32 - 1),
       edits=st.lists(st.tuples(st.floats(0, 1), st.sampled_from(FRAGMENTS + [""])), max_size=4))
def test_cpp_agrees_with_reference_on_mutated_answers(tree, seed, edits):
    rng = random.Random(seed)
    text = answer(render(tree, rng)) + rng.choice(["", " <answer>", "</answer>", "\n<answer>1</answer>"])
    for where, fragment in edits:  # replace a slice of random length with a fragment
        start = int(where * len(text))
        text = text[:start] + fragment + text[start + rng.randrange(3):]
    numbers, value = leaves(tree), tree_value(tree)
    target = int(value) if value is not None and value.denominator == 1 else 19
    assert score(text, numbers, target) == reference_score(text, numbers, target)
