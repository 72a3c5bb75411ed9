"""`module.path:name` specs: how a user names their own task factory or reward function.

Stdlib only: the reward sandbox's worker processes import this module before anything else, and a
worker should start in milliseconds, not load torch.
"""
from __future__ import annotations

import importlib
import re
from typing import Any

_SPEC = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def is_spec(text: str) -> bool:
    """Whether `text` has the shape `module.path:attribute` (nothing is imported)."""
    return isinstance(text, str) and bool(_SPEC.match(text))


def check_spec(text: str, option: str) -> tuple[str, str]:
    """(module, attribute) of a spec, or a ValueError naming `option` when it has the wrong shape."""
    if not is_spec(text):
        raise ValueError(f"{option}: {text!r} is not of the form module.path:function "
                         "(a module importable from the current directory or the environment)")
    module, attribute = text.split(":")
    return module, attribute


def load_object(text: str, option: str) -> Any:
    """Import the module of a spec and return its attribute (dotted attributes allowed)."""
    module_name, attribute = check_spec(text, option)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            raise ValueError(f"{option}: no module named {err.name!r} (is it on PYTHONPATH, or in the "
                             "directory you run from?)") from None
        raise
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{option}: {module_name!r} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{option}: {text!r} is not callable")
    return obj
