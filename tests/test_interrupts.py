"""fastzero.interrupts: a first signal during a step waits for the step's end, a second aborts it,
and outside a step a signal stops at once. Real signals, sent to this process."""
from __future__ import annotations

import signal

import pytest

from fastzero.interrupts import Interrupts, StepAborted, StopRequested


@pytest.fixture
def interrupts():
    said = []
    handler = Interrupts(say=said.append)
    with handler.installed():
        yield handler, said
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_a_step_lets_the_step_finish_then_stops(interrupts, signum):
    handler, said = interrupts
    finished = False
    with handler.step():
        signal.raise_signal(signum)
        finished = True  # the step carries on past the signal
    assert finished and handler.pending == signum
    assert "finishing this step" in said[0] and signal.Signals(signum).name in said[0]
    with pytest.raises(StopRequested):
        handler.check()


def test_a_second_signal_aborts_the_step(interrupts):
    handler, said = interrupts
    reached = []
    with pytest.raises(StepAborted):
        with handler.step():
            signal.raise_signal(signal.SIGINT)
            reached.append("after the first")
            signal.raise_signal(signal.SIGTERM)
            reached.append("after the second")
    assert reached == ["after the first"] and len(said) == 1


def test_outside_a_step_a_signal_stops_at_once(interrupts):
    handler, _ = interrupts
    for signum in (signal.SIGINT, signal.SIGTERM):
        with pytest.raises(KeyboardInterrupt) as info:
            signal.raise_signal(signum)
        assert type(info.value) is KeyboardInterrupt
    handler.check()  # nothing pending: no stop between steps


def test_both_exceptions_are_keyboard_interrupts():
    assert issubclass(StopRequested, KeyboardInterrupt) and issubclass(StepAborted, KeyboardInterrupt)
