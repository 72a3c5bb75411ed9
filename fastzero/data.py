"""The problems a run trains and evaluates on, their prompts as token ids, and the data position.

The held-out split is made first (generated from `data_seed`, or the first `num_test` problems of
`test_path`), and the training problems exclude every held-out problem, so evaluation never sees a
problem the policy trained on. Training walks a fresh seeded permutation each epoch; the position
(epoch, index) is part of a checkpoint, so a resumed run draws exactly the batches the uninterrupted
run would have drawn.
"""
from __future__ import annotations

from typing import Any

import torch

from .config import DataConfig
from .tasks.countdown.problems import Problem, generate_problems, read_problems
from .tasks.countdown.prompts import render_prompt


class TaskData:
    def __init__(self, cfg: DataConfig, tokenizer: Any, *, seed: int, log=print):
        self.cfg, self.tokenizer, self.seed = cfg, tokenizer, seed
        ranges = dict(min_numbers=cfg.min_numbers, max_numbers=cfg.max_numbers, min_value=cfg.min_value,
                      max_value=cfg.max_value, min_target=cfg.min_target, max_target=cfg.max_target)
        if cfg.test_path:
            self.test = _load(cfg.test_path, cfg.skip_bad_rows, log)[: cfg.num_test]
        else:
            self.test = generate_problems(cfg.num_test, seed=cfg.data_seed, **ranges)
        held_out = {p.key for p in self.test}
        if cfg.train_path:
            loaded = _load(cfg.train_path, cfg.skip_bad_rows, log)
            self.train = [p for p in loaded if p.key not in held_out]
        else:
            try:
                self.train = generate_problems(cfg.num_train, seed=cfg.data_seed + 1, exclude=held_out, **ranges)
            except RuntimeError as err:  # the ranges hold fewer distinct solvable problems than asked
                raise ValueError(f"--num-train {cfg.num_train}: {err}") from None
        if not self.train:
            raise ValueError("no training problems left (after removing the held-out ones)")
        self._prompt_cache: dict[Problem, list[int]] = {}
        for problem in self.test + self.train[:256]:  # fail on over-long prompts before any work
            self.prompt_ids(problem)
        self.epoch, self.index = 0, 0
        self._order = self._permutation(0)

    def prompt_ids(self, problem: Problem) -> list[int]:
        ids = self._prompt_cache.get(problem)
        if ids is None:
            text = render_prompt(self.cfg.template, problem.numbers, problem.target, self.tokenizer)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) > self.cfg.max_prompt_tokens:
                raise ValueError(f"--max-prompt-tokens: the prompt for {problem} has {len(ids)} tokens "
                                 f"(> {self.cfg.max_prompt_tokens})")
            if len(self._prompt_cache) < 100_000:  # bounded: 327k cached prompts would cost GBs
                self._prompt_cache[problem] = ids
        return ids

    def _permutation(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.train), generator=generator).tolist()

    def next_batch(self, size: int) -> list[Problem]:
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


def _load(path: str, skip_bad: bool, log) -> list[Problem]:
    report = read_problems(path, skip_bad=skip_bad)
    if report.skipped:
        log(f"{path}: skipped {len(report.skipped)} bad rows (first: {report.skipped[0]})")
    return report.problems
