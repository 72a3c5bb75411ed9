"""fastzero.model on a tiny random Qwen2 saved to a temp dir: loading, hidden states, packing,
response log-probs against a float64 full-logits oracle, and the critic."""
from __future__ import annotations

import json

import pytest
import torch

from fastzero.model import (
    CriticModel,
    choose_backends,
    hidden_states,
    lm_head_weight,
    load_causal_lm,
    pack_padded,
    sequence_logprobs,
)
from tests._helpers import assert_grad_close, sum_rtol

VOCAB = 37
HIDDEN, INTERMEDIATE, LAYERS, WIDTH = 64, 96, 2, 11  # tiny_config and padded_batch

# Two fp32 evaluations of the same forward that differ only in layout (padding, packing, batch
# size) differ by rounding: at most fp32's bound for the longest chain of sums a value goes through
# (each layer's attention over the row and MLP, the LM head's dot product and softmax sum).
FORWARD_RTOL = sum_rtol(torch.float32, LAYERS * (HIDDEN + INTERMEDIATE + WIDTH) + HIDDEN + VOCAB)
# fp32 log-probs from fp32 hidden states against float64 on the same hidden states: the LM head's
# dot product and the log-sum-exp over the vocabulary, relative to the logits' size.
HEAD_RTOL = sum_rtol(torch.float32, HIDDEN + VOCAB)


def assert_same_forward(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(actual, expected, rtol=FORWARD_RTOL, atol=FORWARD_RTOL * scale)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads; on a busy 2-core box OpenMP spin-waiting
    makes them far slower: run this module single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(tie: bool = True):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                       tie_word_embeddings=tie, initializer_range=0.2, eos_token_id=1)


def save_tiny(tmp_path_factory, tie: bool):
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tied" if tie else "untied")
    Qwen2ForCausalLM(tiny_config(tie)).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory, tie=True)


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def tied_or_untied_dir(request, tmp_path_factory):
    return save_tiny(tmp_path_factory, tie=request.param)


def padded_batch(seed: int = 0):
    """Left-padded prompts of different lengths followed by responses; one row also right-padded."""
    g = torch.Generator().manual_seed(seed)
    lengths = [(3, 4), (6, 2), (1, 5), (5, 5)]  # (prompt, response)
    width = max(p + r for p, r in lengths) + 1
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    response = torch.zeros_like(ids)
    for row, (p, r) in enumerate(lengths):
        end = width - (1 if row == 3 else 0)  # row 3 ends with one pad on the right
        start = end - p - r
        ids[row, start:end] = torch.randint(2, VOCAB, (p + r,), generator=g)
        mask[row, start:end] = 1
        response[row, start + p:end] = 1
    return ids, mask, response


def oracle_logprobs(model, ids, mask, response, temperature):
    """float64 log_softmax over full logits of the same forward, shifted by one."""
    hidden = hidden_states(model, ids, mask).double()
    logits = hidden @ lm_head_weight(model).double().T / temperature
    logprobs = torch.log_softmax(logits, dim=-1)
    token_lp = torch.zeros(ids.shape, dtype=torch.float64)
    token_lp[:, 1:] = logprobs[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    entropy = torch.zeros(ids.shape, dtype=torch.float64)
    entropy[:, 1:] = -(logprobs.exp() * logprobs).sum(-1)[:, :-1]
    keep = response.bool()
    return token_lp * keep, entropy * keep, float(logits.detach().abs().max())


# ---- loading ---------------------------------------------------------------------------------------


def test_missing_path_and_config_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_causal_lm(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_causal_lm(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        CriticModel.from_pretrained(tmp_path)


def test_bad_backend_requests_fail_before_loading(model_dir):
    with pytest.raises(ValueError, match="attn_implementation"):
        load_causal_lm(model_dir, attn_implementation="flash")
    with pytest.raises(ValueError, match="dtype"):
        load_causal_lm(model_dir, dtype="float99")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            load_causal_lm(model_dir, device="cuda")
        with pytest.raises(RuntimeError, match="flash"):
            load_causal_lm(model_dir, attn_implementation="flash_attention_2")
        with pytest.raises(RuntimeError, match="liger"):
            load_causal_lm(model_dir, use_liger=True)


def test_cpu_backends_and_gradient_checkpointing(model_dir):
    backends = choose_backends("cpu")
    assert (backends.attn_implementation, backends.liger, backends.dtype) == ("sdpa", False, torch.float32)
    model, chosen = load_causal_lm(model_dir, gradient_checkpointing=True)
    assert chosen == backends and model.config._attn_implementation == "sdpa"
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
    ids, mask, response = padded_batch()
    model.train()
    sequence_logprobs(model, ids, mask, response).sum().backward()  # checkpointed backward runs
    assert lm_head_weight(model).grad is not None


def test_lm_head_weight_tied_and_untied(tied_or_untied_dir):
    model, _ = load_causal_lm(tied_or_untied_dir)
    tied = model.config.tie_word_embeddings
    assert (lm_head_weight(model) is model.get_input_embeddings().weight) == tied
    assert lm_head_weight(model).shape == (VOCAB, 64)


# ---- packing -----------------------------------------------------------------------------------------


def test_pack_unpack_round_trip():
    ids, mask, _ = padded_batch(3)
    packed = pack_padded(ids, mask)
    assert packed.input_ids.shape == (1, int(mask.sum()))
    # positions restart at 0 for each row
    starts = (packed.position_ids[0] == 0).nonzero().squeeze(-1).tolist()
    assert len(starts) == ids.shape[0]
    flat = torch.zeros(ids.numel(), dtype=ids.dtype).index_copy(0, packed.flat_index, packed.input_ids[0])
    assert torch.equal(flat.view(ids.shape), ids * mask)  # flat_index puts every token back in place
    assert packed.shape == tuple(ids.shape)


def test_packed_forward_matches_padded(model_dir):
    """transformers builds a block-diagonal mask for a packed SDPA row; results must equal padded."""
    model, _ = load_causal_lm(model_dir)
    ids, mask, response = padded_batch(1)
    padded = sequence_logprobs(model, ids, mask, response, packed=False)
    packed = sequence_logprobs(model, ids, mask, response, packed=True)
    assert_same_forward(packed, padded)


def test_left_padding_is_invisible(model_dir):
    """A row's hidden states do not depend on how much padding precedes it (position ids from mask)."""
    model, _ = load_causal_lm(model_dir)
    ids, mask, _ = padded_batch(2)
    batch_hidden = hidden_states(model, ids, mask)
    for row in range(ids.shape[0]):
        real = mask[row].bool()
        alone = hidden_states(model, ids[row][real][None], torch.ones(1, int(real.sum()), dtype=torch.long))
        assert_same_forward(batch_hidden[row][real], alone[0])


# ---- response log-probs -----------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sequence_logprobs_match_float64_full_logits(tied_or_untied_dir, temperature):
    model, _ = load_causal_lm(tied_or_untied_dir)
    ids, mask, response = padded_batch()
    logp, entropy = sequence_logprobs(model, ids, mask, response, temperature=temperature, return_entropy=True)
    want_logp, want_entropy, logit_scale = oracle_logprobs(model, ids, mask, response, temperature)
    assert logp.shape == ids.shape and logp.dtype == torch.float32
    tol = HEAD_RTOL * max(1.0, logit_scale)
    torch.testing.assert_close(logp.double(), want_logp, atol=tol, rtol=HEAD_RTOL)
    torch.testing.assert_close(entropy.double(), want_entropy, atol=tol, rtol=HEAD_RTOL)
    assert not logp[~response.bool()].any()


def test_sequence_logprobs_gradient_matches_full_logits(tied_or_untied_dir):
    model, _ = load_causal_lm(tied_or_untied_dir)
    ids, mask, response = padded_batch(4)
    upstream = torch.randn(ids.shape)
    (sequence_logprobs(model, ids, mask, response) * upstream).sum().backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    full = torch.zeros(ids.shape)
    full[:, 1:] = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    (full * response * upstream).sum().backward()
    # a weight's gradient also sums over every token of the batch
    rel = FORWARD_RTOL + sum_rtol(torch.float32, int(response.sum()))
    for g, p in zip(got, model.parameters()):
        assert_grad_close(g, p.grad, rel)


def test_sequence_logprobs_rejects_bad_masks(model_dir):
    model, _ = load_causal_lm(model_dir)
    ids, mask, response = padded_batch()
    with pytest.raises(ValueError, match="padding"):
        sequence_logprobs(model, ids, mask, torch.ones_like(response))
    bad = response.clone()
    bad[:, 0] = 1
    with pytest.raises(ValueError, match="column 0"):
        sequence_logprobs(model, ids, torch.ones_like(mask), bad)
    holey = mask.clone()
    row, col = 0, int(response[0].nonzero()[0])
    holey[row, col - 1] = 0
    with pytest.raises(ValueError, match="follows padding"):
        sequence_logprobs(model, ids, holey, response)
    with pytest.raises(ValueError, match="shape"):
        sequence_logprobs(model, ids, mask, response[:, 1:])


# ---- critic -----------------------------------------------------------------------------------------


def test_critic_from_causal_lm_shapes_and_round_trip(model_dir, tmp_path):
    critic = CriticModel.from_pretrained(model_dir)
    policy, _ = load_causal_lm(model_dir)
    # the critic's body is the policy's body
    for name, tensor in critic.backbone.state_dict().items():
        torch.testing.assert_close(tensor, policy.model.state_dict()[name])
    ids, mask, _ = padded_batch()
    values = critic(ids, mask)
    assert values.shape == ids.shape and values.dtype == torch.float32
    assert values.abs().max() < 1.0  # small init: values start near 0
    assert_same_forward(critic(ids, mask, packed=True)[mask.bool()], values[mask.bool()])
    with torch.no_grad():
        critic.value_head.weight.normal_()
        critic.value_head.bias.fill_(0.25)
    out = tmp_path / "critic"
    critic.save_pretrained(out)
    critic.save_pretrained(out)  # overwriting an existing critic goes through the swap path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["critic"]  # no temp dirs left behind
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 64
    reloaded = CriticModel.from_pretrained(out)
    torch.testing.assert_close(reloaded(ids, mask), critic(ids, mask))


def test_critic_gradients_reach_backbone(model_dir):
    critic = CriticModel.from_pretrained(model_dir)
    ids, mask, _ = padded_batch()
    (critic(ids, mask) * mask).sum().backward()
    assert critic.value_head.weight.grad.abs().sum() > 0
    assert critic.backbone.embed_tokens.weight.grad.abs().sum() > 0
