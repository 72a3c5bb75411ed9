"""The training forward with each distinct prompt run once: shared-prefix hidden states.

A GRPO step trains G samples of every prompt, so a padded [B, T] batch holds each prompt G times,
and the prompt is often most of a row (the embedded model: 13 prompt tokens, ~9 response tokens).
Here the distinct prompts run once, with a KV cache; the cache is expanded to the rows (an index,
so gradients of the G rows add up in the shared prompt's keys and values); the responses run on
top of it. The hidden states are those of the plain forward up to rounding (other matmul shapes and
summation order), gradients included: attention sees the same keys and values at the same
positions, and the mask hides prompt padding exactly as the plain forward's padding mask does.

Taken only where it is exact and pays: sdpa or eager attention (a 4D mask), a model body that takes
a cache (not PEFT, not FSDP-sharded, no gradient checkpointing: its recompute drops the cache), and
fewer distinct prompts than rows. Otherwise `prefix_hidden` returns None and the caller runs the
plain forward.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import DynamicCache

from .rollout.hf_decode import attention_mask as decode_mask

_MASK_KINDS = {"sdpa": "bool", "eager": "additive"}


def _body_and_cache_kwarg(model: nn.Module) -> tuple[nn.Module, str] | None:
    """The model body and its cache argument's name, or None where the shared prefix does not apply."""
    if getattr(model.config, "_attn_implementation", None) not in _MASK_KINDS:
        return None
    checkpointing = getattr(type(model), "is_activation_checkpointing", None)  # transformers >= 5.2x's name
    if checkpointing is None:
        checkpointing = getattr(type(model), "is_gradient_checkpointing", None)
    if hasattr(model, "peft_config") or (checkpointing is not None and checkpointing.__get__(model)):
        return None
    body = model.base_model
    if body is model:
        return None
    from .sharding import is_sharded

    if is_sharded(model):
        return None
    params = inspect.signature(body.forward).parameters
    for name in ("cache", "past_key_values"):  # transformers >= 5.x names it `cache`
        if name in params:
            return body, name
    return None


def prefix_hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  response_mask: torch.Tensor, flat_targets: torch.Tensor) -> torch.Tensor | None:
    """Hidden states [N, H] that predict the tokens at `flat_targets` (the response tokens' indices
    into the flattened [B, T] batch, ascending), computed with each distinct prompt run once; None
    when the shared prefix does not apply (see the module docstring).

    Rows are right-padded [prompt | response | pad]; a row's prompt is everything before its first
    response token (checked upstream: the response is one run right after the prompt)."""
    found = _body_and_cache_kwarg(model)
    if found is None or flat_targets.numel() == 0:
        return None
    body, cache_kwarg = found
    batch, width = input_ids.shape
    device = input_ids.device
    has_response = response_mask.bool().any(dim=1)
    lengths = attention_mask.sum(dim=1)
    prompt_len = torch.where(has_response, response_mask.bool().int().argmax(dim=1), lengths)
    rows = has_response.nonzero().squeeze(-1)  # only rows with a response token need hidden states
    if not bool((response_mask.sum(dim=1)[rows] == (lengths - prompt_len)[rows]).all()):
        return None  # a response that is not one run up to the row's end: not the [prompt | response] layout
    keys: dict[tuple[int, ...], int] = {}
    owner_list = []
    ids_list, plen_list = input_ids[rows].tolist(), prompt_len[rows].tolist()
    for ids, n in zip(ids_list, plen_list):
        owner_list.append(keys.setdefault(tuple(ids[:n]), len(keys)))
    unique = len(keys)
    if unique >= len(owner_list) or min(plen_list) < 1:
        return None  # nothing shared (or a response at column 0, refused upstream)
    kind = _MASK_KINDS[model.config._attn_implementation]
    dtype = next(model.parameters()).dtype
    owner = torch.tensor(owner_list, device=device)
    prompt_width = max(plen_list)
    unique_len = torch.zeros(unique, dtype=torch.long)
    prompts = torch.zeros((unique, prompt_width), dtype=torch.long, device=device)
    for key, u in keys.items():
        prompts[u, :len(key)] = torch.tensor(key, dtype=torch.long)
        unique_len[u] = len(key)
    unique_len = unique_len.to(device)
    columns = torch.arange(prompt_width, device=device)
    prompt_valid = columns[None, :] < unique_len[:, None]

    cache = DynamicCache()
    out = body(input_ids=prompts, attention_mask=decode_mask(prompt_valid, prompt_width, kind, dtype),
               position_ids=columns[None, :].expand(unique, -1), use_cache=True, **{cache_kwarg: cache})
    prompt_hidden = out.last_hidden_state  # [U, P, H]
    last_prompt = prompt_hidden[torch.arange(unique, device=device), unique_len - 1]  # predicts response token 0

    # Response inputs: every token but each row's last (nothing is predicted from it).
    row_plen, row_len = prompt_len[rows], lengths[rows]
    queries = int((row_len - row_plen).max()) - 1
    table = last_prompt
    row_base = None
    if queries > 0:
        offsets = torch.arange(queries, device=device)
        take = (row_plen[:, None] + offsets[None, :]).clamp(max=width - 1)
        query_valid = offsets[None, :] < (row_len - row_plen - 1)[:, None]
        response_in = torch.where(query_valid, input_ids[rows].gather(1, take), 0)
        cache.batch_select_indices(owner)  # the shared keys/values, one copy per row (differentiable)
        valid = torch.cat([prompt_valid[owner], query_valid], dim=1)
        out = body(input_ids=response_in, attention_mask=decode_mask(valid, queries, kind, dtype),
                   position_ids=row_plen[:, None] + offsets[None, :], use_cache=True, **{cache_kwarg: cache})
        table = torch.cat([last_prompt, out.last_hidden_state.flatten(0, 1)])
        row_base = unique
    # Map each target (row b, column c) to its hidden state: the prompt's last one for the first
    # response token, else response query c - prompt_len - 1 of that row.
    target_row, target_col = flat_targets // width, flat_targets % width
    position_in_rows = torch.full((batch,), -1, dtype=torch.long, device=device)
    position_in_rows[rows] = torch.arange(len(rows), device=device)
    r = position_in_rows[target_row]
    step = target_col - prompt_len[target_row]
    source = owner[r]
    if row_base is not None:
        source = torch.where(step > 0, row_base + r * queries + (step - 1), source)
    return table[source]
