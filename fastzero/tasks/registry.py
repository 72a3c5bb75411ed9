"""`--task NAME | module.path:factory`: the built-in tasks by name, or a user's own task factory.

A built-in is built from the run's options (`resolve_task("countdown", max_value=20, ...)`). A user
factory is called with no arguments and must return an object with the members of
`fastzero.tasks.base.Task` (subclass it, or duck-type); it is imported in the trainer process, so its
`score_batch` must be safe and quick. A reward that might hang or crash goes in `--reward`, which
runs in the sandbox (`fastzero.tasks.sandbox`).
"""
from __future__ import annotations

from typing import Any, Callable

from .base import check_task
from .spec import is_spec, load_object

DEFAULT_TASK = "countdown"


def _countdown(**options: Any):
    from .countdown.task import CountdownTask
    return CountdownTask(**options)


def _arithmetic(**options: Any):
    from .arithmetic.task import ArithmeticTask
    return ArithmeticTask(**options)


BUILTIN_TASKS: dict[str, Callable[..., Any]] = {"countdown": _countdown, "arithmetic": _arithmetic}


def check_task_name(spec: str) -> None:
    """Fail fast (before any import) on a --task value that is neither a built-in nor a spec."""
    if spec not in BUILTIN_TASKS and not is_spec(spec):
        raise ValueError(f"--task: {spec!r} is not a built-in task ({', '.join(BUILTIN_TASKS)}) "
                         "nor of the form module.path:factory")


def resolve_task(spec: str = DEFAULT_TASK, **options: Any):
    """The task behind a --task value; `options` configure a built-in and are not passed to user factories."""
    check_task_name(spec)
    if spec in BUILTIN_TASKS:
        try:
            return BUILTIN_TASKS[spec](**options)
        except TypeError as err:
            raise ValueError(f"--task {spec}: {err}") from None
    factory = load_object(spec, "--task")
    return check_task(factory(), f"--task {spec}")
