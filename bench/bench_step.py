"""One RL training step, timed by phase: FastZero's step against a naive loop, in the same run.

- ours: `fastzero.trainer.Trainer.step` (own KV-cache decoding loop, C++ batch reward,
  log-probs from hidden states through fastzero.kernels, fused policy loss, micro-batches).
- naive: the textbook loop on the same model and batch: `model.generate` for rollouts, the
  materialized [B, T, V] logits -> log_softmax -> gather for old and new log-probs, the reference
  policy loss, the Python `reference_score` for rewards.
Both start from the same weights and do the same work (GRPO, prompts x samples, one optimizer step).

It runs the tiny-direct preset (the embedded direct-answer model) on the CPU by default, or on a GPU with
`--device cuda`. Qwen2.5-0.5B/3B shapes with random weights on a GPU: not measured (no GPU lent).

    python bench/bench_step.py                       # tiny preset on CPU
    python bench/bench_step.py --steps 3 --prompts 64 --samples 8
Prints a table per phase with the ratio naive/ours, the step's achieved FLOP/s against a fp32
matmul rate measured in the same run (the CPU's "MFU"), and one JSON line at the end.

FLOPs are the job's nominal model FLOPs, the same for both loops: 2N per token generated (prompt
tokens included: prefill), 2N per token scored for old log-probs, 6N per token updated (forward +
backward), for every sequence, N = the matmul weights (LM head included, embedding lookup not),
plus attention's 4 x layers x hidden x context per token and pass. Ours skips work the naive loop
does (one prefill per prompt, no gradient for zero-advantage groups, no separate old-log-prob
forward when the update is on-policy, each prompt run once in the update's forward), so its actual
FLOPs are fewer: its "achieved" rate is the nominal job over its time, directly comparable with the
naive loop's.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import torch

from fastzero.config import validate
from fastzero.presets import from_preset
from fastzero.kernels.reference import group_advantages as ref_group_advantages
from fastzero.kernels.reference import policy_loss as ref_policy_loss
from fastzero.run import Run
from fastzero.tasks.countdown.reference import reference_score
from fastzero.trainer import Trainer

PHASES = ("rollout", "reward", "logprobs", "update")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def materialized_logprobs(model, input_ids, attention_mask, response_mask, temperature):
    """The naive way: full [B, T, V] logits, log_softmax over the vocabulary, gather."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float() / temperature
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    out = torch.zeros_like(response_mask)
    out[:, 1:] = logp
    return out * response_mask


def naive_step(run: Run, optimizer: torch.optim.Optimizer, prompts: int, samples: int) -> dict[str, float]:
    cfg, model, tok, device = run.config, run.policy, run.tokenizer, run.device
    problems = run.data.next_batch(prompts)
    ids = [run.data.prompt_ids(p) for p in problems]
    width = max(len(i) for i in ids)
    input_ids = torch.tensor([[run.pad_id] * (width - len(i)) + i for i in ids], device=device)
    mask = (torch.arange(width, device=device)[None] >= torch.tensor([width - len(i) for i in ids], device=device)[:, None]).long()
    times = {}
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=True,
                             temperature=cfg.rollout.temperature, max_new_tokens=cfg.rollout.max_new_tokens,
                             num_return_sequences=samples, pad_token_id=run.pad_id,
                             eos_token_id=list(run.stop_ids))
    _sync(device)
    times["rollout"] = time.perf_counter() - t0
    sequences = out  # [P*G, width + new]: the left-padded prompt, then the response, pads after EOS
    generated = sequences[:, width:]
    is_stop = torch.isin(generated, torch.tensor(run.stop_ids, device=device))
    after_stop = (is_stop.long().cumsum(1) - is_stop.long()) > 0  # strictly after the first stop
    response_valid = (~after_stop).long()
    attention = torch.cat([mask.repeat_interleave(samples, 0), response_valid], dim=1)
    response = torch.cat([torch.zeros_like(mask.repeat_interleave(samples, 0)), response_valid], dim=1).float()

    t0 = time.perf_counter()
    texts = tok.batch_decode([s[width:][response[i, width:] > 0].tolist() for i, s in enumerate(sequences)],
                             skip_special_tokens=False)
    flat = [p for p in problems for _ in range(samples)]
    scores = torch.tensor([reference_score(t.replace(tok.eos_token or "\0", ""), p.numbers, p.target)
                           for t, p in zip(texts, flat)], device=device)
    times["reward"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with torch.no_grad():
        old = materialized_logprobs(model, sequences, attention, response, cfg.rollout.temperature)
    _sync(device)
    times["logprobs"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    adv = ref_group_advantages(scores.float(), samples, method="grpo")
    new = materialized_logprobs(model, sequences, attention, response, cfg.rollout.temperature)
    loss, _ = ref_policy_loss(new, old, adv, response)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    _sync(device)
    times["update"] = time.perf_counter() - t0
    times["tokens"] = float(attention.sum())
    return times


def matmul_flops_per_s(device: torch.device, size: int = 1024, repeats: int = 5) -> float:
    """The machine's fp32 matmul rate now: the median of `repeats` [size, size] x [size, size] products."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b  # warm-up
    rates = []
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        a @ b
        _sync(device)
        rates.append(2 * size ** 3 / (time.perf_counter() - started))
    return sorted(rates)[len(rates) // 2]


def matmul_params(model) -> int:
    """Weights that take part in a matmul per token: every 2-D weight but the input embedding (a
    lookup); a tied LM head counts once, as the LM head."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters() if p.dim() == 2 and p is not embedding)
    return total + (head.numel() if head is embedding else 0)


def nominal_step_flops(model, prompt_len: int, response_len: float, sequences: int) -> float:
    """The job's model FLOPs for one step (see the module docstring)."""
    c = model.config
    context = prompt_len + response_len
    attention = 4 * c.num_hidden_layers * c.hidden_size * context  # scores + weighted sum, per token
    per_token_forward = 2 * matmul_params(model) + attention
    tokens = sequences * context
    return tokens * per_token_forward * (1 + 1 + 3)  # generate, old log-probs, update (fwd + 2x bwd)


def build_run(args, output_dir: str) -> Run:
    cfg = from_preset("tiny-direct")
    for key, value in dict(prompts_per_step=args.prompts, samples_per_prompt=args.samples,
                           mini_batch_size=args.prompts * args.samples, num_train=2000, num_test=16,
                           progress=False, device=args.device, threads=args.threads).items():
        cfg.set(key, value)
    validate(cfg)
    return Run(cfg, output_dir=output_dir, log=lambda *a: None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per loop (after one warm-up)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run = build_run(args, os.path.join(tmp, "ours"))
        matmul_rates = [matmul_flops_per_s(run.device)]  # again at the end: the ceiling is the faster one
        trainer = Trainer.from_run(run)
        initial = {k: v.clone() for k, v in run.policy.state_dict().items()}
        ours = []
        for step in range(args.steps + 1):  # step 0 warms up
            tokens_before = run.state.tokens
            trainer.timer.take_step()
            started = time.perf_counter()
            trainer.step(step + 1)
            phases = trainer.timer.take_step()
            phases["total"] = time.perf_counter() - started
            phases["tokens"] = run.state.tokens - tokens_before
            if step:
                ours.append(phases)
        run.policy.load_state_dict(initial)  # the naive loop starts from the same weights
        optimizer = torch.optim.AdamW(run.policy.parameters(), lr=run.config.optimizer.lr)
        naive = []
        for step in range(args.steps + 1):
            started = time.perf_counter()
            phases = naive_step(run, optimizer, args.prompts, args.samples)
            phases["total"] = time.perf_counter() - started
            if step:
                naive.append(phases)

    def mean(rows, key):
        return sum(r.get(key, 0.0) for r in rows) / max(1, len(rows))

    peak = max(matmul_rates + [matmul_flops_per_s(run.device)])
    sequences = args.prompts * args.samples
    prompt_len = len(run.data.prompt_ids(run.data.test[0]))
    # tokens per step = prompt + response tokens of every sequence (the same job for both loops)
    response_len = mean(ours, "tokens") / sequences - prompt_len
    flops = nominal_step_flops(run.policy, prompt_len, response_len, sequences)

    print(f"one GRPO step, tiny-direct preset, {args.prompts} prompts x {args.samples} samples, "
          f"device {run.device}, {torch.get_num_threads()} threads, {platform.machine()}, mean of {args.steps} steps")
    print(f"{'phase':<10}{'ours s':>10}{'naive s':>10}{'naive/ours':>12}")
    result = {}
    for key in PHASES + ("total",):
        a, b = mean(ours, key), mean(naive, key)
        skipped = a < 1e-3  # ours skips the phase (on-policy: no separate old-log-prob forward)
        result[key] = {"ours_s": round(a, 4), "naive_s": round(b, 4), "ratio": None if skipped else round(b / a, 2)}
        print(f"{key:<10}{a:>10.3f}{b:>10.3f}" + (f"{'skipped':>12}" if skipped else f"{b / a:>12.2f}"))
    tok_ours = mean(ours, "tokens") / max(1e-9, mean(ours, "total"))
    tok_naive = mean(naive, "tokens") / max(1e-9, mean(naive, "total"))
    print(f"{'tokens/s':<10}{tok_ours:>10.0f}{tok_naive:>10.0f}{tok_ours / max(1e-9, tok_naive):>12.2f}  (ours/naive)")
    achieved = {"ours": flops / mean(ours, "total"), "naive": flops / mean(naive, "total")}
    print(f"{'GFLOP/s':<10}{achieved['ours'] / 1e9:>10.2f}{achieved['naive'] / 1e9:>10.2f}"
          f"{achieved['ours'] / achieved['naive']:>12.2f}  (nominal {flops / 1e9:.1f} GFLOP per step)")
    print(f"{'% matmul':<10}{100 * achieved['ours'] / peak:>9.1f}%{100 * achieved['naive'] / peak:>9.1f}%"
          f"{'':>12}  (fp32 1024^3 matmul, best of start/end of this run: {peak / 1e9:.1f} GFLOP/s on {torch.get_num_threads()} threads)")
    print(json.dumps({"bench": "step", "preset": "tiny-direct", "device": str(run.device), "prompts": args.prompts,
                      "samples": args.samples, "phases": result, "tokens_per_s": {"ours": round(tok_ours),
                                                                                   "naive": round(tok_naive)},
                      "nominal_gflop_per_step": round(flops / 1e9, 3), "matmul_gflop_s": round(peak / 1e9, 2),
                      "achieved_gflop_s": {k: round(v / 1e9, 3) for k, v in achieved.items()},
                      "pct_of_matmul": {k: round(100 * v / peak, 2) for k, v in achieved.items()}}))


if __name__ == "__main__":
    main()
