"""Countdown through the task protocol: the same scores, prompts and problems as the direct calls."""
import random

from fastzero.tasks.countdown import generate_problems, render_prompt, score_batch
from fastzero.tasks.countdown.problems import Problem
from fastzero.tasks.countdown.task import CountdownTask
from tests.tasks.countdown.test_fuzz import random_input


def test_scores_equal_the_direct_batch_call():
    rng = random.Random(0)
    batch = [random_input(rng) for _ in range(5000)]
    batch = [(text, nums, target) for text, nums, target in batch
             if nums and 0 <= target and max(nums) <= 10**9]  # what a Problem may hold
    responses = [text for text, _, _ in batch]
    problems = [Problem(tuple(nums), target) for _, nums, target in batch]
    assert sum(1 for t, n, g in batch if score_batch([t], [n], [g])[0] == 1.0) > 100  # correct ones occur
    for format_score, correct_score, threads in ((0.1, 1.0, None), (0.0, 2.5, 1), (0.3, 0.7, 3)):
        task = CountdownTask(format_score=format_score, correct_score=correct_score, num_threads=threads)
        direct = score_batch(responses, [p.numbers for p in problems], [p.target for p in problems],
                             format_score=format_score, correct_score=correct_score, num_threads=threads)
        assert task.score_batch(responses, problems) == direct
        assert task.correct_reward == correct_score


def test_problems_and_prompts_equal_the_direct_calls():
    ranges = dict(min_numbers=3, max_numbers=4, min_value=1, max_value=30, min_target=1, max_target=60)
    task = CountdownTask(**ranges)
    exclude = generate_problems(50, seed=2, **ranges)
    problems = task.generate(200, seed=3, exclude={p.key for p in exclude})
    assert problems == generate_problems(200, seed=3, exclude=exclude, **ranges)
    for p in problems[:50]:
        for template in ("base", "compact"):
            assert task.render_prompt(p, template) == render_prompt(template, p.numbers, p.target)
        assert task.key(p) == (tuple(sorted(p.numbers)), p.target)
        assert task.to_json(p) == {"numbers": list(p.numbers), "target": p.target}


def test_base_prompt_is_tinyzero_text():
    assert CountdownTask().render_prompt(Problem((3, 7, 12), 22), "base") == (
        "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
        "The assistant first thinks about the reasoning process in the mind and then provides the user with "
        "the answer.\nUser: Using the numbers [3, 7, 12], create an equation that equals 22. You can use basic "
        "arithmetic operations (+, -, *, /) and each number can only be used once. Show your work in <think> "
        "</think> tags. And return the final answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3 "
        "</answer>.\nAssistant: Let me solve this step by step.\n<think>")
