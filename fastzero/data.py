"""The problems a run trains and evaluates on, their prompts as token ids, and the data position.

The task (`--task`, fastzero.tasks) makes or loads the problems; `make_splits` builds the held-out
split first (generated from `data_seed`, or the first `num_test` problems of `test_path`) and the
training problems without any held-out key, so evaluation never sees a problem the policy trained on.
Training walks a fresh seeded permutation each epoch; the position (epoch, index) is part of a
checkpoint, so a resumed run draws exactly the batches the uninterrupted run would have drawn.
"""
from __future__ import annotations

from typing import Any

import torch

from .config import Config, DataConfig
from .tasks.base import make_splits
from .tasks.registry import resolve_task


def make_task(config: Config):
    """The run's task: a built-in configured by the data and reward-score options, or the user's factory."""
    d, a = config.data, config.algorithm
    scores = dict(format_score=a.format_score, correct_score=a.correct_score)
    if d.task == "countdown":
        return resolve_task("countdown", **_countdown_ranges(d), **scores)
    if d.task == "arithmetic":
        return resolve_task("arithmetic", min_value=d.min_value, max_value=d.max_value, max_answer=d.max_target,
                            **scores)
    return resolve_task(d.task)


def _countdown_ranges(d: DataConfig) -> dict[str, int]:
    return dict(min_numbers=d.min_numbers, max_numbers=d.max_numbers, min_value=d.min_value,
                max_value=d.max_value, min_target=d.min_target, max_target=d.max_target)


class TaskData:
    def __init__(self, cfg: DataConfig, tokenizer: Any, *, seed: int, log=print, task: Any = None):
        self.cfg, self.tokenizer, self.seed = cfg, tokenizer, seed
        if task is None:
            task = resolve_task("countdown", **_countdown_ranges(cfg))
        self.task = task
        if cfg.template not in task.templates:
            raise ValueError(f"--template: the {task.name} task has no template {cfg.template!r} "
                             f"(it has {', '.join(task.templates)})")
        splits = make_splits(task, num_train=cfg.num_train, num_test=cfg.num_test, seed=cfg.data_seed,
                             train_path=cfg.train_path, test_path=cfg.test_path, skip_bad=cfg.skip_bad_rows)
        if splits.skipped:
            log(f"skipped {len(splits.skipped)} bad rows (first: {splits.skipped[0]})")
        self.train, self.test = splits.train, splits.test
        self._prompt_cache: dict[Any, list[int]] = {}
        for problem in self.test + self.train[:256]:  # fail on over-long prompts before any work
            self.prompt_ids(problem)
        self.epoch, self.index = 0, 0
        self._order = self._permutation(0)

    def prompt_ids(self, problem: Any) -> list[int]:
        try:
            ids = self._prompt_cache.get(problem)
        except TypeError:  # an unhashable problem (a user task's dict): not cached
            ids, cacheable = None, False
        else:
            cacheable = True
        if ids is None:
            text = self.task.render_prompt(problem, self.cfg.template, self.tokenizer)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) > self.cfg.max_prompt_tokens:
                raise ValueError(f"--max-prompt-tokens: the prompt for {problem} has {len(ids)} tokens "
                                 f"(> {self.cfg.max_prompt_tokens})")
            if cacheable and len(self._prompt_cache) < 100_000:  # bounded: 327k cached prompts would cost GBs
                self._prompt_cache[problem] = ids
        return ids

    def _permutation(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.train), generator=generator).tolist()

    def next_batch(self, size: int) -> list[Any]:
        batch = []
        while len(batch) < size:
            if self.index >= len(self._order):
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            take = min(size - len(batch), len(self._order) - self.index)
            batch += [self.train[i] for i in self._order[self.index:self.index + take]]
            self.index += take
        return batch

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def restore(self, position: dict[str, int]) -> None:
        self.epoch, self.index = int(position["epoch"]), int(position["index"])
        self._order = self._permutation(self.epoch)
