"""The hf engine's decoding loop for one micro-batch of rows (prompt-major: a prompt's n samples sit
next to each other), and the pieces it needs: KV buffers, attention masks, the sampler.

What makes it faster than a plain cached loop (each measured in bench/bench_rollout.py; results and
what did not pay in bench/RESULTS.md, "Rollouts"):
- shared-prefix prefill: each distinct prompt is prefilled once and its keys/values and last
  logits are copied to its n rows (an index_select): n times less prefill work;
- our own 4D attention mask (sdpa / eager), sliced from one preallocated [rows, width] bool
  table, so transformers builds no mask per token (flash-attention and others get the 2D mask),
  and none at all when no row is padded (attention then runs its plain causal kernel);
- done rows stay until at most `compact_fraction` of the rows are alive, then batch and buffers
  are compacted to the live rows;
- stop checks (the only host syncs of the loop) every `sync_every` tokens: 1 on CPU, where a sync
  costs nothing and an earlier exit saves forwards; more on GPU, where each sync stalls the queue;
- KV buffers allocated once per micro-batch and written in place (GrowingLayer), attention over
  the view of the columns written: no torch.cat of the whole cache per token (1.16x the thinking
  preset's rollout on the AVX-512 box; on an earlier AVX2 box, with short responses, the cat had
  won: bench/RESULTS.md, "Rollouts");
- Exp(1) noise drawn as -log(uniform) (exponential_noise): 1.22x the same rollout;
- static mode (GPU): full-length buffers exposed whole (the mask hides unwritten columns), a fixed
  batch and a fixed write-position tensor, so the step can be captured by
  torch.compile(mode="reduce-overhead") as a CUDA graph. On CPU it did not pay (compiling was slow
  and its step no faster), so the CPU default is the dynamic mode.

Determinism: sampling draws one exponential per (row, vocabulary entry) for EVERY row of the
micro-batch at every step, alive or not (as -log(U), U uniform: exponential_noise), and picks
argmax(probs / noise), torch.multinomial(probs, 1)'s own formula. So a row's token depends only
on the generator state and its own logits: compaction, the stop-check cadence and static or
dynamic buffers never change a token. (The engine before these changes drew noise only for the
rows still in the batch, so after the first compaction its stream differed; seeded runs and
resumes are bit-identical either way, since the generator state is checkpointed.)
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

from fastzero.rollout.base import Completion, SamplingParams


def sample_next(logits: torch.Tensor, params: SamplingParams, noise: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row from logits [B, V]; return (tokens [B], log-probs [B]).

    noise: Exp(1) draws [B, V] (None when greedy); argmax(probs / noise) is torch.multinomial's own
    formula for one sample, so the same draws give the same tokens. The log-prob is taken under the
    temperature-scaled distribution BEFORE top-k/top-p filtering: the distribution the trainer
    recomputes from hidden states, so the two can be compared.
    """
    if params.greedy:
        tokens = logits.argmax(dim=-1)
        return tokens, torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
    scaled = logits / params.temperature
    logprobs_all = torch.log_softmax(scaled, dim=-1)
    filtered = scaled
    vocab = scaled.shape[-1]
    if 0 < params.top_k < vocab:
        kth_largest = torch.topk(scaled, params.top_k, dim=-1).values[:, -1:]
        filtered = filtered.masked_fill(filtered < kth_largest, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(filtered, dim=-1, descending=True)
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the mass strictly before it already exceeds top_p (the first always stays).
        drop_sorted = (sorted_probs.cumsum(dim=-1) - sorted_probs) > params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        filtered = filtered.masked_fill(drop, float("-inf"))
    probs = torch.softmax(filtered, dim=-1)
    tokens = (probs / noise).argmax(dim=-1)
    return tokens, logprobs_all.gather(-1, tokens[:, None]).squeeze(-1)


class BufferLayer(DynamicLayer):
    """Static mode's keys/values for one layer: preallocated [rows, heads, capacity, head_dim]
    buffers, written in place at `write_at` (a tensor) and exposed whole (the mask hides the columns
    not written yet), so shapes and addresses stay fixed for a captured graph."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, *, length: int) -> None:
        super().__init__()
        self.keys, self.values, self.length = keys, values, length
        self.write_at: torch.Tensor | None = None  # the column the next token goes to
        self.is_initialized, self.device, self.dtype = True, keys.device, keys.dtype

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        self.keys.index_copy_(2, self.write_at, key_states)
        self.values.index_copy_(2, self.write_at, value_states)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length


def exponential_noise(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                      generator: torch.Generator | None) -> torch.Tensor:
    """Exp(1) draws as -log(U), U ~ Uniform[0, 1) (inverse transform; U = 0 gives +inf, a token
    that cannot win). On CPU torch's exponential_ draws element by element on one thread: 1.8 ms for
    the tiny thinking preset's [256, 418] per token, 25% of its rollout; uniform_ and a vectorized
    log take 0.3 ms for the same draws (bench/RESULTS.md, "Rollouts"). Half-precision logits get
    float32 noise: a small draw would round to 0 in float16 (probs / 0: inf or NaN)."""
    noise_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    uniform = torch.empty(shape, dtype=noise_dtype, device=device)
    return uniform.uniform_(generator=generator).log_().neg_()


class GrowingLayer(DynamicLayer):
    """Dynamic mode's keys/values for one layer: [rows, heads, capacity, head_dim] buffers
    allocated once per micro-batch; each token is written in place at the next column and
    attention reads the view of the columns written so far. A DynamicLayer's torch.cat per token
    instead copies the whole cache every token (42% of the tiny thinking preset's rollout on CPU:
    bench/RESULTS.md, "Rollouts")."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, *, length: int) -> None:
        super().__init__()
        self.key_buffer, self.value_buffer, self.length = keys, values, length
        self.is_initialized, self.device, self.dtype = True, keys.device, keys.dtype
        self._expose()

    def _expose(self) -> None:
        self.keys = self.key_buffer[:, :, :self.length]
        self.values = self.value_buffer[:, :, :self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        end = self.length + key_states.shape[-2]
        if end > self.key_buffer.shape[2]:
            raise RuntimeError(f"KV buffer full: {end} columns needed, {self.key_buffer.shape[2]} allocated")
        self.key_buffer[:, :, self.length:end] = key_states
        self.value_buffer[:, :, self.length:end] = value_states
        self.length = end
        self._expose()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.key_buffer = self.key_buffer.index_select(0, indices)
        self.value_buffer = self.value_buffer.index_select(0, indices)
        self._expose()


Allocate = Callable[[tuple, torch.Tensor], torch.Tensor]  # (key, a prefilled tensor) -> a buffer


def expanded_buffers(prefilled: DynamicCache, expand: torch.Tensor, capacity: int,
                     allocate: Allocate) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """Each layer's (keys, values, prompt width): [rows, heads, capacity, head_dim] buffers from
    `allocate`, holding `prefilled`'s keys/values copied to rows `expand` (the shared-prefix
    expansion: row r gets prompt expand[r]). `allocate` gets a key naming the buffer (layer, keys
    or values, shape, dtype, device) and the prefilled tensor it copies."""
    layers = []
    for index, layer in enumerate(prefilled.layers):
        width = layer.keys.shape[-2]
        buffers = []
        for kind, states in enumerate((layer.keys, layer.values)):
            shape = (expand.numel(), states.shape[1], capacity, states.shape[3])
            buffer = allocate((index, kind, shape, states.dtype, states.device), states)
            buffer[:, :, :width] = states.index_select(0, expand)
            buffers.append(buffer)
        layers.append((*buffers, width))
    return layers


def growing_cache(prefilled: DynamicCache, expand: torch.Tensor, capacity: int) -> Cache:
    """A Cache of GrowingLayers with room for `capacity` columns (fresh buffers per micro-batch: the
    dynamic mode exposes only the columns written, so the rest may hold anything)."""
    layers = expanded_buffers(prefilled, expand, capacity, lambda key, like: like.new_empty(key[2]))
    return Cache(layers=[GrowingLayer(keys, values, length=width) for keys, values, width in layers])


def kv_buffer_cache(prefilled: DynamicCache, expand: torch.Tensor, capacity: int, pool: dict) -> Cache:
    """A Cache of BufferLayers with room for `capacity` columns.

    pool: buffers kept between calls, so a captured graph sees the same addresses; their stale
    columns beyond the prompt are finite (zeros at first) and masked until overwritten."""

    def pooled(key: tuple, like: torch.Tensor) -> torch.Tensor:
        buffer = pool.get(key)
        if buffer is None:  # the unwritten columns are exposed (masked): they must be finite
            buffer = pool[key] = like.new_zeros(key[2])
            torch._dynamo.mark_static_address(buffer)  # mutated in place inside the graph
        return buffer

    layers = expanded_buffers(prefilled, expand, capacity, pooled)
    return Cache(layers=[BufferLayer(keys, values, length=width) for keys, values, width in layers])


def attention_mask(valid: torch.Tensor, queries: int, kind: str, dtype: torch.dtype) -> torch.Tensor | None:
    """The mask transformers' attention takes: valid [B, K] (True = a real token) to [B, 1, Q, K] for
    the last Q positions, causal; "2d" passes the 2D mask through; "none" (no row is padded) passes
    None, so attention runs its plain causal kernel. A query may always see itself, so a padding
    query never has an all-masked row (its softmax would be NaN, and its value vector, NaN, would
    leak into real rows through 0 * NaN)."""
    if kind == "none":
        return None
    if kind == "2d":
        return valid.long()
    keys = valid.shape[1]
    if queries == 1:
        allowed = valid[:, None, None, :]
    else:
        query_at = torch.arange(keys - queries, keys, device=valid.device)[:, None]
        key_at = torch.arange(keys, device=valid.device)[None, :]
        allowed = ((key_at <= query_at) & valid[:, None, None, :]) | (key_at == query_at)
    if kind == "bool":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=valid.device).masked_fill(~allowed, torch.finfo(dtype).min)


@dataclass
class DecodeOptions:
    compact_fraction: float  # compact when at most this fraction of the rows is alive (dynamic mode)
    sync_every: int  # stop checks (host syncs) every this many tokens
    static: bool  # full-length buffers and a fixed batch (no compaction): what a captured step needs
    mask_kind: str  # "bool" (sdpa), "additive" (eager) or "2d" (anything else)
    dtype: torch.dtype  # the model's compute dtype (an additive mask's)
    pad_token_id: int


STATIC_CAPACITY_MULTIPLE = 32
Forward = Callable[..., torch.Tensor]  # (input_ids, mask, positions, cache) -> logits of the last column


def decode(forward: Forward, static_step: Forward | None, prompts: list[list[int]], counts: list[int],
           params: SamplingParams, stop_ids: torch.Tensor, generator: torch.Generator | None,
           options: DecodeOptions, device: torch.device, pool: dict | None = None) -> list[Completion]:
    """Decode counts[i] samples of prompts[i] (distinct prompts, in row order); one Completion per row."""
    unique, width = len(prompts), max(len(p) for p in prompts)
    steps = params.max_new_tokens
    capacity = width + steps
    if options.static:  # fewer distinct shapes, fewer graphs to capture
        capacity = -(-capacity // STATIC_CAPACITY_MULTIPLE) * STATIC_CAPACITY_MULTIPLE
    valid_unique = torch.zeros((unique, capacity), dtype=torch.bool)
    input_ids = torch.full((unique, width), options.pad_token_id, dtype=torch.long)
    for row, ids in enumerate(prompts):  # LEFT padding: every prompt ends in the last prompt column
        input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        valid_unique[row, width - len(ids):width] = True
    input_ids, valid_unique = input_ids.to(device), valid_unique.to(device)
    positions = (valid_unique[:, :width].long().cumsum(-1) - 1).clamp_(min=0)
    if options.mask_kind != "2d" and not options.static and all(len(p) == width for p in prompts):
        options = replace(options, mask_kind="none")  # nothing to mask: causal attention as is

    # shared-prefix prefill: one forward per distinct prompt, then copy to its rows
    prefill = DynamicCache()
    mask = attention_mask(valid_unique[:, :width], width, options.mask_kind, options.dtype)
    logits = forward(input_ids, mask, positions, prefill)
    expand = torch.repeat_interleave(torch.arange(unique, device=device), torch.tensor(counts, device=device))
    logits, valid = logits.index_select(0, expand), valid_unique.index_select(0, expand)
    next_position = positions[:, -1].index_select(0, expand) + 1
    if options.static:
        cache = kv_buffer_cache(prefill, expand, capacity, pool if pool is not None else {})
        del prefill
    else:
        cache = growing_cache(prefill, expand, capacity)
        del prefill

    batch = expand.numel()
    tokens_out = torch.zeros((batch, steps), dtype=torch.long, device=device)
    logprobs_out = torch.zeros((batch, steps), dtype=logits.dtype, device=device)
    lengths = torch.full((batch,), steps, dtype=torch.long, device=device)
    stopped = torch.zeros(batch, dtype=torch.bool, device=device)
    rows: torch.Tensor | None = None  # original row of each current row; None while nothing was compacted
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    write_at = torch.full((1,), width, dtype=torch.long, device=device)
    for step in range(steps):
        noise = None
        if not params.greedy:  # every row of the micro-batch, alive or not: see the module docstring
            noise = exponential_noise((batch, logits.shape[-1]), logits.dtype, device, generator)
            noise = noise if rows is None else noise.index_select(0, rows)
        tokens, logprobs = sample_next(logits, params, noise)
        hit = torch.isin(tokens, stop_ids) & ~done
        at = slice(None) if rows is None else rows
        tokens_out[at, step], logprobs_out[at, step] = tokens, logprobs
        lengths[at] = torch.where(hit, step + 1, lengths[at])
        stopped[at] |= hit
        done |= hit
        if step == steps - 1:
            break
        if (step + 1) % options.sync_every == 0:
            alive = int((~done).sum())  # the loop's one host sync
            if alive == 0:
                break
            if not options.static and alive <= options.compact_fraction * done.numel():
                keep = (~done).nonzero().squeeze(-1)
                for layer in cache.layers:
                    layer.batch_select_indices(keep)
                rows = keep if rows is None else rows.index_select(0, keep)
                tokens, valid, next_position, done = tokens[keep], valid[keep], next_position[keep], done[keep]
        tokens = tokens.masked_fill(done, options.pad_token_id)
        valid[:, width + step] = True
        if options.static:
            write_at.fill_(width + step)
            for layer in cache.layers:
                layer.write_at = write_at
            run = static_step or forward
            logits = run(tokens[:, None], attention_mask(valid, 1, options.mask_kind, options.dtype),
                         next_position[:, None], cache)
        else:
            mask = attention_mask(valid[:, :width + step + 1], 1, options.mask_kind, options.dtype)
            logits = forward(tokens[:, None], mask, next_position[:, None], cache)
        next_position = next_position + 1

    token_lists, logprob_lists = tokens_out.tolist(), logprobs_out.tolist()
    return [
        Completion(prompt_index=-1, response_ids=token_lists[r][:n], logprobs=logprob_lists[r][:n],
                   finish_reason="stop" if s else "length")
        for r, (n, s) in enumerate(zip(lengths.tolist(), stopped.tolist()))
    ]

