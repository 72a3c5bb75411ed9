"""The rollout-engine protocol: sampling parameters, one completion, and what an engine must do.

An engine turns prompts (token ids) into n sampled responses each, takes new weights from the
trainer, and gives its memory back while the trainer trains. Token ids in and out, never text: the
trainer owns the tokenizer, and a round trip through text would change the ids it trains on.

Kept: the sampling knobs RL needs (n, max_new_tokens, temperature, top-p, top-k, stop ids, seed)
and the sampler's log-probs, which the trainer can compare with its own (an off-policy check).
Dropped: beam search, repetition/presence penalties, min_new_tokens, logit bias, streaming and
text stop strings: none of them belong in an R1-Zero rollout, and each would be one more thing the
two engines must agree on.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator, Literal, Protocol, Sequence, runtime_checkable

FinishReason = Literal["stop", "length"]


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to sample. temperature 0 means greedy; top_k <= 0 and top_p == 1 switch those filters off."""

    max_new_tokens: int
    n: int = 1  # samples per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop_token_ids: tuple[int, ...] = ()  # stop on these as well as on the model's EOS
    seed: int | None = None  # None: continue the engine's own random stream

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be an int >= 1, got {self.n!r}")
        if not (self.temperature >= 0.0) or self.temperature == float("inf"):  # also rejects NaN
            raise ValueError(f"temperature must be finite and >= 0 (0 = greedy), got {self.temperature!r}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int):
            raise ValueError(f"top_k must be an int (<= 0 switches it off), got {self.top_k!r}")
        stop = tuple(self.stop_token_ids)
        if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in stop):
            raise ValueError(f"stop_token_ids must be non-negative ints, got {self.stop_token_ids!r}")
        object.__setattr__(self, "stop_token_ids", stop)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an int or None, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclasses.dataclass
class Completion:
    """One sampled response.

    response_ids holds the generated tokens INCLUDING the stop token when one was hit (then
    finish_reason is "stop" and it is the last id): the trainer must see EOS in the response to
    learn to stop. logprobs[i] is the sampler's log-probability of response_ids[i] under the
    temperature-scaled distribution before top-p/top-k filtering (the distribution the trainer
    recomputes); with temperature 0 it is the plain log-softmax. None when the engine has none.
    """

    prompt_index: int
    response_ids: list[int]
    logprobs: list[float] | None
    finish_reason: FinishReason


@runtime_checkable
class RolloutEngine(Protocol):
    """What the trainer calls. generate returns, for each prompt in order, its n completions."""

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]: ...

    def update_weights(self, source: Any) -> None:
        """source: the trainer's nn.Module, or an iterable of (name, tensor) pairs."""
        ...

    def release_memory(self) -> None: ...

    def resume_memory(self) -> None: ...

    def memory_released(self, weights: Any = None) -> contextlib.AbstractContextManager[None]:
        """`with engine.memory_released(weights=policy): train()`: see the module-level memory_released."""
        ...

    def shutdown(self) -> None: ...


@contextlib.contextmanager
def memory_released(engine: Any, weights: Any = None) -> Iterator[None]:
    """Give the engine's memory to the trainer for the block; take it back however the block ends.

    On ANY exit (normal, or an exception such as a non-finite loss that skips the step) the engine
    resumes, and then, when `weights` is given (the trainer's policy module, or (name, tensor) pairs),
    reloads them: a resumed SGLang engine holds garbage weights and refuses to generate until they
    are reloaded, so without this a skipped step would break the next rollout. The exception, if
    any, propagates after that. A failed release leaves nothing to resume and is raised as is.
    """
    engine.release_memory()
    try:
        yield
    finally:
        engine.resume_memory()
        if weights is not None:
            engine.update_weights(weights)


def validate_prompts(prompts: Sequence[Sequence[int]], vocab_size: int | None = None) -> list[list[int]]:
    """Check prompts are non-empty lists of in-range token ids; return them as plain int lists."""
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise TypeError(f"prompts must be a list of token-id lists, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise ValueError("prompts is empty: nothing to generate")
    checked: list[list[int]] = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, (str, bytes)):
            raise TypeError(f"prompt {i} is text; engines take token ids (tokenize it first)")
        ids = [int(t) for t in prompt]
        if not ids:
            raise ValueError(f"prompt {i} is empty: a prompt needs at least one token")
        low, high = min(ids), max(ids)
        if low < 0 or (vocab_size is not None and high >= vocab_size):
            raise ValueError(f"prompt {i} has token ids outside [0, {vocab_size}): min {low}, max {high}")
        checked.append(ids)
    return checked
