"""--autocast bfloat16: the training forwards' model body under bf16 autocast, float32 weights; the
LM head, log-probs and loss after it in float32; the CPU's training attention in float32.

The tolerances are derived from bf16's unit roundoff u = 2^-8, not tuned. Model of the error: the
body writes 2L + 1 tensors into (or out of) the residual stream (each layer's attention and MLP
output, the final norm), each computed from bf16-rounded operands and rounded to bf16 once, so
each carries a relative error of ~2u of its own size, and RMSNorm rescales what the next sublayer
reads: the final hidden state's relative error is <= (2L + 1) * 2u (measured: ~4.5u at L = 4,
against the bound's 18u). From the hidden state on everything is float32, so a log-prob's error
follows exactly: log-softmax moves by at most twice the largest logit error, and a logit's error
is at most ||w_v|| * ||dh|| (Cauchy-Schwarz on the float32 LM head row w_v).
"""
from __future__ import annotations

import copy

import pytest
import torch

from fastzero.config import THINKING_MODEL, Config, resolve_model_path, validate
from fastzero.model import (autocast_dtype, body_autocast, has_bf16_matrix_units, lm_head_weight, load_causal_lm,
                            response_tokens, sequence_logprobs)
from fastzero.run import Run
from fastzero.trainer import Trainer
from tests._helpers import sum_rtol, unit_roundoff

BF16_U = unit_roundoff(torch.bfloat16)


@pytest.fixture(scope="module")
def model():
    return load_causal_lm(resolve_model_path(THINKING_MODEL), dtype="float32", device="cpu",
                          attn_implementation="sdpa")[0]


def _batch(seed: int = 0, shared: bool = False):
    """Right-padded [prompt | response | pad] rows; shared=True gives groups of 3 rows per prompt
    (the shared-prefix training forward's case), else every row its own prompt."""
    g = torch.Generator().manual_seed(seed)
    rows, width, prompt = 6, 30, 11
    ids = torch.randint(3, 400, (rows, width), generator=g)
    if shared:
        ids[:, :prompt] = ids[::3, :prompt].repeat_interleave(3, 0)
    attention = torch.ones(rows, width, dtype=torch.long)
    attention[1, 24:] = 0
    attention[4, 19:] = 0
    response = torch.zeros(rows, width)
    response[:, prompt:] = 1
    return ids, attention, response * attention


def test_off_is_none_and_half_weights_are_refused():
    cpu = torch.device("cpu")
    assert autocast_dtype("off", torch.float32, cpu) is None
    assert autocast_dtype("bfloat16", torch.float32, cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="--autocast bfloat16: needs float32 weights.*bfloat16"):
        autocast_dtype("bfloat16", torch.bfloat16, cpu)
    config = Config()
    config.set("dtype", "bfloat16")
    config.set("autocast", "bfloat16")
    with pytest.raises(ValueError, match="--autocast"):
        validate(config)


@pytest.mark.parametrize("amx", [True, False])
def test_auto_is_bf16_only_for_float32_weights_on_a_cpu_with_amx(monkeypatch, amx):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    cpu = torch.device("cpu")
    assert has_bf16_matrix_units(cpu) is amx
    assert autocast_dtype("auto", torch.float32, cpu) is (torch.bfloat16 if amx else None)
    assert autocast_dtype("auto", torch.bfloat16, cpu) is None  # already half: nothing to autocast
    assert autocast_dtype("auto", torch.float32, torch.device("cuda")) is None


def test_body_computes_in_bf16_and_the_head_in_float32(model):
    seen = []
    hook = model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    try:
        ids, attention, response = _batch()
        plain = response_tokens(model, ids, attention, response)
        autocast = response_tokens(model, ids, attention, response, autocast=torch.bfloat16)
        logp = sequence_logprobs(model, ids, attention, response, autocast=torch.bfloat16)
    finally:
        hook.remove()
    assert seen == [torch.float32, torch.bfloat16, torch.bfloat16]  # a body matmul's output
    assert plain.hidden.dtype == autocast.hidden.dtype == logp.dtype == torch.float32
    assert torch.equal(plain.targets, autocast.targets) and torch.equal(plain.flat_positions, autocast.flat_positions)


@pytest.mark.parametrize("shared", [False, True], ids=["plain", "shared_prefix"])
def test_hidden_states_and_logprobs_against_float64(model, shared):
    ids, attention, response = _batch(seed=1, shared=shared)
    reference = copy.deepcopy(model).double()
    exact = response_tokens(reference, ids, attention, response)
    ours = response_tokens(model, ids, attention, response, shared_prefix=shared, autocast=torch.bfloat16)
    error = ours.hidden.double() - exact.hidden
    layers = model.config.num_hidden_layers
    relative = error.norm(dim=-1) / exact.hidden.norm(dim=-1)
    assert relative.max() <= (2 * layers + 1) * 2 * BF16_U, f"hidden relative error {relative.max():.3g}"

    weight = lm_head_weight(reference)
    exact_logp = torch.log_softmax(exact.hidden @ weight.T, dim=-1).gather(-1, exact.targets[:, None]).squeeze(-1)
    logp = exact.scatter(exact_logp, ids.shape)
    ours_logp = sequence_logprobs(model, ids, attention, response, shared_prefix=shared, autocast=torch.bfloat16)
    mask = response.bool()
    logit_bound = weight.norm(dim=-1).max() * error.norm(dim=-1).max()
    head_rounding = sum_rtol(torch.float32, weight.shape[0] + weight.shape[1]) * logp[mask].abs().max()
    logp_error = (ours_logp.double() - logp)[mask].abs().max()
    assert logp_error <= 2 * logit_bound + head_rounding, f"log-prob error {logp_error:.3g}"


@pytest.mark.parametrize("grad", [True, False], ids=["training", "scoring"])
def test_cpu_attention_runs_in_float32_under_autocast(model, monkeypatch, grad):
    """Under autocast SDPA would run in bf16, whose CPU backward is ~8x slower; and the reference's
    scoring (no gradient) must compute what the update's forward computes. So both run it with
    autocast off, on float32 q/k/v."""
    sdpa, calls = torch.nn.functional.scaled_dot_product_attention, []

    def recording(query, *args, **kwargs):
        calls.append((query.dtype, torch.is_autocast_enabled("cpu")))
        return sdpa(query, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    ids, attention, response = _batch(seed=2, shared=True)
    with torch.set_grad_enabled(grad):
        out = response_tokens(model, ids, attention, response, shared_prefix=grad, autocast=torch.bfloat16)
    if grad:
        out.hidden.sum().backward()
    assert calls and all(call == (torch.float32, False) for call in calls)


def test_autocast_context_is_nothing_when_off():
    with body_autocast(torch.device("cpu"), None):
        assert not torch.is_autocast_enabled("cpu")
    with body_autocast(torch.device("cpu"), torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")


def _trainer(tmp_path, autocast: str) -> Trainer:
    config = Config()
    # One optimizer step (mini-batch = the batch) so that the gradient compared is the first one: the
    # policy is still the reference, and the policy-gradient term (72 tokens: room for an answer, so
    # rewards differ within groups) dominates it.
    for key, value in dict(model_path=THINKING_MODEL, max_new_tokens=72, kl_coef=0.05, prompts_per_step=4,
                           samples_per_prompt=4, mini_batch_size=16, num_train=200,
                           num_test=4, threads=1, progress=False, temperature=0.7, lr=3e-4,
                           autocast=autocast).items():
        config.set(key, value)
    validate(config)
    return Trainer.from_run(Run(config, output_dir=str(tmp_path / autocast), log=lambda *a: None))


def test_a_training_step_under_autocast_matches_float32(tmp_path):
    """The same seed samples the same tokens (rollouts stay float32); the update's gradient norm, a
    bf16 forward and backward apart, is within twice the forward's relative bound; the weights and
    their gradients stay float32."""
    rows = {}
    for autocast in ("off", "bfloat16"):
        trainer = _trainer(tmp_path, autocast)
        rows[autocast], episodes = trainer.step(0)
        rows[autocast]["responses"] = episodes.response_ids
        assert all(p.dtype == torch.float32 for p in trainer.models.policy.parameters())
    assert rows["off"]["responses"] == rows["bfloat16"]["responses"]
    layers = 4  # the embedded thinking model
    bound = 2 * (2 * layers + 1) * 2 * BF16_U
    plain, mixed = rows["off"]["grad_norm"], rows["bfloat16"]["grad_norm"]
    assert torch.isfinite(torch.tensor(mixed)) and abs(mixed - plain) <= bound * plain, (plain, mixed)
