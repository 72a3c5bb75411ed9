"""A user's own task and rewards, as a user would write them (used by the protocol and sandbox tests).

The task: say the word for a small number ("3" -> "three"), answer in <answer> tags.
"""
from fastzero.tasks.base import Task

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


class NumberWords(Task):
    name = "number-words"
    templates = ("base",)
    correct_reward = 1.0

    def generate(self, n, *, seed, exclude=()):
        problems = [{"n": i} for i in range(10) if i not in exclude]
        return problems[:n]

    def key(self, problem):
        return problem["n"]

    def to_json(self, problem):
        return dict(problem)

    def render_prompt(self, problem, template, tokenizer=None):
        return f"Write {problem['n']} as a word in <answer> tags."

    def score_batch(self, responses, problems):
        return [reward(r, p) for r, p in zip(responses, problems)]


def make_task():
    return NumberWords()


def reward(response, problem):
    """Per sample: 1.0 for the right word in the last answer tag, 0.1 for any tag, else 0."""
    if "<answer>" not in response:
        return 0.0
    word = response.rsplit("<answer>", 1)[1].split("</answer>", 1)[0].strip()
    return 1.0 if word == WORDS[problem["n"]] else 0.1


def rewards(responses, problems):
    return [reward(r, p) for r, p in zip(responses, problems)]


def not_a_task():
    return object()
