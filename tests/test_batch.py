"""fastzero.batch: padding layout, row selection, mini- and micro-batch splits."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastzero.batch import collate, last_response_index, microbatches, minibatches

PROMPTS = [[5, 6, 7], [8], [9, 10]]
RESPONSES = [[1, 2], [3, 4, 5, 6], []]


def test_collate_right_pads_and_marks_the_response():
    batch = collate(PROMPTS, RESPONSES, pad_id=0, rollout_logprobs=[[-0.5, -1.0], [-1, -2, -3, -4], []],
                    finish_reasons=["stop", "length", "stop"])
    assert batch.input_ids.tolist() == [[5, 6, 7, 1, 2], [8, 3, 4, 5, 6], [9, 10, 0, 0, 0]]
    assert batch.attention_mask.tolist() == [[1] * 5, [1] * 5, [1, 1, 0, 0, 0]]
    assert batch.response_mask.tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 1], [0] * 5]
    assert batch.lengths.tolist() == [5, 5, 2]
    # the sampler's log-prob of the token at t sits at t, like every per-token tensor
    assert batch.rollout_logprobs.tolist() == [[0, 0, 0, -0.5, -1.0], [0, -1, -2, -3, -4], [0] * 5]
    assert batch.truncated.tolist() == [False, True, False]


def test_collate_without_sampler_extras_and_bad_lengths():
    batch = collate(PROMPTS, RESPONSES, pad_id=0)
    assert batch.rollout_logprobs is None and batch.truncated is None
    with pytest.raises(ValueError, match="3 prompts but 2 responses"):
        collate(PROMPTS, RESPONSES[:2], pad_id=0)
    with pytest.raises(ValueError, match="response 0 has 2 tokens but 1 log-probs"):
        collate(PROMPTS, RESPONSES, pad_id=0, rollout_logprobs=[[-1.0], [-1.0] * 4, []])
    with pytest.raises(ValueError, match="finish_reasons"):
        collate(PROMPTS, RESPONSES, pad_id=0, finish_reasons=["stop"])


def test_select_cuts_to_the_longest_selected_row_and_keeps_the_extras():
    batch = collate(PROMPTS, RESPONSES, pad_id=0, rollout_logprobs=[[-0.5, -1.0], [-1, -2, -3, -4], []],
                    finish_reasons=["stop", "length", "stop"])
    part = batch.select(torch.tensor([2, 0]))
    assert part.input_ids.tolist() == [[9, 10, 0, 0, 0], [5, 6, 7, 1, 2]]
    assert part.rollout_logprobs.tolist()[1] == [0, 0, 0, -0.5, -1.0]
    assert part.truncated.tolist() == [False, False]
    assert batch.select(torch.tensor([2])).input_ids.shape == (1, 2)


def test_last_response_index():
    batch = collate(PROMPTS, RESPONSES, pad_id=0)
    assert last_response_index(batch.response_mask).tolist() == [4, 4, 0]


@given(n=st.integers(1, 40), size=st.integers(1, 50), seed=st.integers(0, 2**16))
def test_minibatches_partition_the_rows(n, size, seed):
    parts = minibatches(n, size, torch.Generator().manual_seed(seed))
    assert sorted(torch.cat(parts).tolist()) == list(range(n))
    assert all(len(p) == size for p in parts[:-1]) and 1 <= len(parts[-1]) <= size


@settings(deadline=None)
@given(lengths=st.lists(st.integers(1, 30), min_size=1, max_size=25), budget=st.integers(1, 120),
       take=st.integers(1, 25))
def test_microbatches_cover_each_row_once_within_the_budget(lengths, budget, take):
    lengths = torch.tensor(lengths)
    rows = torch.arange(len(lengths))[: take]
    groups = microbatches(rows, lengths, budget)
    assert sorted(torch.cat(groups).tolist()) == rows.tolist()
    for group in groups:
        cost = len(group) * int(lengths[group].max())
        assert cost <= budget or len(group) == 1  # a row longer than the budget goes alone
    order = torch.cat(groups)
    assert lengths[order].tolist() == sorted(lengths[order].tolist())  # similar lengths together


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=8), st.integers(0, 10**6))
def test_collate_matches_a_row_by_row_oracle(shape, seed):
    """The vectorized collate writes exactly what row-by-row slice writes would."""
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(1, 50, (p,), generator=gen).tolist() for p, _ in shape]
    responses = [torch.randint(1, 50, (r,), generator=gen).tolist() for _, r in shape]
    logprobs = [(-torch.rand(r, generator=gen)).tolist() for _, r in shape]
    batch = collate(prompts, responses, pad_id=99, rollout_logprobs=logprobs)
    width = max(len(p) + len(r) for p, r in zip(prompts, responses))
    for row, (p, r, lp) in enumerate(zip(prompts, responses, logprobs)):
        n = len(p) + len(r)
        assert batch.input_ids[row].tolist() == p + r + [99] * (width - n)
        assert batch.attention_mask[row].tolist() == [1] * n + [0] * (width - n)
        assert batch.response_mask[row].tolist() == [0.0] * len(p) + [1.0] * len(r) + [0.0] * (width - n)
        assert batch.rollout_logprobs[row].tolist() == [0.0] * len(p) + torch.tensor(lp).tolist() + [0.0] * (width - n)
        assert int(batch.lengths[row]) == n
