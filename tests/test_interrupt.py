"""Interrupted runs resume bit-identically: SIGINT, SIGTERM and SIGKILL at seeded random moments
(start-up, the first evaluation, mid-training, a second signal during the save), each run continued
the way a user would, compared with one uninterrupted run (see tests/_interrupt.py)."""
from __future__ import annotations

import signal

import pytest

from tests._interrupt import TINY, assert_same_run, interrupted_run, random_plans, reference_run


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    return out, reference_run(out, TINY)


def _check(reference, tmp_path, plans) -> None:
    expected, _ = reference
    out = tmp_path / "run"
    attempts = interrupted_run(out, TINY, plans)
    story = "\n" + "\n".join(a.describe() for a in attempts)
    assert_same_run(expected, out, story)


def test_sigint_and_sigterm_mid_training_resume_bit_identically(reference, tmp_path):
    plans = random_plans(14, 2, reference[1], signals=(signal.SIGINT, signal.SIGTERM), windows=("checkpoint",),
                         second_shot=0.0)
    _check(reference, tmp_path, plans)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(8))
def test_random_interruptions_of_every_kind_resume_bit_identically(reference, tmp_path, seed):
    """The long sweep: three interruptions per run, any signal, any window, sometimes two signals."""
    _check(reference, tmp_path, random_plans(seed, 3, reference[1], second_shot=0.3))
