"""Shared fixtures for the rollout tests: one tiny random Qwen2 in fp32 and its exact float64 copy,
cache-free oracles, and the rounding tolerances that comparisons between them may use."""
from __future__ import annotations

import copy

import pytest
import torch

VOCAB, EOS = 24, 1
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 2], [3], [20, 4, 17, 9]]  # different lengths: padding


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core box OpenMP spin-waiting
    makes a 1 ms forward take 200 ms (measured): run these modules single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    # A large init range gives peaked, varied next-token distributions (not one repeated token).
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True, initializer_range=0.5, eos_token_id=EOS)
    return Qwen2ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model64(model):
    """The same weights in float64: paths that differ only in reduction order agree to ~1e-15 here,
    so comparisons between them test the logic, not the machine's float rounding."""
    return copy.deepcopy(model).double().eval()


def rounding_tolerance(model, dtype: torch.dtype, seq_len: int, scale: float) -> float:
    """How far two evaluation orders of one forward may drift apart in `dtype`, in log-prob units.

    A forward-error bound of the gamma_K = K*u kind (u = the dtype's unit roundoff) for a reduction of
    K terms, summed over the reductions one logit passes through: per layer the q/k/v/o and the MLP's
    gate/up projections (6 x hidden), its down projection (intermediate), the
    attention dot (head_dim) and weighted sum (seq_len), two RMSNorms (hidden); then the final norm,
    the LM head (hidden) and the log-softmax (vocab); times `scale`, the largest |logit| (at least 1).
    A bound from the dtype and the size of the sums, not a number one machine met: batched and
    single-row fp32 runs differ by reduction order on every CPU, and stay far inside it; a real bug (a
    position off by one, a padding token attended) moves log-probs by O(0.1) or more.
    """
    c = model.config
    head_dim = c.hidden_size // c.num_attention_heads
    per_layer = 6 * c.hidden_size + c.intermediate_size + head_dim + seq_len + 2 * c.hidden_size
    terms = c.num_hidden_layers * per_layer + 2 * c.hidden_size + c.vocab_size
    unit_roundoff = torch.finfo(dtype).eps / 2
    return terms * unit_roundoff * max(1.0, scale)


def full_forward_logits(model, prompt, response):
    """Logits predicting each response token, from one cache-free, unpadded forward, in float64."""
    ids = torch.tensor([list(prompt) + list(response)])
    with torch.no_grad():
        return model(input_ids=ids).logits[0, len(prompt) - 1:-1].double()


def full_forward_logprobs(model, prompt, response, temperature):
    """log_softmax(logits / T) of each response token, from one cache-free forward in float64."""
    logits = full_forward_logits(model, prompt, response)
    scale = temperature if temperature > 0 else 1.0
    return torch.log_softmax(logits / scale, -1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


def greedy_oracle(model, prompt, steps, stop=()):
    """Argmax decoding with a full forward per token: no cache, no padding, no batching. Returns the
    tokens and, per step, the gap between the two largest logits (how robust each argmax is)."""
    ids, margins = list(prompt), []
    for _ in range(steps):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
        top = torch.topk(logits, 2).values
        margins.append(float(top[0] - top[1]))
        token = int(logits.argmax())
        ids.append(token)
        if token in stop:
            break
    return ids[len(prompt):], margins
