"""The RL loop, one step as data flows (see ARCHITECTURE.md):

  problems -> rollout engine (G samples per prompt) -> reward (C++ score_batch)
  -> old / ref log-probs and values (hidden states -> fused_logprobs; never [tokens x vocab] logits)
  -> advantages (group_advantages | gae) -> PPO epochs over mini-batches, micro-batches by token
  budget, gradient accumulation, clipping, AdamW -> weight sync to the rollout engine
  -> metrics, periodic greedy evaluation, atomic checkpoints.

Everything here is orchestration; each arrow is a call into a module that does one job. Setup
(models, data, engine, resume) lives in fastzero/run.py so that this file reads as the step.
"""
from __future__ import annotations

import math
import time

import torch

from fastzero.kernels.fused_policy_loss import fused_linear_policy_loss
from fastzero.kernels.policy_loss import policy_loss, token_weights

from .algorithms import GROUP_METHODS, compute_advantages, value_loss
from .batch import SequenceBatch, collate, micro_weight, microbatches, minibatches
from .metrics import PhaseTimer
from .model import lm_head_weight, response_tokens, sequence_logprobs
from .rollout.base import SamplingParams
from .run import Run
from .tasks.countdown.verifier import score_batch


class NonFiniteError(RuntimeError):
    pass


class Trainer:
    def __init__(self, run: Run):
        self.run, self.cfg = run, run.config
        self.timer = PhaseTimer(run.state.get("phase_seconds"))

    # ---- one RL step -----------------------------------------------------------------------------
    def step(self, step: int) -> dict[str, float]:
        run, cfg = self.run, self.cfg
        r, a = cfg.rollout, cfg.algorithm
        problems = run.data.next_batch(r.prompts_per_step)
        prompts = [run.data.prompt_ids(p) for p in problems]

        with self.timer.phase("rollout"):
            params = SamplingParams(n=r.samples_per_prompt, max_new_tokens=r.max_new_tokens,
                                    temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                                    stop_token_ids=run.stop_ids)
            groups = run.engine.generate(prompts, params)
        flat_prompts = [prompts[i] for i, group in enumerate(groups) for _ in group]
        responses = [c.response_ids for group in groups for c in group]
        flat_problems = [problems[i] for i, group in enumerate(groups) for _ in group]

        with self.timer.phase("reward"):
            texts = run.decode_responses(responses)
            scores = torch.tensor(score_batch(texts, [p.numbers for p in flat_problems],
                                              [p.target for p in flat_problems],
                                              format_score=a.format_score, correct_score=a.correct_score))

        batch = collate(flat_prompts, responses, pad_id=run.pad_id, device=run.device)
        advantage_args = dict(group_size=r.samples_per_prompt, gamma=a.gamma, lam=a.lam,
                              kl_coef=a.kl_coef if a.kl_in_reward else 0.0)
        # Group methods need only the scores: their advantages come first, and then only the sequences
        # that carry a gradient need old / ref log-probs at all (see rows_with_gradient).
        advantages = returns = None
        if a.algorithm in GROUP_METHODS:
            advantages, returns = compute_advantages(a.algorithm, scores.to(run.device), batch.response_mask,
                                                     **advantage_args)
        active = self.rows_with_gradient(advantages, len(batch))
        with self.timer.phase("logprobs"):
            old_logp, ref_logp, old_values = self.score_tokens(batch, active)
        kl = (old_logp - ref_logp) * batch.response_mask if ref_logp is not None else None
        if advantages is None:
            advantages, returns = compute_advantages(a.algorithm, scores.to(run.device), batch.response_mask,
                                                     values=old_values, kl=kl, **advantage_args)

        with self.timer.phase("update"):
            run.engine.release_memory()
            stats = self.update(batch, old_logp, ref_logp, advantages, old_values, returns, active)
            run.engine.resume_memory()
        with self.timer.phase("sync"):
            run.engine.update_weights(run.policy)

        tokens = int(batch.response_mask.sum())
        run.state["tokens"] = run.state.get("tokens", 0) + int(batch.attention_mask.sum())
        correct = (scores == a.correct_score).float()
        row = {
            "step": step,
            "reward/mean": float(scores.mean()),
            "accuracy/train": float(correct.mean()),
            "response/length": tokens / max(1, len(responses)),
            "groups/zero_variance": _zero_variance_share(scores, r.samples_per_prompt),
            **stats,
        }
        if kl is not None:
            row["kl/ref"] = float(kl.sum() / batch.response_mask.sum().clamp(min=1))
        run.log_samples(step, flat_problems, texts, scores)
        return row

    def rows_with_gradient(self, advantages: torch.Tensor | None, n: int) -> torch.Tensor:
        """[n] bool: the sequences whose loss has a non-zero gradient.

        A sequence whose advantage is 0 everywhere (a GRPO group where every sample scored the same:
        55-80% of groups on the tiny preset) has a policy-gradient term of exactly 0 for any ratio, so
        when no KL, entropy or critic term applies it needs no log-probs, forward or backward. The
        loss normalizers still count it (micro_weight sees the whole mini-batch): the update is the
        same as if it were included.
        """
        a = self.cfg.algorithm
        if advantages is None or a.kl_coef > 0 or a.entropy_coef > 0 or self.run.critic is not None:
            return torch.ones(n, dtype=torch.bool)
        return (advantages != 0).any(dim=1).cpu()

    @torch.no_grad()
    def score_tokens(self, batch: SequenceBatch, active: torch.Tensor):
        """Old-policy and reference log-probs, and critic values, for the active rows (no grad)."""
        run, a = self.run, self.cfg.algorithm
        temperature = self.cfg.rollout.temperature
        budget = a.micro_batch_tokens
        old = torch.zeros_like(batch.response_mask)
        ref = torch.zeros_like(old) if run.reference is not None else None
        values = torch.zeros_like(old) if run.critic is not None else None
        for rows in microbatches(torch.arange(len(batch))[active], batch.lengths, budget):
            mb = batch.select(rows)
            width = mb.input_ids.shape[1]
            old[rows, :width] = sequence_logprobs(run.policy, mb.input_ids, mb.attention_mask,
                                                  mb.response_mask, temperature=temperature)
            if ref is not None:
                ref[rows, :width] = sequence_logprobs(run.reference, mb.input_ids, mb.attention_mask,
                                                      mb.response_mask, temperature=temperature)
            if values is not None:
                values[rows, :width] = _shifted_values(run.critic, mb) * mb.response_mask
        return old, ref, values

    def update(self, batch, old_logp, ref_logp, advantages, old_values, returns, carries_gradient) -> dict[str, float]:
        run, a = self.run, self.cfg.algorithm
        kl_in_loss = ref_logp is not None and not a.kl_in_reward and a.kl_coef > 0
        totals: dict[str, float] = {"update/skipped_rows": float((~carries_gradient).float().mean())}
        updates = 0
        for _ in range(a.ppo_epochs):
            for mini in minibatches(len(batch), a.mini_batch_size, run.shuffle_generator):
                mini_mask = batch.response_mask[mini]
                active = mini[carries_gradient[mini]]
                if len(active) == 0:  # no sequence in this mini-batch carries a gradient
                    continue
                run.optimizer.zero_grad(set_to_none=True)
                if run.critic_optimizer is not None:
                    run.critic_optimizer.zero_grad(set_to_none=True)
                mini_stats: dict[str, float] = {}
                for rows in microbatches(active, batch.lengths, a.micro_batch_tokens):
                    mb = batch.select(rows)
                    width = mb.input_ids.shape[1]
                    loss, stats = self.policy_loss(mb, old_logp[rows, :width], advantages[rows, :width],
                                                   ref_logp[rows, :width] if kl_in_loss else None)
                    weight = micro_weight(a.loss_agg, mb.response_mask, mini_mask)
                    total = loss * weight
                    if run.critic is not None:  # the critic's loss is a token mean over the mini-batch
                        values = _shifted_values(run.critic, mb)
                        v_loss, v_clip = value_loss(values, old_values[rows, :width], returns[rows, :width],
                                                    mb.response_mask, a.value_clip)
                        total = total + v_loss * micro_weight("token-mean", mb.response_mask, mini_mask)
                        stats = {**stats, "critic/loss": v_loss.detach(), "critic/clip_frac": v_clip}
                    if not torch.isfinite(total):
                        raise NonFiniteError("loss")
                    total.backward()
                    for key, value in stats.items():
                        mini_stats[key] = mini_stats.get(key, 0.0) + float(value) * weight
                grad_norm = self.clip_and_step()
                mini_stats["grad_norm"] = grad_norm
                for key, value in mini_stats.items():
                    totals[key] = totals.get(key, 0.0) + value
                updates += 1
        skipped = totals.pop("update/skipped_rows")
        return {"update/skipped_rows": skipped, **{key: value / max(1, updates) for key, value in totals.items()}}

    def policy_loss(self, mb: SequenceBatch, old_logp, advantages, ref_logp):
        """The PPO/GRPO loss of one micro-batch: fused from hidden states, or log-probs then loss."""
        a, policy = self.cfg.algorithm, self.run.policy
        temperature = self.cfg.rollout.temperature
        kl_coef = a.kl_coef if ref_logp is not None else 0.0
        options = dict(clip_low=a.clip_low, clip_high=a.clip_high, dual_clip=a.dual_clip, kl_coef=kl_coef,
                       kl_type=a.kl_type, entropy_coef=a.entropy_coef)
        norm_len = self.cfg.rollout.max_new_tokens
        if a.fused_loss:
            tokens = response_tokens(policy, mb.input_ids, mb.attention_mask, mb.response_mask)
            weights = token_weights(mb.response_mask, a.loss_agg, norm_len)
            return fused_linear_policy_loss(
                tokens.hidden, lm_head_weight(policy), tokens.targets, tokens.gather(old_logp),
                tokens.gather(advantages), tokens.gather(weights),
                ref_logp=tokens.gather(ref_logp) if ref_logp is not None else None,
                temperature=temperature, **options)
        use_entropy = a.entropy_coef > 0
        out = sequence_logprobs(policy, mb.input_ids, mb.attention_mask, mb.response_mask,
                                temperature=temperature, return_entropy=use_entropy)
        logp, entropy = out if use_entropy else (out, None)
        return policy_loss(logp, old_logp, advantages, mb.response_mask, ref_logp=ref_logp, entropy=entropy,
                           agg=a.loss_agg, norm_len=norm_len, **options)

    def clip_and_step(self) -> float:
        """Clip the global gradient norm, refuse a non-finite one, and take the optimizer step(s)."""
        run, o = self.run, self.cfg.optimizer
        params = [p for p in run.policy.parameters() if p.grad is not None]
        max_norm = o.grad_clip if o.grad_clip > 0 else float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if not math.isfinite(norm):
            raise NonFiniteError("gradient")
        run.set_learning_rates()
        run.optimizer.step()
        if run.critic_optimizer is not None:
            critic_params = [p for p in run.critic.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(critic_params, max_norm)
            run.critic_optimizer.step()
        run.state["optimizer_steps"] = run.state.get("optimizer_steps", 0) + 1
        return norm

    # ---- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Greedy decoding on the held-out split: exact-answer accuracy and mean reward, separately."""
        run, a = self.run, self.cfg.algorithm
        with self.timer.phase("eval"):
            problems = run.data.test
            prompts = [run.data.prompt_ids(p) for p in problems]
            params = SamplingParams(n=1, max_new_tokens=self.cfg.rollout.max_new_tokens, temperature=0.0,
                                    stop_token_ids=run.stop_ids)
            groups = run.engine.generate(prompts, params)
            texts = run.decode_responses([g[0].response_ids for g in groups])
            scores = score_batch(texts, [p.numbers for p in problems], [p.target for p in problems],
                                 format_score=a.format_score, correct_score=a.correct_score)
        n = max(1, len(scores))
        return {"eval/accuracy": sum(s == a.correct_score for s in scores) / n,
                "eval/mean_reward": sum(scores) / n, "eval/n": len(scores)}


def _shifted_values(critic, mb: SequenceBatch) -> torch.Tensor:
    """Critic value of the state before each token: the value head at position t-1, moved to t."""
    raw = critic(mb.input_ids, mb.attention_mask).float()
    shifted = torch.zeros_like(raw)
    shifted[:, 1:] = raw[:, :-1]
    return shifted


def _zero_variance_share(scores: torch.Tensor, group_size: int) -> float:
    """Share of groups whose samples all scored the same (they carry no GRPO gradient)."""
    if group_size < 2 or len(scores) % group_size:
        return 0.0
    groups = scores.view(-1, group_size)
    return float((groups.max(1).values == groups.min(1).values).float().mean())


def train_loop(run: Run) -> dict[str, float]:
    """Run steps until max_steps or the time limit, with evals, checkpoints and bad-step handling."""
    cfg = run.config
    trainer = Trainer(run)
    start_step = run.state.get("step", 0)
    if "eval_start" not in run.state:
        result = trainer.evaluate()
        run.state["eval_start"] = result
        run.metrics.log({"step": 0, **result})
        run.report_eval("start", result)
    run.progress_start(start_step)
    started = time.perf_counter()
    step, final = start_step, None
    if step >= cfg.run.max_steps:  # nothing to train (max_steps 0, or a finished run resumed)
        final = trainer.evaluate() if start_step else run.state["eval_start"]
    last_eval = None
    while step < cfg.run.max_steps:
        step += 1
        step_started = time.perf_counter()
        try:
            row = trainer.step(step)
            run.state["bad_in_a_row"] = 0
        except NonFiniteError as err:
            run.discard_gradients()
            run.state["bad_steps"] = run.state.get("bad_steps", 0) + 1
            run.state["bad_in_a_row"] = run.state.get("bad_in_a_row", 0) + 1
            row = {"step": step, "skipped": 1.0}
            if run.state["bad_in_a_row"] >= cfg.optimizer.max_bad_steps:
                raise RuntimeError(
                    f"stopping: non-finite {err} in {run.state['bad_in_a_row']} steps in a row (step {step}); "
                    "lower --lr or --grad-clip, then --resume from the last checkpoint"
                ) from None
        row.update({f"time/{k}": v for k, v in trainer.timer.take_step().items()})
        row["time/step"] = time.perf_counter() - step_started
        limit = cfg.run.time_limit_minutes
        out_of_time = bool(limit) and time.perf_counter() - started > 60 * limit
        is_last = step >= cfg.run.max_steps or out_of_time
        if is_last or (cfg.run.eval_every and step % cfg.run.eval_every == 0):
            last_eval = trainer.evaluate()
            row.update(last_eval)
            final = last_eval if is_last else None
        run.state["step"] = step
        run.state["phase_seconds"] = dict(trainer.timer.totals)
        run.metrics.log(row)
        run.progress(step, row, last_eval)
        if cfg.run.save_every and step % cfg.run.save_every == 0:
            with trainer.timer.phase("checkpoint"):
                run.save()
        if out_of_time:
            run.say(f"\ntime limit of {limit} min reached after step {step}")
            break
    run.state["phase_seconds"] = dict(trainer.timer.totals)
    run.report_eval("end", final)
    return final
