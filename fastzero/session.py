"""One session of `python -m fastzero.train`: build the run, train, finish - and when a signal, a
full disk or a diverged run stops it, keep only consistent state and say what was kept and how to
continue. Exit status: 0 done, 1 failed (the message names the cause and what was kept), 2 bad
input found while building, 130 interrupted (SIGINT/SIGTERM).

Interrupted runs (see fastzero/interrupts.py): a signal during a step lets the step finish, and the
state of that completed step is saved; a second signal abandons the step (or the save) and keeps
the last checkpoint. A checkpoint is written only for a step that completed, and never over a newer
or better one: a save is skipped when the step is already on disk, and weights that are no longer
finite are never saved. Whatever happens, the directory can be continued with `--resume`.
"""
from __future__ import annotations

import json
import os
import sys

from .config import Config
from .interrupts import EXIT_CODE, Interrupts, StepAborted, StopRequested
from .rundir import is_run_directory


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _continue_hint(run, output_dir: str) -> str:
    """How the user carries on from what is on disk now."""
    if not is_run_directory(output_dir):
        return "run the same command again to start it"
    if run is not None and run.saved_step is not None:
        return f"continue from step {run.saved_step} with --resume {output_dir}"
    return f"--resume {output_dir} starts it from step 0 with its saved config"


def _kept(run) -> str:
    if run is None or run.saved_step is None:
        return "no checkpoint yet"
    return f"the checkpoint of step {run.saved_step} ({os.path.join(run.checkpoints, f'step-{run.saved_step:06d}')})"


def _disk_failure(err: OSError, run, output_dir: str) -> int:
    where = err.filename or output_dir
    _say(f"error: could not write {where}: {err.strerror or err}. Kept: {_kept(run)}. Free space (or fix "
         f"the permissions), then {_continue_hint(run, output_dir)}")
    return 1


def _interrupted(run, output_dir: str, *, consistent: bool, agreed: bool = True) -> int:
    """Save the state of the last completed step if it is not on disk yet; say what was kept.

    agreed: every rank stops here too (StopRequested under torchrun comes after the ranks agreed on
    it, fastzero/loop.py); a signal outside a step stops one rank alone, which must not start a
    collective save the others never join.
    """
    from .resume import NonFiniteWeights, save_run

    if run is None:
        _say(f"\ninterrupted during start-up; nothing to save; {_continue_hint(run, output_dir)}")
        return EXIT_CODE
    if not consistent:
        _say(f"\nstopped at once during step {run.state.step + 1}, which was discarded; kept {_kept(run)}; "
             f"{_continue_hint(run, output_dir)}")
        return EXIT_CODE
    if run.state.step == 0:
        _say(f"\ninterrupted before the first step; nothing to save; {_continue_hint(run, output_dir)}")
        return EXIT_CODE
    if run.dist.enabled and not agreed:  # a save is collective and another rank may be gone
        _say(f"\nrank {run.dist.rank}: interrupted at step {run.state.step}; kept {_kept(run)}; "
             f"{_continue_hint(run, output_dir)}")
        return EXIT_CODE
    try:
        path = save_run(run)  # returns at once when this step is already on disk
    except KeyboardInterrupt:  # a second signal: the atomic save leaves nothing half-written
        _say(f"\nsecond signal during the save: abandoned it; kept {_kept(run)}; {_continue_hint(run, output_dir)}")
        return EXIT_CODE
    except NonFiniteWeights as err:
        _say(f"error: {err}")
        return 1
    except OSError as err:
        return _disk_failure(err, run, output_dir)
    if run.dist.is_main:
        ranks = f" by all {run.dist.world_size} ranks" if run.dist.enabled else ""
        _say(f"\ninterrupted: checkpoint saved at step {run.state.step}{ranks} ({path}); continue with "
             f"--resume {output_dir}")
    return EXIT_CODE


def train_session(config: Config, output_dir: str, interrupts: Interrupts) -> int:
    from .loop import RunStopped, train_loop
    from .report import Reporter, finish_run
    from .resume import NonFiniteWeights, save_run
    from .run import Run
    from .tasks.sandbox import RewardStalled

    run = None
    try:
        try:
            run = Run(config, output_dir=output_dir, resume=bool(config.run.resume))
            ranks = f" x {run.dist.world_size} ranks" if run.dist.enabled else ""
            if run.dist.is_main:
                print(f"FastZero: {config.algorithm.estimator} on {run.device}{ranks}, model "
                      f"{config.model.model_path}, output {output_dir}", flush=True)
            reporter = Reporter(run)
            train_loop(run, reporter, interrupts)
            reporter.close()
            save_run(run)  # also the guard: non-finite weights raise, and are never saved
            summary = finish_run(run)
        except StopRequested:
            return _interrupted(run, output_dir, consistent=True)
        except StepAborted:
            return _interrupted(run, output_dir, consistent=False)
        except KeyboardInterrupt:  # outside a step: start-up, the first evaluation, or finishing
            return _interrupted(run, output_dir, consistent=True, agreed=False)
        except (NonFiniteWeights, RunStopped) as err:
            _say(f"error: {err}; kept {_kept(run)}")
            return 1
        except RewardStalled as err:  # mid-step: that step cannot finish, and is not saved
            _say(f"error: {err}; kept {_kept(run)}; fix the reward, then {_continue_hint(run, output_dir)}")
            return 1
        except (ValueError, FileNotFoundError) as err:
            _say(f"error: {err}")
            return 2
        except OSError as err:
            return _disk_failure(err, run, output_dir)
        except RuntimeError as err:
            if run is None or not run.dist.enabled:
                raise
            # Most often a collective that timed out (--dist-timeout) or lost a peer: name this rank.
            _say(f"error: rank {run.dist.rank} of {run.dist.world_size}: {err}")
            return 1
    finally:
        if run is not None:
            try:
                run.close()  # the reward sandbox's workers and the rollout engine
                from .distributed import shutdown

                shutdown(run.dist)
            except KeyboardInterrupt:
                pass  # already stopping; those processes end with ours
    if not run.dist.is_main:
        return 0
    start, end = summary["start_accuracy"], summary["end_accuracy"]
    if start is not None and end is not None:
        print(f"held-out greedy accuracy: {100 * start:.1f}% -> {100 * end:.1f}% "
              f"({100 * (end - start):+.1f} points) after {summary['steps']} steps")
    print(json.dumps({"output_dir": output_dir, **{k: v for k, v in summary.items() if k != "cost"}}))
    return 0
