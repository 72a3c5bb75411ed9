"""What may change when a run is resumed, and the one-line refusal of everything else.

A resumed run is the same run, continued: its saved config is the truth, and an option given with
`--resume` either changes how long or how visibly it runs, or it is refused - silently taking it
would give a run that matches neither the old config nor the new one (a changed seed or test split
would compare different held-out sets in the summary; a changed learning rate would make the
saved optimizer state and the saved config disagree).

May change: how long it runs (max steps, unless the learning rate decays over them; time limit),
how often it evaluates and saves, what it logs and shows, the price used in the cost summary, CPU
threads, the patience for bad steps, and the learning rates and gradient clip (what a run stopped
by non-finite steps is told to lower).
Evaluation is greedy and draws no random numbers, so its cadence does not change the training
trajectory; threads can change float summation order, so bit-identity with an uninterrupted run
holds only with the same --threads.
"""
from __future__ import annotations

import os
from typing import Any

MAY_CHANGE = (
    "max_steps", "time_limit_minutes", "eval_every", "save_every", "log_samples", "price_per_hour",
    "threads", "progress", "max_bad_steps",
    "lr", "critic_lr", "grad_clip",  # the way back from a diverged run (saved to config.json as changed)
)
NOT_IN_CONFIG_FILES = ("resume",)  # a file of options describes a run; which run to resume is a flag


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def refused_changes(saved: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """`--option (saved X, given Y)` for each given option that differs from the saved config and
    may not change on resume. `saved` and `given` map flat option names to values.

    A decaying learning rate (--lr-schedule cosine/linear) ends at --max-steps, so there the run's
    length shapes the steps already taken: a changed --max-steps is refused like any such option."""
    refused = []
    decays = saved.get("lr_schedule", "constant") != "constant"
    for name, value in given.items():
        if name in ("resume", "output_dir") or name not in saved:
            continue
        if name in MAY_CHANGE and not (decays and name == "max_steps"):
            continue
        if value != saved[name]:
            why = f"; --lr-schedule {saved['lr_schedule']} decays over it" if name == "max_steps" else ""
            refused.append(f"{flag(name)} (saved {saved[name]!r}, given {value!r}{why})")
    return refused


def check_resume(saved: dict[str, Any], given: dict[str, Any], *, resume_dir: str, restart: bool = False) -> None:
    """Raise ValueError naming every refused option; `given` are the options the user set now.
    `restart`: the run has no checkpoint yet, so it starts over and any option may change."""
    output_dir = given.get("output_dir")
    if output_dir is not None and os.path.abspath(output_dir) != os.path.abspath(resume_dir):
        raise ValueError(f"--resume {resume_dir} continues the run in that directory; --output-dir {output_dir} "
                         "cannot move it (copy the directory first to fork a run)")
    refused = [] if restart else refused_changes(saved, given)
    if refused:
        allowed = ", ".join(flag(name) for name in MAY_CHANGE)
        raise ValueError(f"--resume: a resumed run keeps its saved options, but these differ: {'; '.join(refused)}. "
                         f"Only {allowed} may change; start a new run with --output-dir to change the others")


def check_config_file_keys(keys: list[str], path: str) -> None:
    """Options a --config file may not set."""
    for name in keys:
        if name in NOT_IN_CONFIG_FILES:
            raise ValueError(f"--config {path}: {name!r} cannot be set in a config file; pass {flag(name)} DIR "
                             "on the command line (the run's saved config is then used)")
