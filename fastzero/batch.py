"""Turn rollouts into padded training tensors, and split them into mini- and micro-batches.

Sequences are right-padded: with causal attention a pad after the last real token changes nothing
before it, so no position ids are needed. Every per-token tensor is aligned with `input_ids` (the
log-prob of the token at position t sits at t), and `response_mask` marks the generated tokens: the
prompt and padding never carry a loss. `rollout_logprobs` holds the rollout engine's own log-prob of
each response token (same alignment), for importance-sampling corrections between the sampler and
the trainer; `truncated` marks responses cut at --max-new-tokens. Micro-batches group sequences of similar length (sorted) so
that rows x longest-row stays within a token budget.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SequenceBatch:
    input_ids: torch.Tensor  # [B, L] int64
    attention_mask: torch.Tensor  # [B, L] int64, 1 on prompt and response tokens
    response_mask: torch.Tensor  # [B, L] float32, 1 on generated tokens
    lengths: torch.Tensor  # [B] total tokens per row
    rollout_logprobs: torch.Tensor | None = None  # [B, L] float32, the sampler's log-probs (0 off the response)
    truncated: torch.Tensor | None = None  # [B] bool, the response hit the length cap (finish reason "length")

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, rows: torch.Tensor) -> "SequenceBatch":
        """The batch of `rows` (indices), cut to their longest length."""
        width = int(self.lengths[rows].max()) if len(rows) else 1
        return SequenceBatch(self.input_ids[rows, :width], self.attention_mask[rows, :width],
                             self.response_mask[rows, :width], self.lengths[rows],
                             self.rollout_logprobs[rows, :width] if self.rollout_logprobs is not None else None,
                             self.truncated[rows] if self.truncated is not None else None)


def collate(prompts: list[list[int]], responses: list[list[int]], *, pad_id: int,
            device: torch.device | str = "cpu", rollout_logprobs: list[list[float]] | None = None,
            finish_reasons: list[str] | None = None) -> SequenceBatch:
    """Right-padded [B, L] tensors of prompt + response token ids (and the sampler's log-probs)."""
    if len(prompts) != len(responses):
        raise ValueError(f"collate: {len(prompts)} prompts but {len(responses)} responses")
    for name, extra in (("rollout_logprobs", rollout_logprobs), ("finish_reasons", finish_reasons)):
        if extra is not None and len(extra) != len(responses):
            raise ValueError(f"collate: {len(extra)} {name} for {len(responses)} responses")
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    width = max(lengths, default=1)
    # Vectorized: one flat tensor of every row's tokens, written through the row-major [B, L] masks
    # (a Python loop of per-row slice writes cost ~20 ms per 512 rows on CPU).
    length_t = torch.tensor(lengths, dtype=torch.long)
    prompt_t = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    columns = torch.arange(width)[None, :]
    real = columns < length_t[:, None]
    is_response = real & (columns >= prompt_t[:, None])
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    ids[real] = torch.tensor([t for p, r in zip(prompts, responses) for t in (*p, *r)], dtype=torch.long)
    attention = real.long()
    response = is_response.float()
    sampler = None
    if rollout_logprobs is not None:
        for row, (r, logp) in enumerate(zip(responses, rollout_logprobs)):
            if len(logp) != len(r):
                raise ValueError(f"collate: response {row} has {len(r)} tokens but {len(logp)} log-probs")
        sampler = torch.zeros((len(prompts), width), dtype=torch.float32)
        sampler[is_response] = torch.tensor([x for logp in rollout_logprobs for x in logp], dtype=torch.float32)
        sampler = sampler.to(device)
    truncated = (torch.tensor([reason == "length" for reason in finish_reasons], dtype=torch.bool)
                 if finish_reasons is not None else None)
    return SequenceBatch(ids.to(device), attention.to(device), response.to(device), length_t, sampler, truncated)


def last_response_index(response_mask: torch.Tensor) -> torch.Tensor:
    """[B] position of each row's last generated token (0 for a row without one)."""
    positions = torch.arange(response_mask.shape[1], device=response_mask.device)
    return (response_mask * positions).amax(dim=1).long()


def minibatches(n: int, size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    """Shuffled row indices split into mini-batches of `size` (the last may be smaller)."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return [order[i:i + size] for i in range(0, n, size)]


def microbatches(rows: torch.Tensor, lengths: torch.Tensor, token_budget: int) -> list[torch.Tensor]:
    """Split `rows` into groups whose (rows x longest length) stays within `token_budget`.

    Rows are sorted by length first, so short sequences are not padded to long ones. A single
    sequence longer than the budget still forms a micro-batch of its own.
    """
    order = rows[torch.argsort(lengths[rows], stable=True)]
    groups, current, longest = [], [], 0
    for row in order.tolist():
        length = int(lengths[row])
        if current and max(longest, length) * (len(current) + 1) > token_budget:
            groups.append(torch.tensor(current, dtype=torch.long))
            current, longest = [], 0
        current.append(row)
        longest = max(longest, length)
    if current:
        groups.append(torch.tensor(current, dtype=torch.long))
    return groups
