"""The problems a run trains and evaluates on, their prompts as token ids, and the data position.

The task (`--task`, fastzero.tasks) makes or loads the problems; `make_splits` builds the held-out
split first (generated from `data_seed`, or the first `num_test` problems of `test_path`) and the
training problems without any held-out key, so evaluation never sees a problem the policy trained on.
Training walks a fresh seeded permutation each epoch; the position (epoch, index) is part of a
checkpoint, so a resumed run draws exactly the batches the uninterrupted run would have drawn.

Generated Countdown splits are cached: with `cache_dir` (the run's `data/` folder) the first start
writes them there as .jsonl, keyed by every option that shapes them, and a `--resume` (or any start
with the same options into that folder) reads them back instead of generating again (327,680
TinyZero problems take about a minute). A changed option gives another key and a fresh generation.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import torch

from .atomic import atomic_file, atomic_write_text
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
    def __init__(self, cfg: DataConfig, tokenizer: Any, *, seed: int, log=print, task: Any = None,
                 cache_dir: str | None = None):
        self.cfg, self.tokenizer, self.seed = cfg, tokenizer, seed
        if task is None:
            task = resolve_task("countdown", **_countdown_ranges(cfg))
        self.task = task
        if cfg.template not in task.templates:
            raise ValueError(f"--template: the {task.name} task has no template {cfg.template!r} "
                             f"(it has {', '.join(task.templates)})")
        key = _cache_key(cfg, task) if cache_dir else None
        cached = _read_cache(cache_dir, key, task) if key else None
        if cached is not None:
            self.test, self.train = cached
            log(f"problems: {len(self.train):,} train / {len(self.test):,} held-out, from the cache in {cache_dir}")
        else:
            generating = not cfg.train_path and cfg.num_train >= 20_000  # long enough to say so
            started = time.perf_counter()
            if generating:
                log(f"generating {cfg.num_train:,} training problems (solver-checked)...")
            splits = make_splits(task, num_train=cfg.num_train, num_test=cfg.num_test, seed=cfg.data_seed,
                                 train_path=cfg.train_path, test_path=cfg.test_path, skip_bad=cfg.skip_bad_rows)
            if splits.skipped:
                log(f"skipped {len(splits.skipped)} bad rows (first: {splits.skipped[0]})")
            self.train, self.test = splits.train, splits.test
            if generating:
                log(f"generated {len(self.train):,} problems in {time.perf_counter() - started:.0f} s")
            if key:
                _write_cache(cache_dir, key, task, cfg, self.test, self.train)
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


_SPLIT_OPTIONS = ("num_train", "num_test", "min_numbers", "max_numbers", "min_value", "max_value", "min_target",
                  "max_target", "data_seed", "test_path")


def _cache_key(cfg: DataConfig, task: Any) -> str | None:
    """The options a generated split depends on; None when nothing is worth caching (a loaded
    training file, or a task whose problems do not round-trip through .jsonl as Countdown's do)."""
    if cfg.train_path or getattr(task, "name", None) != "countdown":
        return None
    options = {name: getattr(cfg, name) for name in _SPLIT_OPTIONS}
    if cfg.test_path:  # the held-out file's content shapes the training split too
        digest = hashlib.sha256()
        with open(cfg.test_path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        options["test_file"] = digest.hexdigest()
    return hashlib.sha256(json.dumps({"version": 1, **options}, sort_keys=True).encode()).hexdigest()[:16]


def _read_cache(cache_dir: str, key: str, task: Any) -> tuple[list, list] | None:
    test, train = (os.path.join(cache_dir, f"{key}-{split}.jsonl") for split in ("test", "train"))
    if not (os.path.isfile(test) and os.path.isfile(train)):
        return None
    return list(task.load(test).problems), list(task.load(train).problems)


def _write_cache(cache_dir: str, key: str, task: Any, cfg: DataConfig, test: list, train: list) -> None:
    os.makedirs(cache_dir, exist_ok=True)
    for split, problems in (("test", test), ("train", train)):  # train last: its presence means both
        with atomic_file(os.path.join(cache_dir, f"{key}-{split}.jsonl"), "wb") as fh:
            for problem in problems:
                fh.write((json.dumps(task.to_json(problem)) + "\n").encode())
    atomic_write_text(os.path.join(cache_dir, f"{key}.json"),  # for a reader: what the files were made from
                      json.dumps({name: getattr(cfg, name) for name in _SPLIT_OPTIONS}) + "\n")
