"""The task protocol: what the trainer needs from a verifiable task, and the train/test split.

A task
- makes problems (`generate`, seeded and reproducible, never a key from `exclude`) or loads them
  (`load`, a file of the user's, bad rows reported by file and row);
- names each problem by a stable `key` (what makes two problems the same: the split's
  disjointness is checked on keys) and gives a JSON-able form of it (`to_json`, for samples.jsonl,
  data files and user rewards, which see problems only in this form);
- renders the prompt for each of its `templates` (`render_prompt`; `instruct` goes through the
  tokenizer's chat template);
- scores a batch of responses, the generated text only (`score_batch`), in the trainer process:
  keep it safe and fast (the built-ins never eval and run in linear time). Code that might hang or
  crash belongs in a user reward, which runs in `fastzero.tasks.sandbox`;
- says which reward means "correct" (`correct_reward`: accuracy counts rewards >= it);
- optionally measures its responses (`response_metrics(responses, problems) -> {name: value}`, e.g.
  Countdown's think-block signature): logged with each step and each evaluation, never a reward.

`Task` is an abstract base class with these members; a user task may subclass it or be any object
that has them (`check_task` lists what is missing). `make_splits` builds the held-out split first and
the training problems without any of its keys, for any task.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Collection, Hashable, Sequence

TASK_MEMBERS = ("name", "templates", "correct_reward", "generate", "load", "key", "to_json",
                "render_prompt", "score_batch")


@dataclasses.dataclass
class LoadReport:
    """What a task's `load` found: the good problems, and for each skipped row why (file and row)."""

    problems: list
    skipped: list[str] = dataclasses.field(default_factory=list)


class Task(abc.ABC):
    name: str = "task"
    templates: tuple[str, ...] = ("base", "instruct")
    correct_reward: float = 1.0

    @abc.abstractmethod
    def generate(self, n: int, *, seed: int, exclude: Collection[Hashable] = ()) -> list:
        """`n` distinct problems from `seed` (same seed, same problems), none whose key is in `exclude`."""

    def load(self, path: str, *, skip_bad: bool = False) -> LoadReport:
        """Problems from a file. A bad row raises ValueError naming the file and row, or with
        `skip_bad` is skipped and listed in the report."""
        raise ValueError(f"{path}: the {self.name} task cannot load problem files")

    @abc.abstractmethod
    def key(self, problem: Any) -> Hashable:
        """What makes two problems the same (hashable, stable across runs)."""

    @abc.abstractmethod
    def to_json(self, problem: Any) -> dict[str, Any]:
        """The problem as a JSON-able dict (what samples.jsonl and user rewards see)."""

    @abc.abstractmethod
    def render_prompt(self, problem: Any, template: str, tokenizer: Any = None) -> str:
        """The prompt text for one problem (`tokenizer` is needed only by chat templates)."""

    @abc.abstractmethod
    def score_batch(self, responses: Sequence[str], problems: Sequence[Any]) -> list[float]:
        """One reward per (response, problem) pair; responses are the generated text only."""

    def response_metrics(self, responses: Sequence[str], problems: Sequence[Any]) -> dict[str, float]:
        """Batch means that describe the responses (none by default); the trainer logs them as they are."""
        return {}


def check_task(task: Any, where: str) -> Any:
    """`task` itself, or a ValueError saying which protocol members it lacks."""
    missing = [m for m in TASK_MEMBERS if not hasattr(task, m)]
    if missing:
        raise ValueError(f"{where}: the task object lacks {', '.join(missing)} "
                         "(see fastzero.tasks.base.Task)")
    if not isinstance(task.templates, (tuple, list)) or not task.templates:
        raise ValueError(f"{where}: task.templates must be a non-empty tuple of template names")
    return task


@dataclasses.dataclass
class Splits:
    train: list
    test: list
    skipped: list[str]  # bad rows skipped in the loaded files (with skip_bad)


def make_splits(task: Any, *, num_train: int, num_test: int, seed: int, train_path: str | None = None,
                test_path: str | None = None, skip_bad: bool = False) -> Splits:
    """(train, test) that share no problem key.

    The held-out split comes first: generated from `seed`, or the first `num_test` problems of
    `test_path`; so it does not depend on the training data and evaluations stay comparable. The
    training problems are generated from `seed + 1` excluding every held-out key, or loaded from
    `train_path` with every held-out key removed."""
    skipped: list[str] = []

    def load(path: str) -> list:
        report = task.load(path, skip_bad=skip_bad)
        skipped.extend(report.skipped)
        return list(report.problems)

    if test_path:
        test = load(test_path)[:num_test]
    else:
        test = _generate(task, num_test, seed, (), "--num-test")
    held_out = {task.key(p) for p in test}
    if train_path:
        train = [p for p in load(train_path) if task.key(p) not in held_out]
    else:
        train = _generate(task, num_train, seed + 1, held_out, "--num-train")
    if not train:
        raise ValueError("no training problems left (after removing the held-out ones)")
    if not test:
        raise ValueError(f"--test-path: {test_path} holds no problems" if test_path else "--num-test: no problems")
    return Splits(train=train, test=test, skipped=skipped)


def _generate(task: Any, n: int, seed: int, exclude: Collection[Hashable], option: str) -> list:
    try:
        return task.generate(n, seed=seed, exclude=exclude)
    except (RuntimeError, ValueError) as err:  # e.g. the ranges hold fewer distinct problems than asked
        raise ValueError(f"{option} {n}: {err}") from None
