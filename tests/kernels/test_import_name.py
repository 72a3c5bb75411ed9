"""The source folder `kernels/` (installed as `fastzero.kernels`) must not take the top-level name
`kernels` from Hugging Face's package of that name, which transformers >= 5.25 imports in
modeling_utils: from a checkout's root (`python -m fastzero.train`, pytest) the folder is on
sys.path first, and transformers used to get our module and fail on `from kernels import ...`."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[2]


def run_from_checkout(code: str, *python_flags: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter started in the checkout's root, the root first on sys.path (as
    `python -m` from there puts it)."""
    prelude = f"import sys; sys.path.insert(0, {str(CHECKOUT)!r}); "
    return subprocess.run([sys.executable, *python_flags, "-c", prelude + code], cwd=CHECKOUT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ""})


def test_transformers_model_code_imports_from_the_checkout_root():
    result = run_from_checkout(
        "import transformers.modeling_utils, kernels, fastzero.kernels as ours; "
        "print(kernels.__file__); print(ours.policy_loss.__module__)")
    assert result.returncode == 0, result.stderr[-2000:]
    top_level_file, ours_module = result.stdout.split()
    assert not Path(top_level_file).resolve().is_relative_to(CHECKOUT / "kernels"), top_level_file
    assert ours_module == "fastzero.kernels.policy_loss"


def test_hugging_face_kernels_gets_its_own_name_when_installed():
    pytest.importorskip("kernels")  # transformers >= 5.25 depends on it
    result = run_from_checkout("import kernels; print(kernels.__file__); print(hasattr(kernels, 'policy_loss'))")
    assert result.returncode == 0, result.stderr[-2000:]
    top_level_file, has_ours = result.stdout.split()
    assert "site-packages" in Path(top_level_file).parts or not Path(top_level_file).is_relative_to(CHECKOUT)
    assert has_ours == "False"


def test_without_hugging_face_kernels_the_name_is_an_empty_module():
    # -S: no site-packages, so no other `kernels` exists; the folder must then define nothing (so
    # transformers' version check finds no usable package) and import none of its own modules.
    result = run_from_checkout(
        "import kernels; print(sorted(n for n in vars(kernels) if not n.startswith('_'))); "
        "print(sorted(m for m in sys.modules if m.startswith('kernels.')))", "-S")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:2] == ["[]", "[]"]
