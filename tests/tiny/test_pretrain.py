"""Pretraining the tiny models (fastzero.tiny.pretrain): the loss weighs every answer token of the
corpus alike, also when batches group rows by length (the thinking model's build)."""
from __future__ import annotations

import random

import pytest
import torch

from fastzero.tiny.pretrain import (ModelShape, PretrainConfig, _epoch_order, answer_loss, encode_documents,
                                    loss_divisor, make_model)
from fastzero.tiny.tokenizer import EOS, PAD, train_tokenizer

SHORT = "<answer>1</answer>"
LONG = "<think>1+2=3 3+3=6\n2+3=5 5+1=6\n1+3=4 4+2=6</think><answer>1+2+3</answer>"


def _corpus(n: int, long_share: float, seed: int = 0):
    rng = random.Random(seed)
    documents = [("1 2 3=6:", LONG if rng.random() < long_share else SHORT) for _ in range(n)]
    tokenizer = train_tokenizer((p + a for p, a in documents), max_integer=6)
    return documents, tokenizer


def _tiny_model(tokenizer):
    torch.manual_seed(0)
    shape = ModelShape(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                       intermediate_size=32, max_position_embeddings=64)
    return make_model(tokenizer.get_vocab_size(), shape, pad_id=tokenizer.token_to_id(PAD),
                      eos_id=tokenizer.token_to_id(EOS))


def test_a_fixed_divisor_is_the_token_sum_over_it_in_float64():
    documents, tokenizer = _corpus(12, 0.5)
    ids, mask = encode_documents(tokenizer, documents)
    model = _tiny_model(tokenizer).double()
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[:, :-1].double(), -1)
        picked = logp.gather(-1, ids[:, 1:, None])[..., 0]
        m = mask[:, :-1].bool()
        expected_sum = -picked[m].sum()
        # answer_loss takes float32 logits: a sum of ~100 float32 log-probabilities, each rounded once.
        rel = 4 * torch.finfo(torch.float32).eps * int(m.sum())
        assert float(answer_loss(model, ids, mask, 7.5)) == pytest.approx(float(expected_sum / 7.5), rel=rel)
        assert float(answer_loss(model, ids, mask)) == pytest.approx(float(expected_sum / m.sum()), rel=rel)


def test_over_a_length_bucketed_epoch_every_answer_token_weighs_alike():
    # 60% of the answers think first (long), 40% answer at once (short): bucketed batches are all short
    # or all long, and a short batch holds about a fifth of a long one's tokens. Summed over an epoch,
    # pretrain's per-batch losses must be the corpus's token mean per batch: each token counted once,
    # with the same weight. A per-batch mean counts each short row's tokens ~5x more, so a build
    # learned "answer at once" (stop thinking) as likelier than the corpus makes it.
    cfg = PretrainConfig(batch_size=8, length_buckets=True)
    documents, tokenizer = _corpus(2 * 32 * cfg.batch_size, 0.6)  # two whole bucketing windows: no row left out
    ids, mask = encode_documents(tokenizer, documents)
    model = _tiny_model(tokenizer).double()
    order = _epoch_order(mask.sum(1), cfg, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(len(documents)))
    batches = order.view(-1, cfg.batch_size)
    lengths = mask[batches].sum(-1)
    assert (lengths.min(1).values == lengths.max(1).values).float().mean() > 0.9  # buckets: one length a batch
    divisor = loss_divisor(mask.sum(1), cfg)
    with torch.no_grad():
        per_batch = [answer_loss(model, ids[b], mask[b], divisor) for b in batches]
        batch_means = [answer_loss(model, ids[b], mask[b]) for b in batches]
        logp = torch.log_softmax(model(input_ids=ids).logits[:, :-1].double(), -1)
        m = mask[:, :-1].bool()
        corpus_mean = -logp.gather(-1, ids[:, 1:, None])[..., 0][m].mean()
    rel = 4 * torch.finfo(torch.float32).eps * int(m.sum())
    assert float(sum(per_batch)) == pytest.approx(float(corpus_mean) * len(batches), rel=rel)
    # What a per-batch mean would do instead: weigh a token by 1 / its batch's tokens, which here
    # differs more than 3-fold between short and long batches.
    tokens = mask[batches][:, :, :-1].sum((1, 2)).double()
    assert float(tokens.max() / tokens.min()) > 3
    expected_means = [float(-(logp[b].gather(-1, ids[b, 1:, None])[..., 0][m[b]]).sum() / n)
                      for b, n in zip(batches, tokens)]
    assert [float(x) for x in batch_means] == pytest.approx(expected_means, rel=rel)
    assert loss_divisor(mask.sum(1), PretrainConfig(length_buckets=False)) is None
