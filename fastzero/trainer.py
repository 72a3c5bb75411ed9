"""One RL step, as data flows (docs/architecture.md draws the whole picture):

  problems -> sample_episodes: rollout engine (G samples per prompt) -> decode -> scorer
     (dynamic_sampling.sample_step: one round, or DAPO's rounds until the batch is full; overlong penalty)
  -> collate into a SequenceBatch (with the sampler's log-probs and finish reasons)
  -> old / ref log-probs and values for the rows that carry a gradient (hidden states ->
     fused_logprobs; never [tokens x vocab] logits); skipped when the update is on-policy
     (Trainer.on_policy: the loss takes the old log-probs from its own forward) or with
     --old-logprobs rollout (the sampler's log-probs are the old policy's)
  -> compute_advantages (the one entry point: group methods, REINFORCE++, GAE)
  -> PPO epochs over mini-batches, micro-batches by token budget, gradient accumulation,
     Optimizers.step (clip, warm-up, AdamW) -> weight sync to the rollout engine -> metrics row.

Everything here is orchestration; each arrow is a call into a module that does one job. Setup is
fastzero/run.py, the loop around steps (evals, checkpoints, bad steps) fastzero/loop.py.
"""
from __future__ import annotations

from typing import Any

import torch

from fastzero.kernels.aggregation import token_weights
from fastzero.kernels.fused_policy_loss import fused_linear_policy_loss
from fastzero.kernels.policy_loss import policy_loss

from .algorithms import GROUP_METHODS, compute_advantages, rows_without_gradient, value_loss
from .batch import SequenceBatch, collate, microbatches, minibatches
from .config import Config
from .data import TaskData
from .dynamic_sampling import sample_step
from .distributed import (
    SINGLE,
    DistContext,
    all_gather_object,
    all_gather_rows,
    all_reduce_max,
    all_reduce_sum,
    gather_padded_rows,
    global_token_weights,
    grad_scale,
    local_rows,
    prompt_slice,
    reduce_sums,
)
from .episodes import Decoder, Episodes, Scorer, sample_episodes
from .metrics import PhaseTimer
from .model import lm_head_weight, response_tokens, sequence_logprobs
from .optim import NonFiniteError, Optimizers
from .rollout.base import RolloutEngine, SamplingParams
from .state import TrainState

__all__ = ["NonFiniteError", "Trainer"]


class Trainer:
    def __init__(self, config: Config, *, models, optimizers: Optimizers, engine: RolloutEngine, data: TaskData,
                 decode: Decoder, scorer: Scorer, state: TrainState, shuffle_generator: torch.Generator,
                 device: torch.device, pad_id: int, stop_ids: tuple[int, ...], correct_reward: float | None = None,
                 dist: DistContext = SINGLE, autocast: torch.dtype | None = None):
        self.cfg, self.models, self.optimizers, self.engine = config, models, optimizers, engine
        # Under torchrun each rank trains a contiguous slice of every step's prompts; the step's
        # global row of this rank's local row 0 (see fastzero/distributed.py for the whole split).
        self.dist, self.first_row, self.global_rows = dist, 0, 0
        self.data, self.decode, self.scorer, self.state = data, decode, scorer, state
        self.shuffle_generator, self.device, self.pad_id, self.stop_ids = shuffle_generator, device, pad_id, stop_ids
        self.timer = PhaseTimer(state.phase_seconds)
        # Accuracy counts rewards >= this: the task's (or --correct-score for a user reward).
        self.correct_reward = config.algorithm.correct_score if correct_reward is None else correct_reward
        self.autocast = autocast  # --autocast: the compute dtype of the training forwards' body (None: off)

    @classmethod
    def from_run(cls, run) -> "Trainer":
        return cls(run.config, models=run.models, optimizers=run.optimizers, engine=run.engine, data=run.data,
                   decode=run.decode_responses, scorer=run.scorer, state=run.state,
                   shuffle_generator=run.shuffle_generator, device=run.device, pad_id=run.pad_id,
                   stop_ids=run.stop_ids, correct_reward=run.scorer.correct_reward, dist=run.dist,
                   autocast=run.autocast)

    # ---- one RL step -----------------------------------------------------------------------------
    def step(self, step: int) -> tuple[dict[str, float], Episodes]:
        """Sample, score and train on one batch of prompts; returns the metrics row and the episodes."""
        r, a = self.cfg.rollout, self.cfg.algorithm
        sample = sample_step(self.sample_round, r, self.dist)  # one round, or DAPO's dynamic sampling
        if sample.first_row is not None:  # dynamic sampling shared the kept groups out anew
            self.first_row = sample.first_row
        self.global_rows = sample.global_rows or r.prompts_per_step * r.samples_per_prompt
        episodes = sample.episodes
        scores = torch.tensor(sample.rewards)  # the task's scores (+ the overlong penalty when on)
        batch = collate(episodes.prompt_ids, episodes.response_ids, pad_id=self.pad_id, device=self.device,
                        rollout_logprobs=episodes.sampler_logprobs, finish_reasons=episodes.finish_reasons)
        generated = int(batch.response_mask.sum())
        if r.mask_truncated:  # DAPO's overlong filtering: truncated responses carry no loss
            batch.response_mask[batch.truncated.to(self.device)] = 0.0
        carries_gradient = self.rows_with_gradient(scores.to(self.device), batch)
        if r.mask_truncated:
            carries_gradient &= ~batch.truncated
        with self.timer.phase("logprobs"):
            # On-policy the update's own forward gives the old log-probs; --old-logprobs rollout takes
            # the sampler's; otherwise the policy scores the batch before the update.
            on_policy = self.on_policy(len(batch))
            from_sampler = not on_policy and a.old_logprobs == "rollout"
            old_logp, ref_logp, old_values = self.score_tokens(batch, carries_gradient,
                                                               policy=not (on_policy or from_sampler))
            if from_sampler:
                old_logp = self.sampler_logprobs(batch)
        # kl/ref (old policy against the reference) needs the old log-probs; on-policy, the loss logs
        # its own KL term (kl_ref) instead.
        kl = (old_logp - ref_logp) * batch.response_mask if old_logp is not None and ref_logp is not None else None
        advantages, returns = self.advantages(scores.to(self.device), batch.response_mask, old_values, kl)

        try:
            with self.timer.phase("update"), self.engine.memory_released():
                stats = self.update(batch, old_logp, ref_logp, advantages, old_values, returns, carries_gradient)
        finally:  # also after a skipped (non-finite) step: a resumed SGLang engine needs its weights back
            with self.timer.phase("sync"):
                self.engine.update_weights(self.models.weights_for(self.engine))  # LoRA: merged for SGLang

        tokens = int(batch.attention_mask.sum())
        kl_ref = float(kl.sum() / batch.response_mask.sum().clamp(min=1)) if kl is not None else None
        failures = episodes.reward_failures
        truncated = batch.truncated if batch.truncated is not None else torch.zeros(len(batch), dtype=torch.bool)
        truncated_share = float(truncated.float().mean())
        task_scores = torch.tensor(sample.generated_scores)  # every response generated this step
        trained_rows = len(episodes)
        if self.dist.enabled:  # the step's numbers over all ranks' rows
            task_scores = all_gather_rows(task_scores, self.dist)
            sums = reduce_sums({"generated": generated, "tokens": tokens, "rows": trained_rows,
                                "truncated": float(truncated.sum()),
                                "kl": float(kl.sum()) if kl is not None else 0.0}, self.dist)
            generated, tokens, trained_rows = int(sums["generated"]), int(sums["tokens"]), int(sums["rows"])
            truncated_share = sums["truncated"] / max(1, trained_rows)
            kl_ref = sums["kl"] / max(1, generated) if kl is not None else None
            failures = {key: int(value) for key, value in reduce_sums(failures, self.dist).items()}
        self.state.tokens += tokens
        correct = (task_scores >= self.correct_reward).float()
        row = {
            "step": step,
            "reward/mean": float(task_scores.mean()),
            "accuracy/train": float(correct.mean()),
            "response/length": generated / max(1, trained_rows),
            "groups/zero_variance": _zero_variance_share(task_scores, r.samples_per_prompt),
            **failures,
            **self.response_metrics(episodes),
            **sample.stats,
            **stats,
        }
        if r.mask_truncated or r.overlong_buffer:
            row["overlong/truncated_share"] = truncated_share
        if kl_ref is not None:
            row["kl/ref"] = kl_ref
        return row, episodes

    def sample_round(self, count: int) -> Episodes:
        """Generate and score samples_per_prompt responses for each of the next `count` prompts."""
        r = self.cfg.rollout
        problems = self.data.next_batch(count)
        if self.dist.enabled:  # this rank's share of the prompts (whole groups)
            share = prompt_slice(len(problems), self.dist)
            problems, self.first_row = problems[share], share.start * r.samples_per_prompt
        params = SamplingParams(n=r.samples_per_prompt, max_new_tokens=r.max_new_tokens, temperature=r.temperature,
                                top_p=r.top_p, top_k=r.top_k, stop_token_ids=self.stop_ids)
        return sample_episodes(self.engine, [self.data.prompt_ids(p) for p in problems], problems, params,
                               decode=self.decode, scorer=self.scorer, phase=self.timer.phase)

    def advantages(self, scores, response_mask, values, kl):
        """compute_advantages on this rank's rows. Group methods need only whole groups (a rank has
        them); token methods whiten over the whole batch, so under torchrun they run on all ranks'
        rows (gathered, padded as one process pads them) and keep this rank's."""
        a, r = self.cfg.algorithm, self.cfg.rollout
        options = dict(group_size=r.samples_per_prompt, gamma=a.gamma, lam=a.lam,
                       kl_coef=a.kl_coef if a.kl_in_reward else 0.0)
        if not self.dist.enabled or a.estimator in GROUP_METHODS:
            return compute_advantages(a.estimator, scores, response_mask, values=values, kl=kl, **options)
        rows, width = response_mask.shape
        present = [t for t in (values, kl) if t is not None]
        mask_all, *rest = gather_padded_rows([response_mask, *present], self.dist)
        values_all = rest.pop(0) if values is not None else None
        kl_all = rest.pop(0) if kl is not None else None
        advantages, returns = compute_advantages(a.estimator, all_gather_rows(scores, self.dist), mask_all,
                                                 values=values_all, kl=kl_all, **options)
        mine = slice(self.first_row, self.first_row + rows)
        return advantages[mine, :width], returns[mine, :width] if returns is not None else None

    def equalized(self, groups: list[torch.Tensor]) -> list[tuple[torch.Tensor, bool]]:
        """(rows, is_padding) per micro-batch. Under torchrun every rank must run as many forwards
        and backwards as the others (each is a collective under FSDP): a rank with fewer
        micro-batches runs padding ones on its row 0 whose results are dropped (weight 0)."""
        count = all_reduce_max(len(groups), self.dist)
        return [(rows, False) for rows in groups] + [(torch.zeros(1, dtype=torch.long), True)] * (count - len(groups))

    def rows_with_gradient(self, scores: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:
        """[B] bool (CPU): the sequences whose loss has a non-zero gradient.

        A sequence whose advantage is 0 everywhere (a GRPO group where every sample scored the same:
        most groups on the tiny preset) has a policy-gradient term of exactly 0 for any ratio, so
        when no KL, entropy or critic term applies it needs no log-probs, forward or backward. The
        loss normalizers still count it (they see the whole mini-batch): the update is the same as
        if it were included.
        """
        a = self.cfg.algorithm
        everything = torch.ones(len(batch), dtype=torch.bool)
        if a.kl_coef > 0 or a.entropy_coef > 0 or self.models.critic is not None:
            return everything
        skip = rows_without_gradient(a.estimator, scores, batch.response_mask,
                                     group_size=self.cfg.rollout.samples_per_prompt)
        return everything if skip is None else ~skip

    def on_policy(self, rows: int) -> bool:
        """True when the step's update is one optimizer step over all its rows (one PPO epoch, one
        mini-batch) and only the loss reads the old log-probs: the old policy is then the current
        one, so the loss takes each token's old log-prob from its own forward (old_logp=None:
        ratio exactly 1) and the policy's separate no-grad forward over the batch is skipped (a
        reference still scores the batch: a KL term in the loss compares the pass' own log-probs
        with it). Not for GSPO or an IS correction (they need the old log-probs before the pass),
        a KL penalty in the reward (it reads them), or a critic (score_tokens computes its values)."""
        a, models = self.cfg.algorithm, self.models
        n_rows = self.global_rows if self.dist.enabled else rows  # the rows the update loop splits
        kl_reads_old = models.reference is not None and a.kl_in_reward
        return (a.ppo_epochs == 1 and n_rows <= a.mini_batch_size and not kl_reads_old
                and models.critic is None and a.loss_mode != "gspo" and a.is_correction == "none")

    def sampler_logprobs(self, batch: SequenceBatch) -> torch.Tensor:
        """--old-logprobs rollout: the rollout engine's log-prob of each response token is the old
        policy's (the engine sampled with the weights the update starts from, at the same
        temperature; both engines return log-probs before top-p/top-k). On the hf engine in float32
        they match the trainer's forward to ~1e-9 in mismatch_kl (bench/RESULTS.md), so this skips
        that forward (0.64 s of the tiny thinking preset's 4.8-s step) without changing the update."""
        if batch.rollout_logprobs is None:
            raise ValueError("--old-logprobs rollout: the rollout engine returned no log-probs; "
                             "use --old-logprobs recompute")
        return batch.rollout_logprobs * batch.response_mask

    @torch.no_grad()
    def score_tokens(self, batch: SequenceBatch, carries_gradient: torch.Tensor, policy: bool = True):
        """Old-policy (None with policy=False: on-policy) and reference log-probs, and critic values,
        for the rows that carry a gradient."""
        models, temperature = self.models, self.cfg.rollout.temperature
        if not policy and models.reference is None and models.critic is None:
            return None, None, None
        old = torch.zeros_like(batch.response_mask) if policy else None
        ref = torch.zeros_like(batch.response_mask) if models.reference is not None else None
        values = torch.zeros_like(batch.response_mask) if models.critic is not None else None
        rows_needed = torch.arange(len(batch))[carries_gradient]
        for rows, padding in self.equalized(microbatches(rows_needed, batch.lengths,
                                                         self.cfg.algorithm.micro_batch_tokens)):
            mb = batch.select(rows)
            width = mb.input_ids.shape[1]
            logp = sequence_logprobs(models.policy, mb.input_ids, mb.attention_mask, mb.response_mask,
                                     temperature=temperature, shared_prefix=self.cfg.algorithm.shared_prefix,
                                     autocast=self.autocast) if policy else None
            ref_logp = None
            if ref is not None:
                with models.reference_scope():  # LoRA: the policy with its adapters disabled
                    ref_logp = sequence_logprobs(models.reference, mb.input_ids, mb.attention_mask, mb.response_mask,
                                                 temperature=temperature, autocast=self.autocast)
            value = _shifted_values(models.critic, mb) * mb.response_mask if values is not None else None
            if padding:
                continue
            if old is not None:
                old[rows, :width] = logp
            if ref is not None:
                ref[rows, :width] = ref_logp
            if values is not None:
                values[rows, :width] = value
        return old, ref, values

    def update(self, batch, old_logp, ref_logp, advantages, old_values, returns, carries_gradient) -> dict[str, float]:
        a = self.cfg.algorithm
        kl_in_loss = ref_logp is not None and not a.kl_in_reward and a.kl_coef > 0
        totals: dict[str, float] = {}
        updates = 0
        dist = self.dist
        # Mini-batches are sets of global rows, drawn alike on every rank (see fastzero/distributed.py).
        n_rows = self.global_rows if dist.enabled else len(batch)
        for _ in range(a.ppo_epochs):
            for mini in minibatches(n_rows, a.mini_batch_size, self.shuffle_generator):
                if dist.enabled:
                    mini = local_rows(mini, self.first_row, self.first_row + len(batch))
                trained = mini[carries_gradient[mini]]
                if dist.enabled:  # skip only if no rank trains a row of this mini-batch
                    if int(all_reduce_sum(torch.tensor(len(trained)), dist)) == 0:
                        continue
                elif len(trained) == 0:  # no sequence in this mini-batch carries a gradient
                    continue
                self.optimizers.zero_grad()
                mini_stats = self.accumulate_gradients(batch, mini, trained, old_logp, advantages,
                                                       ref_logp if kl_in_loss else None, old_values, returns)
                mini_stats["grad_norm"] = self.optimizers.step(self.state.optimizer_steps)
                self.state.optimizer_steps += 1
                for key, value in mini_stats.items():
                    totals[key] = totals.get(key, 0.0) + value
                updates += 1
        skipped = float((~carries_gradient).float().mean())
        if dist.enabled:
            norm = totals.pop("grad_norm", None)  # already global: the same on every rank
            totals = reduce_sums({**totals, "skipped_rows": float((~carries_gradient).sum())}, dist)
            skipped = totals.pop("skipped_rows") / n_rows
            if norm is not None:
                totals["grad_norm"] = norm
        lr = self.optimizers.policy.param_groups[0]["lr"]  # the schedule's rate at this step's last optimizer step
        return {"update/skipped_rows": skipped, "lr": lr,
                **{key: value / max(1, updates) for key, value in totals.items()}}

    def accumulate_gradients(self, batch: SequenceBatch, mini: torch.Tensor, trained: torch.Tensor, old_logp,
                             advantages, ref_logp, old_values, returns) -> dict[str, float]:
        """Backward of one mini-batch's loss, micro-batch by micro-batch; returns its stats.

        The token weights (the --loss-agg aggregation, fastzero.kernels.aggregation) are computed
        once over the whole mini-batch `mini` and sliced per micro-batch, so the micro-batch losses
        add up to the mini-batch loss whichever way `trained` (the rows of `mini` that carry a
        gradient) is split. The critic's loss is a token mean over the mini-batch the same way, and
        the stats are token means over the mini-batch (skipped rows count as zeros).
        """
        a, critic, dist = self.cfg.algorithm, self.models.critic, self.dist
        # Under torchrun `mini` holds this rank's rows of the global mini-batch and the weights are
        # the global mini-batch's (global_token_weights: the same floats one process computes).
        weigh = (lambda mask, agg, norm_len=None: global_token_weights(mask, agg, norm_len, dist)) if dist.enabled \
            else token_weights
        mini_mask = batch.response_mask[mini]
        loss_weight = torch.zeros_like(batch.response_mask)
        loss_weight[mini] = weigh(mini_mask, a.loss_agg, self.cfg.rollout.max_new_tokens)
        token_mean = loss_weight
        if a.loss_agg != "token-mean":
            token_mean = torch.zeros_like(batch.response_mask)
            token_mean[mini] = weigh(mini_mask, "token-mean")
        mini_stats: dict[str, float] = {}
        for rows, padding in self.equalized(microbatches(trained, batch.lengths, a.micro_batch_tokens)):
            if padding:  # a forward and backward that only keeps the ranks in step: weight 0
                loss_weight, token_mean = torch.zeros_like(loss_weight), torch.zeros_like(token_mean)
            mb = batch.select(rows)
            width = mb.input_ids.shape[1]
            total, stats = self.policy_loss(mb, old_logp[rows, :width] if old_logp is not None else None,
                                            advantages[rows, :width],
                                            ref_logp[rows, :width] if ref_logp is not None else None,
                                            loss_weight[rows, :width])
            share = float(token_mean[rows].sum())  # this micro-batch's share of the mini-batch's tokens
            stats = {key: float(value) * share for key, value in stats.items()}  # micro-batch means, weighted
            if critic is not None:  # a token mean over the mini-batch, like the stats
                values = _shifted_values(critic, mb)
                v_loss, v_clip = value_loss(values, old_values[rows, :width], returns[rows, :width],
                                            mb.response_mask, a.value_clip, token_weight=token_mean[rows, :width])
                total = total + v_loss
                stats.update({"critic/loss": float(v_loss.detach()), "critic/clip_frac": v_clip * share})
            if dist.enabled:
                # No per-rank loss check (a rank raising alone would leave the others waiting in a
                # collective): a non-finite loss makes the global gradient norm non-finite, which
                # every rank sees. FSDP averages gradients over ranks: scale back to the sum.
                total = total * grad_scale(dist)
            elif not torch.isfinite(total):
                raise NonFiniteError("loss")
            total.backward()
            for key, value in stats.items():
                mini_stats[key] = mini_stats.get(key, 0.0) + value
        return mini_stats

    def policy_loss(self, mb: SequenceBatch, old_logp, advantages, ref_logp, token_weight):
        """The PPO/GRPO loss of one micro-batch, sum(token_weight * per-token loss): fused from hidden
        states, or log-probs then loss. token_weight [b, width] is the mini-batch's, sliced."""
        a, policy = self.cfg.algorithm, self.models.policy
        temperature = self.cfg.rollout.temperature
        kl_coef = a.kl_coef if ref_logp is not None else 0.0
        options = dict(clip_low=a.clip_low, clip_high=a.clip_high, dual_clip=a.dual_clip, kl_coef=kl_coef,
                       kl_type=a.kl_type, entropy_coef=a.entropy_coef, loss_mode=a.loss_mode,
                       is_correction=a.is_correction, is_level=a.is_level, is_cap=a.is_cap)
        # The sampler's log-probs: mismatch KL always, IS correction when asked; not when they are the
        # old log-probs themselves (--old-logprobs rollout: the mismatch would read 0 by construction).
        rollout = mb.rollout_logprobs if a.old_logprobs == "recompute" or old_logp is None else None
        if a.is_correction != "none" and rollout is None:
            raise ValueError(f"--is-correction {a.is_correction}: the rollout engine returned no log-probs")
        if a.fused_loss:
            resp = response_tokens(policy, mb.input_ids, mb.attention_mask, mb.response_mask,
                                   shared_prefix=a.shared_prefix, autocast=self.autocast)
            per_sequence = a.loss_mode == "gspo" or (a.is_correction != "none" and a.is_level == "sequence")
            return fused_linear_policy_loss(  # old_logp None: on-policy (the pass' own log-probs)
                resp.hidden, lm_head_weight(policy), resp.targets,
                resp.gather(old_logp) if old_logp is not None else None,
                resp.gather(advantages), resp.gather(token_weight),
                ref_logp=resp.gather(ref_logp) if ref_logp is not None else None,
                rollout_logp=resp.gather(rollout) if rollout is not None else None,
                seq_index=resp.flat_positions // mb.input_ids.shape[1] if per_sequence else None,
                temperature=temperature, **options)
        use_entropy = a.entropy_coef > 0
        out = sequence_logprobs(policy, mb.input_ids, mb.attention_mask, mb.response_mask,
                                temperature=temperature, return_entropy=use_entropy, shared_prefix=a.shared_prefix,
                                autocast=self.autocast)
        logp, entropy = out if use_entropy else (out, None)
        old_logp = logp.detach() if old_logp is None else old_logp  # on-policy: ratio exactly 1
        return policy_loss(logp, old_logp, advantages, mb.response_mask, ref_logp=ref_logp, entropy=entropy,
                           rollout_logp=rollout, token_weight=token_weight, **options)

    # ---- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Greedy decoding on the held-out split: exact-answer accuracy and mean reward, separately."""
        with self.timer.phase("eval"):
            problems = self.data.test
            if self.dist.enabled:  # each rank evaluates a slice; the scores are gathered in order
                problems = problems[prompt_slice(len(problems), self.dist)]
            params = SamplingParams(n=1, max_new_tokens=self.cfg.rollout.max_new_tokens, temperature=0.0,
                                    stop_token_ids=self.stop_ids)
            episodes = sample_episodes(self.engine, [self.data.prompt_ids(p) for p in problems], problems, params,
                                       decode=self.decode, scorer=self.scorer)
        scores, failures = episodes.scores, episodes.reward_failures
        if self.dist.enabled:  # each rank scored its slice: gather the scores in order, sum the failures
            scores = [score for part in all_gather_object(scores, self.dist) for score in part]
            failures = {key: int(value) for key, value in reduce_sums(failures, self.dist).items()}
        failures = {"eval/" + name.replace("/", "_"): count for name, count in failures.items()}
        signature = {"eval/" + name: value for name, value in self.response_metrics(episodes).items()}
        if signature:  # a task that measures its responses (a thinking model): their length too
            lengths = self._gathered([len(r) for r in episodes.response_ids])
            signature["eval/response/length"] = sum(lengths) / max(1, len(lengths))
        return {**held_out_result(scores, self.correct_reward), **failures, **signature}

    def response_metrics(self, episodes: Episodes) -> dict[str, float]:
        """The task's own measures of the responses (fastzero.tasks.base.Task.response_metrics), if any,
        over every rank's responses."""
        measure = getattr(getattr(self.scorer, "task", None), "response_metrics", None)
        if measure is None:
            return {}
        return dict(measure(self._gathered(episodes.texts), self._gathered(episodes.problems)))

    def _gathered(self, items: list) -> list:
        """`items` of every rank, in rank order (this rank's alone when not distributed)."""
        if not self.dist.enabled:
            return list(items)
        return [item for part in all_gather_object(items, self.dist) for item in part]


def held_out_result(scores: list[float], correct_reward: float) -> dict[str, Any]:
    """eval/accuracy (share of correct answers: reward >= correct_reward), eval/mean_reward and eval/n."""
    n = max(1, len(scores))
    return {"eval/accuracy": sum(s >= correct_reward for s in scores) / n,
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
