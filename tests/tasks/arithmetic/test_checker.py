"""The arithmetic checker: every rule by name, and hypothesis against an independent regex oracle."""
import re

import pytest
from hypothesis import given, settings, strategies as st

from fastzero.tasks.arithmetic.checker import extract_answer, parse_integer, score, score_batch

# (name, response, answer, expected reward)
CASES = [
    ("correct", "<think>3+4</think><answer>7</answer>", 7, 1.0),
    ("wrong", "<answer>8</answer>", 7, 0.1),
    ("no_tag", "7", 7, 0.0),
    ("unclosed", "<answer>7", 7, 0.0),
    ("case_sensitive_tag", "<Answer>7</Answer>", 7, 0.0),
    ("last_tag_wins", "<answer>8</answer> no: <answer>7</answer>", 7, 1.0),
    ("last_tag_wins_wrong", "<answer>7</answer> no: <answer>8</answer>", 7, 0.1),
    ("unclosed_after_closed", "<answer>7</answer><answer>8", 7, 1.0),
    ("nested_open", "<answer><answer>7</answer>", 7, 0.1),
    ("strip_allowed", "<answer> \t\r\n7\n </answer>", 7, 1.0),
    ("nbsp_not_stripped", "<answer>\u00a07</answer>", 7, 0.1),
    ("vertical_tab_not_stripped", "<answer>\x0b7</answer>", 7, 0.1),
    ("empty", "<answer></answer>", 0, 0.1),
    ("negative", "<answer>-12</answer>", -12, 1.0),
    ("plus_sign", "<answer>+12</answer>", 12, 1.0),
    ("sign_then_space", "<answer>- 12</answer>", -12, 0.1),
    ("double_sign", "<answer>--12</answer>", 12, 0.1),
    ("minus_zero", "<answer>-0</answer>", 0, 1.0),
    ("zero", "<answer>0</answer>", 0, 1.0),
    ("leading_zero", "<answer>07</answer>", 7, 0.1),
    ("double_zero", "<answer>00</answer>", 0, 0.1),
    ("grouped", "<answer>1,234,567</answer>", 1234567, 1.0),
    ("grouped_negative", "<answer>-1,000</answer>", -1000, 1.0),
    ("bad_group", "<answer>12,34</answer>", 1234, 0.1),
    ("long_first_group", "<answer>1234,567</answer>", 1234567, 0.1),
    ("double_comma", "<answer>1,,234</answer>", 1234, 0.1),
    ("leading_comma", "<answer>,123</answer>", 123, 0.1),
    ("trailing_comma", "<answer>123,</answer>", 123, 0.1),
    ("zero_group_leading_zero", "<answer>0,123</answer>", 123, 0.1),
    ("inner_space", "<answer>1 000</answer>", 1000, 0.1),
    ("decimal", "<answer>7.0</answer>", 7, 0.1),
    ("trailing_dot", "<answer>7.</answer>", 7, 0.1),
    ("exponent", "<answer>7e0</answer>", 7, 0.1),
    ("underscore", "<answer>1_000</answer>", 1000, 0.1),
    ("currency", "<answer>$7</answer>", 7, 0.1),
    ("unit", "<answer>7 apples</answer>", 7, 0.1),
    ("expression", "<answer>3+4</answer>", 7, 0.1),
    ("fullwidth_digit", "<answer>\uff17</answer>", 7, 0.1),
    ("arabic_indic_digit", "<answer>\u0667</answer>", 7, 0.1),
    ("superscript", "<answer>\u00b2</answer>", 2, 0.1),
    ("hundred_digits", "<answer>" + "9" * 100 + "</answer>", int("9" * 100), 1.0),
    ("too_many_digits", "<answer>" + "9" * 101 + "</answer>", int("9" * 101), 0.1),
    ("huge_digit_string", "<answer>" + "1" * 10_000 + "</answer>", 1, 0.1),
    ("lone_surrogate", "<answer>\ud8007</answer>", 7, 0.1),
]


@pytest.mark.parametrize("name,response,answer,expected", CASES, ids=[c[0] for c in CASES])
def test_rule(name, response, answer, expected):
    assert score(response, answer) == expected
    assert oracle_score(response, answer) == expected


def test_custom_scores_and_batch():
    responses = ["<answer>7</answer>", "<answer>8</answer>", "none"]
    assert score_batch(responses, [7, 7, 7], format_score=0.25, correct_score=2.0) == [2.0, 0.25, 0.0]
    with pytest.raises(ValueError, match="same length"):
        score_batch(responses, [7])
    with pytest.raises(TypeError, match=r"responses\[1\]"):
        score_batch(["a", b"b"], [1, 2])


def test_linear_time_on_many_open_tags():
    # A regex `<answer>(.*?)</answer>` rescans to the end from every open tag; the scan here does not.
    text = "<answer>" * 200_000
    assert extract_answer(text) is None
    assert score(text + "</answer>", 0) == 0.1


# ---- the independent oracle: Python's regex engine for both the tag and the number ----------------
ORACLE_NUMBER = re.compile(r"([+-]?)(0|[1-9][0-9]{0,2}(?:,[0-9]{3})+|[1-9][0-9]*)", re.ASCII)


def oracle_score(response: str, answer: int) -> float:
    matches = re.findall(r"<answer>(.*?)</answer>", response, re.DOTALL)
    if not matches:
        return 0.0
    content = matches[-1].strip(" \t\n\r")
    m = ORACLE_NUMBER.fullmatch(content)
    if m is None or len(m.group(2).replace(",", "")) > 100:
        return 0.1
    value = int(m.group(2).replace(",", "")) * (-1 if m.group(1) == "-" else 1)
    return 1.0 if value == answer else 0.1


FRAGMENTS = ["<answer>", "</answer>", "<answer", "answer>", "</", "<", ">", " ", "\t", "\n", "\r", "\x0b",
             "\u00a0", "+", "-", ",", ".", "0", "00", "1", "7", "12", "123", ",000", "1,234", "e", "$",
             "\uff17", "\u0667", "\ud800", "😀", "apples", "####"]
TEXT = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=30).map("".join)


@settings(max_examples=500, deadline=None)
@given(text=TEXT, answer=st.sampled_from([0, 1, 7, 12, 123, 1000, 1234, -7, -1000]))
def test_agrees_with_oracle_on_arbitrary_text(text, answer):
    assert score(text, answer) == oracle_score(text, answer)


@settings(max_examples=300, deadline=None)
@given(value=st.integers(-10**30, 10**30), grouped=st.booleans(), sign_plus=st.booleans(),
       pad=st.text(" \t\n\r", max_size=3), noise=st.text(max_size=20))
def test_every_integer_spelled_right_is_correct(value, grouped, sign_plus, pad, noise):
    digits = f"{abs(value):,}" if grouped else str(abs(value))
    sign = "-" if value < 0 else ("+" if sign_plus else "")
    response = noise.replace("<answer>", "").replace("</answer>", "") + f"<answer>{pad}{sign}{digits}{pad}</answer>"
    assert parse_integer(f"{sign}{digits}") == value
    assert score(response, value) == 1.0 == oracle_score(response, value)
    assert score(response, value + 1) == 0.1
