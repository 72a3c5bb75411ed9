"""`python -m fastzero.train [--preset NAME] [--config FILE] [--option value ...]`

With no arguments it trains the embedded tiny model on Countdown on the CPU and prints the held-out
accuracy before and after. Every option of fastzero.config is a flag here (`--help` lists them with
their defaults); invalid values and conflicts fail before any work, naming the option.
Ctrl-C (or SIGTERM) finishes the current step, saves a checkpoint and exits with status 130 (a
second one stops at once, keeping the last checkpoint); `--resume DIR` continues the run in DIR.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import TYPE_CHECKING

from .interrupts import EXIT_CODE, Interrupts
from .manifest import step_directories
from .resume_rules import check_config_file_keys, check_resume
from .rundir import CONFIG_NAME, RunDirError, claim, resume_refusal

if TYPE_CHECKING:
    from .config import Config

DEFAULT_PRESET = "tiny-cpu"
# fastzero.config (and through it torch) is imported inside the functions below, after main() has
# installed the signal handlers: a Ctrl-C during those seconds of imports is then a clean exit.

_SECTION_TITLES = {"model": "model", "data": "data", "rollout": "rollout", "algorithm": "algorithm",
                   "optimizer": "optimizer", "run": "run, logging and checkpoints",
                   "reward": "your own reward (sandboxed)"}


def build_parser() -> argparse.ArgumentParser:
    from . import config as C
    from .presets import PRESETS

    parser = argparse.ArgumentParser(
        prog="python -m fastzero.train", description=__doc__.split("\n\n")[1].strip(),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", default=None, help=f"named recipe: {', '.join(PRESETS)} (default: {DEFAULT_PRESET})")
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


def config_from_args(argv: list[str] | None) -> Config:
    """Preset, then config file, then flags; or, with --resume, the run's saved config, then the
    config file and flags, of which only the options that may change on resume may differ."""
    from . import config as C
    from .presets import from_preset

    args = vars(build_parser().parse_args(argv))
    preset, config_file = args.pop("preset"), args.pop("config")
    file_options = C.read_config_file(config_file) if config_file else {}
    check_config_file_keys(list(file_options), config_file)
    resume = args.get("resume")
    if resume:
        if preset is not None:
            raise ValueError(f"--preset {preset}: cannot be combined with --resume (the run's saved config is used)")
        refusal = resume_refusal(resume)
        if refusal is not None:
            raise ValueError(refusal)
        config = C.Config()
        try:
            C.load_config_file(config, os.path.join(resume, CONFIG_NAME))
        except ValueError as err:
            raise ValueError(f"--resume {resume}: its saved {CONFIG_NAME} is damaged ({err})") from None
        saved = {name: config.get(name) for name in C.FIELDS}
    else:
        config = from_preset(preset or DEFAULT_PRESET)
    given = {}
    for source, options in ((f"--config {config_file}: ", file_options), ("", args)):
        for name, value in options.items():
            try:
                config.set(name, value)
            except ValueError as err:
                raise ValueError(f"{source}{err}") from None
            given[name] = config.get(name)
    if resume:
        # Until its first checkpoint a run is restarted, not continued: nothing of it is kept, so
        # any option may change (a bad --test-path or --max-new-tokens can be fixed in place).
        check_resume(saved, given, resume_dir=resume, restart=not step_directories(os.path.join(resume, "checkpoints")))
        config.run.output_dir = resume
    C.validate(config)
    C.check_paths(config)
    return config


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 1 the run failed (message says why and what was kept), 2 bad usage,
    130 interrupted (SIGINT or SIGTERM; the directory can always be continued with --resume)."""
    # Under torchrun (its variables; fastzero.distributed would import torch before the handlers are
    # in) a scheduler's signal can arrive twice, directly and via the agent: see fastzero/interrupts.py.
    under_torchrun = all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    interrupts = Interrupts(repeat_window_s=2.0 if under_torchrun else 0.0)
    interrupts.install()  # first: a signal during start-up is a clean exit too
    try:
        return _main(argv, interrupts)
    except KeyboardInterrupt:
        print("\ninterrupted during start-up; nothing was saved", file=sys.stderr)
        return EXIT_CODE
    finally:
        interrupts.uninstall()


def _main(argv: list[str] | None, interrupts: Interrupts) -> int:
    try:
        config = config_from_args(argv)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from .rollout.tp_groups import sglang_tp_usage_error

    tp_error = sglang_tp_usage_error(config)  # the torchrun layout must fit --sglang-tp: before any work
    if tp_error is not None:
        print(f"error: {tp_error}", file=sys.stderr)
        return 2
    plan_error = check_memory_plan(config)
    if plan_error is not None:
        return plan_error
    try:
        from .config import check_weights

        check_weights(config)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    output_dir = config.run.output_dir or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    config.run.output_dir = output_dir
    try:
        # Under torchrun the first rank checks and locks the directory for the whole job; the others
        # share it (and end when torchrun stops the job on the first rank's error).
        first_rank = os.environ.get("RANK", "0") == "0"
        lock = claim(output_dir, resume=bool(config.run.resume)) if first_rank else contextlib.nullcontext()
    except RunDirError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with lock:
        from .session import train_session

        return train_session(config, output_dir, interrupts)


def check_memory_plan(config: Config) -> int | None:
    """--plan prints the memory plan and exits (0); a plan that does not fit the device stops the
    run here, before anything is loaded (2). None: go on."""
    import torch

    from .memory_plan import GiB, plan_for_config

    cuda = config.run.device == "cuda" or (config.run.device == "auto" and torch.cuda.is_available())
    device_bytes = int(config.run.device_memory_gb * GiB) or (
        torch.cuda.get_device_properties(0).total_memory if cuda and torch.cuda.is_available() else None)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    plan = plan_for_config(config, cuda=cuda, device_bytes=device_bytes, world_size=world_size)
    if config.run.plan:
        print(plan.format())
        return 0
    if not plan.fits:
        print(plan.format(), file=sys.stderr)
        print(f"error: the run needs {plan.peak_bytes / GiB:.1f} GiB per GPU in its {plan.peak_phase} phase, "
              f"the device has {device_bytes / GiB:.1f} GiB; change {plan.advice[0]} (or pass --device-memory-gb "
              "to plan for another device)", file=sys.stderr)
        return 2
    return None


if __name__ == "__main__":
    status = main()
    if status == EXIT_CODE:
        # Interrupted: leave now, with this status. Python's own exit path can replace it with
        # "killed by SIGINT" (-2) after a KeyboardInterrupt passed through C code that ran Python
        # (an interrupted import), although main() handled it; everything is written and closed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
