"""`python -m fastzero.train [--preset NAME] [--config FILE] [--option value ...]`

With no arguments it trains the embedded tiny model on Countdown on the CPU and prints the held-out
accuracy before and after. Every option of fastzero.config is a flag here (`--help` lists them with
their defaults); invalid values and conflicts fail before any work, naming the option.
Ctrl-C (or SIGTERM) saves a checkpoint and exits; `--resume DIR` continues the run in DIR.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

from . import config as C

_SECTION_TITLES = {"model": "model", "data": "data", "rollout": "rollout", "algorithm": "algorithm",
                   "optimizer": "optimizer", "run": "run, logging and checkpoints",
                   "reward": "your own reward (sandboxed)"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fastzero.train", description=__doc__.split("\n\n")[1].strip(),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", default="tiny-cpu", help=f"named recipe: {', '.join(C.PRESETS)}")
    parser.add_argument("--config", default=None, help="JSON or TOML file of options (flat or by section)")
    defaults = C.Config()
    for section, cls in C.SECTIONS.items():
        group = parser.add_argument_group(_SECTION_TITLES[section])
        for name, (sec, f) in C.FIELDS.items():
            if sec != section:
                continue
            kind = C.field_type(f)
            meta = "{" + ",".join(map(str, f.metadata["choices"])) + "}" if f.metadata.get("choices") else kind.__name__.upper()
            group.add_argument("--" + name.replace("_", "-"), dest=name, default=argparse.SUPPRESS,
                               metavar=meta, help=f"{f.metadata['help']} (default: {defaults.get(name)})")
    return parser


def config_from_args(argv: list[str] | None) -> C.Config:
    """Preset, then config file, then flags; or, with --resume, the run's saved config, then flags."""
    args = vars(build_parser().parse_args(argv))
    preset, config_file = args.pop("preset"), args.pop("config")
    if args.get("resume"):
        saved = os.path.join(args["resume"], "config.json")
        if not os.path.isfile(saved):
            raise FileNotFoundError(f"--resume: {args['resume']!r} has no config.json (not a FastZero run directory)")
        config = C.Config()
        C.load_config_file(config, saved)
    else:
        config = C.from_preset(preset)
    if config_file:
        C.load_config_file(config, config_file)
    for name, value in args.items():
        config.set(name, value)
    if config.run.resume:
        config.run.output_dir = config.run.resume
    C.validate(config)
    C.check_paths(config)
    return config


def main(argv: list[str] | None = None) -> int:
    try:
        config = config_from_args(argv)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    output_dir = config.run.output_dir or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    config.run.output_dir = output_dir
    if not config.run.resume and os.path.exists(os.path.join(output_dir, "metrics.jsonl")):
        print(f"error: --output-dir {output_dir!r} already holds a run; continue it with --resume {output_dir} "
              "or choose another directory (nothing was overwritten)", file=sys.stderr)
        return 2

    from .loop import train_loop
    from .report import Reporter, finish_run
    from .resume import save_run
    from .run import Run
    from .tasks.sandbox import RewardStalled

    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    run = None
    try:
        run = Run(config, output_dir=output_dir, resume=bool(config.run.resume))
        print(f"FastZero: {config.algorithm.estimator} on {run.device}, model {config.model.model_path}, "
              f"output {output_dir}", flush=True)
        reporter = Reporter(run)
        train_loop(run, reporter)
        reporter.close()
        save_run(run)
        summary = finish_run(run)
    except KeyboardInterrupt:
        if run is None or run.state.step == 0:
            print("\ninterrupted before the first step; nothing to save", file=sys.stderr)
            return 130
        path = save_run(run)
        print(f"\ninterrupted: checkpoint saved at step {run.state.step} ({path}); "
              f"continue with --resume {output_dir}", file=sys.stderr)
        return 130
    except RewardStalled as err:  # the step cannot finish; keep what the run has, like Ctrl-C does
        path = save_run(run) if run is not None and run.state.step else None
        print(f"\nerror: {err}" + (f"\ncheckpoint saved at step {run.state.step} ({path}); fix the reward, then "
                                   f"--resume {output_dir}" if path else ""), file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if run is not None:
            run.close()
    start, end = summary["start_accuracy"], summary["end_accuracy"]
    if start is not None and end is not None:
        print(f"held-out greedy accuracy: {100 * start:.1f}% -> {100 * end:.1f}% "
              f"({100 * (end - start):+.1f} points) after {summary['steps']} steps")
    print(json.dumps({"output_dir": output_dir, **{k: v for k, v in summary.items() if k != "cost"}}))
    return 0


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
