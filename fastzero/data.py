"""The problems a run trains and evaluates on, their prompts as token ids, and the data position.

The held-out split is made first (generated from `data_seed`, or the first `num_test` problems of
`test_path`), and the training problems exclude every held-out problem, so evaluation never sees a
problem the policy trained on. Training walks a fresh seeded permutation each epoch; the position
(epoch, index) is part of a checkpoint, so a resumed run draws exactly the batches the uninterrupted
run would have drawn.

Generated splits are cached: with `cache_dir` (the run's `data/` folder) the first start writes
them there as .jsonl, keyed by every option that shapes them, and a `--resume` (or any start with
the same options into that folder) reads them back instead of generating again (327,680 TinyZero
problems take about a minute). A changed option gives a different key and a fresh generation.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import torch

from .config import DataConfig
from .atomic import atomic_write_text
from .tasks.countdown.problems import Problem, generate_problems, load_problems, read_problems, save_problems
from .tasks.countdown.prompts import render_prompt


class TaskData:
    def __init__(self, cfg: DataConfig, tokenizer: Any, *, seed: int, log=print, cache_dir: str | None = None):
        self.cfg, self.tokenizer, self.seed = cfg, tokenizer, seed
        ranges = dict(min_numbers=cfg.min_numbers, max_numbers=cfg.max_numbers, min_value=cfg.min_value,
                      max_value=cfg.max_value, min_target=cfg.min_target, max_target=cfg.max_target)
        cached = _read_cache(cache_dir, cfg) if cache_dir else None
        if cached is not None:
            self.test, self.train = cached
            log(f"problems: {len(self.train)} train / {len(self.test)} held-out, from the cache in {cache_dir}")
            return self._finish()
        if cfg.test_path:
            self.test = _load(cfg.test_path, cfg.skip_bad_rows, log)[: cfg.num_test]
        else:
            self.test = generate_problems(cfg.num_test, seed=cfg.data_seed, **ranges)
        held_out = {p.key for p in self.test}
        if cfg.train_path:
            loaded = _load(cfg.train_path, cfg.skip_bad_rows, log)
            self.train = [p for p in loaded if p.key not in held_out]
        else:
            started = time.perf_counter()
            if cfg.num_train >= 20_000:  # long enough to say what is happening
                log(f"generating {cfg.num_train:,} training problems (solver-checked)...")
            try:
                self.train = generate_problems(cfg.num_train, seed=cfg.data_seed + 1, exclude=held_out, **ranges)
            except RuntimeError as err:  # the ranges hold fewer distinct solvable problems than asked
                raise ValueError(f"--num-train {cfg.num_train}: {err}") from None
            if cfg.num_train >= 20_000:
                log(f"generated {len(self.train):,} problems in {time.perf_counter() - started:.0f} s")
            if cache_dir:
                _write_cache(cache_dir, cfg, self.test, self.train)
        self._finish()

    def _finish(self) -> None:
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


_SPLIT_OPTIONS = ("num_train", "num_test", "min_numbers", "max_numbers", "min_value", "max_value", "min_target",
                  "max_target", "data_seed", "test_path")


def _cache_key(cfg: DataConfig) -> str | None:
    """The options a generated split depends on (None: a split read from a file is not cached)."""
    if cfg.train_path:
        return None
    options = {name: getattr(cfg, name) for name in _SPLIT_OPTIONS}
    if cfg.test_path:  # the held-out file's content shapes the training split too
        options["test_file"] = _file_digest(cfg.test_path)
    text = json.dumps({"version": 1, **options}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_cache(cache_dir: str, cfg: DataConfig) -> tuple[list[Problem], list[Problem]] | None:
    key = _cache_key(cfg)
    if key is None:
        return None
    test, train = (os.path.join(cache_dir, f"{key}-{split}.jsonl") for split in ("test", "train"))
    if not (os.path.isfile(test) and os.path.isfile(train)):
        return None
    return load_problems(test), load_problems(train)


def _write_cache(cache_dir: str, cfg: DataConfig, test: list[Problem], train: list[Problem]) -> None:
    key = _cache_key(cfg)
    if key is None:
        return
    os.makedirs(cache_dir, exist_ok=True)
    save_problems(test, os.path.join(cache_dir, f"{key}-test.jsonl"))  # train last: its presence means both
    save_problems(train, os.path.join(cache_dir, f"{key}-train.jsonl"))
    atomic_write_text(os.path.join(cache_dir, f"{key}.json"),  # for a reader: what the files were made from
                      json.dumps({name: getattr(cfg, name) for name in _SPLIT_OPTIONS}) + "\n")
