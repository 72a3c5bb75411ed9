"""What a run shows and leaves behind for its user: sample completions, evaluation lines, the
progress bar, and at the end the final model, the plot, the cost summary and summary.json."""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from typing import Any

import torch

from .atomic import atomic_directory, atomic_write_text
from .config import resolve_model_path
from .episodes import Episodes
from .lora import save_final_policy
from .metrics import ProgressBar, cost_summary, format_cost, plot_metrics
from .model import save_model, saved_dtype
from .stop_rules import format_target, summary_entries
from .write_errors import as_os_error


class Reporter:
    def __init__(self, run):
        self.run = run
        self.bar: ProgressBar | None = None
        self._tokens_at_start, self._started = 0, 0.0

    def log_samples(self, step: int, episodes: Episodes) -> None:
        count = self.run.config.run.log_samples
        if count:
            scores = torch.tensor(episodes.scores[:count]).tolist()  # float32, as the step sees them
            self.run.metrics.log_samples(step, [
                {**self.run.task.to_json(p), "response": t, "reward": float(s)}
                for p, t, s in zip(episodes.problems[:count], episodes.texts[:count], scores)])

    def evaluation(self, when: str, result: dict[str, float]) -> None:
        self.run.say(f"[{when}] held-out greedy accuracy {100 * result['eval/accuracy']:.1f}% "
                     f"(mean reward {result['eval/mean_reward']:.3f}, {result['eval/n']} problems)")

    def progress_start(self, start_step: int) -> None:
        cfg = self.run.config.run
        self.bar = ProgressBar(cfg.max_steps, enabled=cfg.progress and self.run.dist.is_main, start_step=start_step)
        self._tokens_at_start, self._started = self.run.state.tokens, time.perf_counter()

    def progress(self, step: int, row: dict[str, float], last_eval: dict[str, float] | None) -> None:
        if self.bar is None:
            return
        elapsed = time.perf_counter() - self._started
        tokens = self.run.state.tokens - self._tokens_at_start
        accuracy = row.get("eval/accuracy", (last_eval or {}).get("eval/accuracy"))
        self.bar.update(step, reward=row.get("reward/mean"), acc=accuracy,
                        **{"tok/s": tokens / elapsed if elapsed > 0 else None})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def finish_run(run) -> dict[str, Any]:
    """Final model, plot and cost summary; returns the summary."""
    if run.dist.enabled:  # gathered from the shards, written by rank 0
        from .sharded_checkpoint import save_full_pretrained

        with atomic_directory(os.path.join(run.output_dir, "final")) if run.dist.is_main else _nowhere() as staging:
            if run.models.lora is None:
                save_full_pretrained(run.models.policy, str(staging), run.dist, tokenizer=run.tokenizer)
            else:  # the adapter (and the merged model on request), as one process writes them
                from .lora import save_final_sharded

                save_final_sharded(run.models.lora, str(staging) if staging is not None else None, run.dist,
                                   merged=run.config.model.lora_save_merged, save=lambda model, folder: save_model(
                                       model, folder, saved_dtype(run.config.model.save_dtype,
                                                                  resolve_model_path(run.config.model.model_path))))
                if staging is not None:
                    run.tokenizer.save_pretrained(staging)
        if not run.dist.is_main:
            return {}
    else:
        with atomic_directory(os.path.join(run.output_dir, "final")) as staging, as_os_error(str(staging)):
            save_final_policy(run.models.policy, run.models.lora, staging, merged=run.config.model.lora_save_merged,
                              save=lambda model, folder: save_model(model, folder, saved_dtype(
                                  run.config.model.save_dtype, resolve_model_path(run.config.model.model_path))))
            run.tokenizer.save_pretrained(staging)
    plot_metrics(run.metrics.rows, os.path.join(run.output_dir, "metrics.png"))
    wall = run.wall_seconds()
    state = run.state
    cost = cost_summary(state.phase_seconds, wall_seconds=wall, tokens=state.tokens,
                        price_per_hour=run.config.run.price_per_hour, device=str(run.device),
                        devices=run.dist.world_size)
    start, end = state.eval_start or {}, run.metrics.last("eval/accuracy")
    summary = {"start_accuracy": start.get("eval/accuracy"), "end_accuracy": end,
               "steps": state.step, "bad_steps": state.bad_steps, "world_size": run.dist.world_size, "cost": cost,
               **summary_entries(run.config.run, state)}
    atomic_write_text(os.path.join(run.output_dir, "summary.json"), json.dumps(summary, indent=2) + "\n")
    run.say(format_cost(cost))
    if format_target(summary.get("target")):
        run.say(format_target(summary["target"]))
    return summary


@contextmanager
def _nowhere():
    """What ranks other than 0 write the final folder into: nothing (they only join the gather)."""
    yield None
