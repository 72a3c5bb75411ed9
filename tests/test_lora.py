"""LoRA RL through PEFT on the embedded tiny model (fp32, CPU): only adapters train and hold optimizer
state, the reference is the base model exactly, the merged weights are what the adapters compute,
the SGLang sync sends them under the base names (recording stand-in), both loss paths give the same
adapter gradient, and few-step runs write the adapter (and merged model) and resume bit-identically."""
from __future__ import annotations

import json

import pytest
import torch

from fastzero.batch import collate
from fastzero.config import EMBEDDED_MODEL, resolve_model_path
from fastzero.model import load_causal_lm, sequence_logprobs
from fastzero.run import Run
from fastzero.train import config_from_args, main
from fastzero.trainer import Trainer
from tests._helpers import assert_grad_close, sum_rtol
from tests._runs import TINY, assert_resume_is_bit_identical, rows

pytest.importorskip("peft")

LORA = ["--lora-rank", "4", "--lora-alpha", "8", "--kl-coef", "0.01"]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    run = Run(config_from_args(TINY + LORA + ["--output-dir", str(out)]), output_dir=str(out), log=lambda *a: None)
    with torch.no_grad():  # adapters as after some training: B != 0, so the policy differs from the base
        gen = torch.Generator().manual_seed(3)
        for name, p in run.policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return run


@pytest.fixture(scope="module")
def base_model():
    model, _ = load_causal_lm(resolve_model_path(EMBEDDED_MODEL), dtype=torch.float32, device="cpu",
                              attn_implementation="sdpa")
    return model.eval()


def _batch(run, seed=0, lengths=(3, 7, 1, 5)):
    gen = torch.Generator().manual_seed(seed)
    prompts = [run.data.prompt_ids(p) for p in run.data.train[:len(lengths)]]
    responses = [torch.randint(3, 40, (n,), generator=gen).tolist() for n in lengths]
    return collate(prompts, responses, pad_id=run.pad_id)


def test_only_adapters_train_and_hold_optimizer_state(lora_run):
    trainable = [n for n, p in lora_run.policy.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert not lora_run.policy.get_output_embeddings().weight.requires_grad  # the fused loss's head: frozen base
    group = lora_run.optimizers.policy.param_groups[0]["params"]
    assert len(group) == len(trainable)
    assert lora_run.models.reference is lora_run.policy  # no second copy of the model


def test_reference_logprobs_are_the_base_models(lora_run, base_model):
    batch = _batch(lora_run)
    trainer = Trainer.from_run(lora_run)
    old, ref, _ = trainer.score_tokens(batch, torch.ones(len(batch), dtype=torch.bool))
    with torch.no_grad():
        base = sequence_logprobs(base_model, batch.input_ids, batch.attention_mask, batch.response_mask)
    assert torch.equal(ref, base)  # the adapters are off: the very same computation as the base model
    assert not torch.allclose(old, base)  # while the policy (adapters on) differs


def test_merged_weights_compute_what_the_adapters_compute(lora_run, base_model):
    merged = dict(lora_run.models.lora.merged_named_tensors())
    assert list(merged) == [n for n, _ in base_model.named_parameters()]
    plain = type(base_model)(base_model.config)
    plain.load_state_dict(merged, strict=False)
    plain.tie_weights()
    batch = _batch(lora_run, seed=1)
    with torch.no_grad():
        want = sequence_logprobs(lora_run.policy, batch.input_ids, batch.attention_mask, batch.response_mask)
        got = sequence_logprobs(plain.eval(), batch.input_ids, batch.attention_mask, batch.response_mask)
    c = base_model.config
    rtol = sum_rtol(torch.float32, c.num_hidden_layers * (c.intermediate_size + c.hidden_size) + c.vocab_size)
    assert torch.allclose(got, want, rtol=0, atol=rtol * float(want.abs().max()))


def test_sglang_sync_sends_merged_weights_under_base_names(lora_run, base_model, tmp_path):
    from tests.rollout.test_sglang import make

    base_model.save_pretrained(tmp_path)
    engine, stand_in = make(tmp_path, dtype="float32")
    engine.update_weights(lora_run.models.weights_for(engine))
    sent = dict(pair for name, kw in stand_in.calls if name == "update_weights_from_tensor" for pair in kw["named_tensors"])
    merged = dict(lora_run.models.lora.merged_named_tensors())
    assert sent.keys() == merged.keys() == dict(base_model.named_parameters()).keys()
    for name in merged:
        assert torch.equal(sent[name], merged[name]), name
    # the hf engine shares the policy module: it gets the module itself (a no-op sync)
    assert lora_run.models.weights_for(lora_run.engine) is lora_run.policy


def test_fused_and_two_pass_losses_give_the_same_adapter_gradient(lora_run):
    batch = _batch(lora_run, seed=2)
    trainer = Trainer.from_run(lora_run)
    gen = torch.Generator().manual_seed(4)
    mask = batch.response_mask
    with torch.no_grad():
        current = sequence_logprobs(lora_run.policy, batch.input_ids, batch.attention_mask, mask)
    old = (current + 0.2 * torch.randn(mask.shape, generator=gen)) * mask
    ref = (current + 0.2 * torch.randn(mask.shape, generator=gen)) * mask
    adv = torch.randn(mask.shape, generator=gen) * mask
    grads = []
    for fused in (True, False):
        lora_run.config.algorithm.fused_loss = fused
        lora_run.optimizers.zero_grad()
        rows_ = torch.arange(len(batch))
        trainer.accumulate_gradients(batch, rows_, rows_, old, adv, ref, None, None)
        grads.append({n: p.grad.clone() for n, p in lora_run.policy.named_parameters() if p.grad is not None})
    lora_run.config.algorithm.fused_loss = True
    assert grads[0].keys() == grads[1].keys() and all(".lora_" in n for n in grads[0])
    c = lora_run.policy.config
    bound = sum_rtol(torch.float32, int(mask.sum()) + c.num_hidden_layers * (c.intermediate_size + c.hidden_size) + c.vocab_size)
    for name in grads[0]:
        assert_grad_close(grads[0][name], grads[1][name], bound)


def test_few_lora_steps_write_the_adapter_and_merged_model(tmp_path, base_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    assert main(TINY + LORA + ["--max-steps", "2", "--lora-save-merged", "true", "--output-dir", str(out)]) == 0
    steps = [r for r in rows(out) if "reward/mean" in r]
    assert len(steps) == 2 and all("kl/ref" in r for r in steps)
    adapter_config = json.loads((out / "final" / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4 and adapter_config["lora_alpha"] == 8
    merged = AutoModelForCausalLM.from_pretrained(out / "final").eval()
    adapted = PeftModel.from_pretrained(load_causal_lm(resolve_model_path(EMBEDDED_MODEL), dtype=torch.float32,
                                                       device="cpu", attn_implementation="sdpa")[0],
                                        out / "final" / "adapter").eval()
    ids = torch.tensor([[5, 9, 13, 2, 7, 30]])
    with torch.no_grad():
        want, got = adapted(input_ids=ids).logits, merged(input_ids=ids).logits
    c = base_model.config
    rtol = sum_rtol(torch.float32, c.num_hidden_layers * (c.intermediate_size + c.hidden_size) + c.vocab_size)
    assert torch.allclose(got, want, rtol=0, atol=rtol * float(want.abs().max()))


@pytest.mark.slow
def test_lora_resumes_bit_identically(tmp_path):
    assert_resume_is_bit_identical(tmp_path, TINY + LORA)


@pytest.mark.parametrize("flags, message", [
    (["--lora-rank", "4", "--lora-targets", "q_proj,lm_head"], "--lora-targets"),
    (["--lora-rank", "4", "--lora-targets", "no_such_proj"], "--lora-targets"),
    (["--lora-rank", "-1"], "--lora-rank"),
    (["--lora-save-merged", "true"], "--lora-save-merged"),
])
def test_bad_lora_options_are_usage_errors(tmp_path, capsys, flags, message):
    assert main(TINY + flags + ["--output-dir", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err
