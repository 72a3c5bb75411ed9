"""fastzero.data.TaskData with the embedded model's tokenizer: disjoint splits, deterministic
batches across epochs and restores, prompt checks."""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from fastzero.config import DataConfig, resolve_model_path, EMBEDDED_MODEL
from fastzero.data import TaskData
from fastzero.tasks.countdown.problems import Problem, save_problems


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model_path(EMBEDDED_MODEL), local_files_only=True)


def _data(tokenizer, **options) -> TaskData:
    cfg = DataConfig(**{"num_train": 40, "num_test": 10, **options})
    return TaskData(cfg, tokenizer, seed=3, log=lambda *a: None)


def test_held_out_problems_never_appear_in_training(tokenizer):
    data = _data(tokenizer)
    assert len(data.test) == 10 and len(data.train) == 40
    assert not {p.key for p in data.test} & {p.key for p in data.train}


def test_loaded_training_file_drops_held_out_problems_by_key(tokenizer, tmp_path):
    held = _data(tokenizer).test
    reordered = Problem(tuple(reversed(held[0].numbers)), held[0].target)  # same key, other order
    save_problems([reordered, Problem((1, 2, 3), 6)], tmp_path / "train.jsonl")
    data = _data(tokenizer, train_path=str(tmp_path / "train.jsonl"))
    assert data.train == [Problem((1, 2, 3), 6)]


def test_batches_walk_epochs_and_a_restored_position_continues_exactly(tokenizer):
    data = _data(tokenizer)
    first_epoch = data.next_batch(40)
    assert sorted(p.key for p in first_epoch) == sorted(p.key for p in data.train)
    data.next_batch(25)  # crosses into epoch 1
    position = data.position()
    assert position == {"epoch": 1, "index": 25}
    expected = data.next_batch(30)  # crosses into epoch 2
    resumed = _data(tokenizer)
    resumed.restore(position)
    assert resumed.next_batch(30) == expected


def test_prompt_ids_and_the_length_check(tokenizer):
    data = _data(tokenizer)
    ids = data.prompt_ids(data.test[0])
    assert ids and all(isinstance(i, int) for i in ids) and data.prompt_ids(data.test[0]) == ids
    with pytest.raises(ValueError, match="--max-prompt-tokens"):
        _data(tokenizer, max_prompt_tokens=2)


def test_generated_splits_are_cached_by_their_options(tokenizer, tmp_path, monkeypatch):
    import fastzero.data as data_module

    cfg = DataConfig(num_train=40, num_test=10)
    first = TaskData(cfg, tokenizer, seed=3, log=lambda *a: None, cache_dir=str(tmp_path))
    calls = []
    real = data_module.make_splits
    monkeypatch.setattr(data_module, "make_splits", lambda *a, **k: calls.append(a) or real(*a, **k))
    again = TaskData(cfg, tokenizer, seed=3, log=lambda *a: None, cache_dir=str(tmp_path))
    assert calls == [] and again.train == first.train and again.test == first.test
    assert again.next_batch(7) == first.next_batch(7)
    other = TaskData(DataConfig(num_train=40, num_test=10, data_seed=5), tokenizer, seed=3, log=lambda *a: None,
                     cache_dir=str(tmp_path))
    assert len(calls) == 1 and other.train != first.train  # another key: generated afresh
