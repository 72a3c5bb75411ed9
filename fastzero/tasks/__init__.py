"""Verifiable tasks and rewards.

- base: the task protocol (`Task`) and the train/test split that never overlaps (`make_splits`);
- registry: `--task countdown | arithmetic | module.path:factory` (`resolve_task`);
- countdown/: the Countdown game (C++ verifier); arithmetic/: word problems with an integer answer;
- sandbox: user rewards (`--reward module.path:function`) in worker processes with hard limits;
- templates, rows, spec: the shared prompt framing, data-file rows, `module:name` specs.

No imports here on purpose: the sandbox's workers import `fastzero.tasks.spec` and must start fast.
"""
