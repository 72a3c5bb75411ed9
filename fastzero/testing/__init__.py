"""Development tools for tests and benchmarks, never imported by the trainer.

Some need the `dev` extra (`pip install -e .[dev]`): see each module's docstring.
"""
