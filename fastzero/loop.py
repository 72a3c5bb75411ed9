"""The training loop: steps until --max-steps or the time limit, with evaluations, checkpoints and
the non-finite guard (a bad step is skipped; --max-bad-steps in a row stop the run)."""
from __future__ import annotations

import contextlib
import time

from .distributed import all_reduce_max, broadcast_object
from .optim import NonFiniteError
from .report import Reporter
from .resume import save_run
from .stop_rules import StopRules
from .trainer import Trainer


class RunStopped(RuntimeError):
    """Too many non-finite steps in a row: the run stops (the last checkpoint is kept)."""


def train_loop(run, reporter: Reporter | None = None, interrupts=None) -> dict[str, float]:
    """Run the steps of `run`; returns the final evaluation. With `interrupts`
    (fastzero.interrupts.Interrupts) a signal during a step lets it finish - its evaluation, log
    line and periodic save included - and stops before the next (StopRequested)."""
    step_scope = interrupts.step if interrupts is not None else contextlib.nullcontext
    cfg, state = run.config, run.state
    trainer = Trainer.from_run(run)
    reporter = reporter or Reporter(run)
    rules = StopRules(cfg.run, state, run.wall_seconds, devices=run.dist.world_size)
    start_step = state.step
    if state.eval_start is None:
        result = _timed(rules, "eval", trainer.evaluate)
        state.eval_start = result
        run.metrics.log({"step": 0, **result})
        reporter.evaluation("start", result)
        stop = rules.after_evaluation(0, result)
        if stop:
            state.stop_reason = stop
            run.say(f"{stop} before any step")
            reporter.evaluation("end", result)
            return result
    reporter.progress_start(start_step)
    started = time.perf_counter()
    step, final = start_step, None
    if step >= cfg.run.max_steps:  # nothing to train (max_steps 0, or a finished run resumed)
        final = trainer.evaluate() if start_step else state.eval_start
    last_eval = None
    while step < cfg.run.max_steps:
        with step_scope():  # the check too: under torchrun it is a collective, no signal may cut it
            if interrupts is not None:
                if run.dist.enabled:  # a stop any rank was asked for is every rank's (interrupts.py)
                    asked = all_reduce_max(interrupts.pending or 0, run.dist)
                    if asked:
                        interrupts.request(asked)
                interrupts.check()  # a signal during the last step: stop here, at a consistent state
            step += 1
            step_started = time.perf_counter()
            try:
                row, episodes = trainer.step(step)
                reporter.log_samples(step, episodes)
                state.bad_in_a_row = 0
            except NonFiniteError as err:
                run.optimizers.zero_grad()
                state.bad_steps += 1
                state.bad_in_a_row += 1
                row = {"step": step, "skipped": 1.0}
                if state.bad_in_a_row >= cfg.optimizer.max_bad_steps:
                    raise RunStopped(
                        f"stopping: non-finite {err} in {state.bad_in_a_row} steps in a row (step {step}); "
                        "lower --lr or --grad-clip, then --resume from the last checkpoint"
                    ) from None
            row.update({f"time/{k}": v for k, v in trainer.timer.take_step().items()})
            row["time/step"] = time.perf_counter() - step_started
            rules.observe("step", row["time/step"])
            limit = cfg.run.time_limit_minutes
            out_of_time = bool(limit) and time.perf_counter() - started > 60 * limit
            stop = rules.out_of_budget()
            if run.dist.enabled:  # rank 0's clock decides: ranks that disagreed would wait on each other
                out_of_time, stop = broadcast_object((out_of_time, stop), run.dist)
            is_last = step >= cfg.run.max_steps or out_of_time or stop is not None
            if is_last or (cfg.run.eval_every and step % cfg.run.eval_every == 0):
                last_eval = _timed(rules, "eval", trainer.evaluate)
                row.update(last_eval)
                stop = stop or rules.after_evaluation(step, last_eval)
                is_last = is_last or stop is not None
                final = last_eval if is_last else None
            state.step = step
            state.phase_seconds = dict(trainer.timer.totals)
            run.metrics.log(row)
            reporter.progress(step, row, last_eval)
            if cfg.run.save_every and step % cfg.run.save_every == 0:
                with trainer.timer.phase("checkpoint"):
                    _timed(rules, "checkpoint", lambda: save_run(run))
            if out_of_time:
                run.say(f"\ntime limit of {limit} min reached after step {step}")
                break
            if stop:  # the caller (train.py) saves the final checkpoint
                state.stop_reason = stop
                run.say(f"\n{stop}: stopping after step {step}")
                break
    state.phase_seconds = dict(trainer.timer.totals)
    reporter.evaluation("end", final)
    return final


def _timed(rules: StopRules, what: str, work):
    started = time.perf_counter()
    result = work()
    rules.observe(what, time.perf_counter() - started)
    return result
