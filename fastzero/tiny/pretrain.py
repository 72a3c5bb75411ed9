"""Pretrain the tiny Qwen2 Countdown model on the synthetic corpus and save it as an HF folder.

Kept: a stock `Qwen2ForCausalLM` (tied embeddings), AdamW with warmup + cosine decay, a loss on the
answer tokens only (the prompt numbers are random: predicting them teaches nothing), fixed-length rows
(every prompt is 8 tokens and answers are short, so padding wastes little and needs no packing), a
fixed number of steps so a rebuild with the same seed does the same work on any machine.
Dropped: packing, gradient accumulation, mixed precision, checkpoint resume (a build is minutes).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
from tokenizers import Tokenizer

from fastzero.atomic import atomic_directory
from fastzero.tiny.tokenizer import EOS, PAD, save_hf_tokenizer


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    intermediate_size: int = 512
    max_position_embeddings: int = 64  # prompt 8 + answer <= ~16 tokens; room for longer formats


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 1000
    batch_size: int = 128  # rows per step
    lr: float = 2e-3  # peak; a 1M-parameter model tolerates a high rate
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine decays to lr * this
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    length_buckets: bool = False  # batch rows of similar length (less padding for variable-length traces)


def make_model(vocab_size: int, shape: ModelShape, *, pad_id: int, eos_id: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        intermediate_size=shape.intermediate_size,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=None,
        use_cache=True,
    )
    return Qwen2ForCausalLM(config)


def encode_documents(tokenizer: Tokenizer, documents: Sequence[tuple[str, str]]):
    """(input_ids [N, L], loss_mask [N, L]): prompt + answer + EOS, right-padded with <pad>.

    loss_mask[i, t] says whether token t+1 (an answer token or the EOS) is a training target.
    """
    pad_id, eos_id = tokenizer.token_to_id(PAD), tokenizer.token_to_id(EOS)
    rows, masks = [], []
    for prompt, answer in documents:
        prompt_ids = tokenizer.encode(prompt).ids
        answer_ids = tokenizer.encode(answer).ids + [eos_id]
        rows.append(prompt_ids + answer_ids)
        masks.append([0] * (len(prompt_ids) - 1) + [1] * len(answer_ids))
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, (row, m) in enumerate(zip(rows, masks)):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(m)] = torch.tensor(m, dtype=torch.bool)
    return ids, mask


def answer_loss(model, ids: torch.Tensor, mask: torch.Tensor,
                tokens_per_batch: float | None = None) -> torch.Tensor:
    """Cross-entropy on the answer tokens: their sum over `tokens_per_batch` (default: their mean).

    A fixed divisor (the corpus's mean answer tokens per row times the batch size) weighs every token
    of the corpus alike. The per-batch mean does not when batches group rows by length: a batch of
    short rows has fewer tokens, so each counts more, and a choice that makes a document short (stop
    thinking now) is learned as likelier than the corpus makes it.
    """
    logits = model(input_ids=ids).logits[:, :-1].float()
    targets = ids[:, 1:]
    m = mask[:, :-1]
    if tokens_per_batch is None:
        return torch.nn.functional.cross_entropy(logits[m], targets[m])
    return torch.nn.functional.cross_entropy(logits[m], targets[m], reduction="sum") / tokens_per_batch


def pretrain(model, ids: torch.Tensor, mask: torch.Tensor, cfg: PretrainConfig,
             log: Callable[[str], None] = print) -> list[dict]:
    """Train in place for cfg.steps steps over shuffled epochs of the rows; returns a loss history."""
    generator = torch.Generator().manual_seed(cfg.seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95),
    )

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    model.train()
    lengths = mask.sum(1)
    tokens_per_batch = loss_divisor(lengths, cfg)
    order = _epoch_order(lengths, cfg, generator)
    cursor, history, start, running = 0, [], time.time(), None
    for step in range(cfg.steps):
        if cursor + cfg.batch_size > len(order):
            order, cursor = _epoch_order(lengths, cfg, generator), 0
        rows = order[cursor: cursor + cfg.batch_size]
        cursor += cfg.batch_size
        batch_mask = mask[rows]
        length = int(batch_mask.any(0).nonzero().max()) + 2  # trim trailing all-pad columns
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        loss = answer_loss(model, ids[rows, :length], batch_mask[:, :length], tokens_per_batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if step % 100 == 0 or step == cfg.steps - 1:
            history.append({"step": step, "loss": round(running, 4), "seconds": round(time.time() - start, 1)})
            log(f"step {step:5d}/{cfg.steps}  loss {running:.4f}  lr {lr_at(step):.2e}  {time.time() - start:6.1f}s")
    model.eval()
    return history


def loss_divisor(lengths: torch.Tensor, cfg: PretrainConfig) -> float | None:
    """answer_loss's divisor: the corpus's mean answer tokens per row times the batch size.

    Length-bucketed batches need it (see answer_loss); random ones keep the batch mean (None), which
    is what the shipped direct model (tiny-countdown) was built with.
    """
    return float(lengths.sum()) / len(lengths) * cfg.batch_size if cfg.length_buckets else None


def _epoch_order(lengths: torch.Tensor, cfg: PretrainConfig, generator: torch.Generator) -> torch.Tensor:
    """A shuffled order of the rows; with length_buckets, consecutive batches hold rows of similar
    length: each window of 32 batches is sorted by length, cut into batches, and the batches shuffled."""
    order = torch.randperm(len(lengths), generator=generator)
    if not cfg.length_buckets:
        return order
    window = 32 * cfg.batch_size
    batches = []
    for start in range(0, len(order) - cfg.batch_size + 1, window):
        chunk = order[start: start + window]
        chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
        batches += [chunk[i: i + cfg.batch_size] for i in range(0, len(chunk) - cfg.batch_size + 1, cfg.batch_size)]
    shuffled = torch.randperm(len(batches), generator=generator)
    return torch.cat([batches[i] for i in shuffled])


def save_checkpoint(model, tokenizer: Tokenizer, out_dir: str | os.PathLike, recipe: dict,
                    build_notes: str, *, max_new_tokens: int = 16) -> None:
    """Write the whole HF folder into a temp dir beside `out_dir`, then swap it in."""
    from transformers import GenerationConfig

    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        pad_id, eos_id = tokenizer.token_to_id(PAD), tokenizer.token_to_id(EOS)
        GenerationConfig(pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=None, do_sample=False,
                         max_new_tokens=max_new_tokens).save_pretrained(tmp)
        save_hf_tokenizer(tokenizer, tmp, model_max_length=model.config.max_position_embeddings)
        (tmp / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
        (tmp / "BUILD.md").write_text(build_notes)


def shape_dict(shape: ModelShape) -> dict:
    return asdict(shape)
