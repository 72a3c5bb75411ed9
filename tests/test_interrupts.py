"""fastzero.interrupts: a first signal during a step waits for the step's end, a second aborts it,
and outside a step a signal stops at once. Real signals, sent to this process."""
from __future__ import annotations

import signal
import sys
import time

import pytest

from fastzero.interrupts import Interrupts, StepAborted, StopRequested


@pytest.fixture
def interrupts():
    said = []
    handler = Interrupts(say=said.append)
    # What was there before, not Python's default: a shell's background job starts with SIGINT ignored.
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    with handler.installed():
        yield handler, said
    assert {signum: signal.getsignal(signum) for signum in before} == before  # restored


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


def test_under_torchrun_an_echo_of_the_pending_signal_is_not_a_second_one():
    """A scheduler's SIGTERM arrives directly and again through torchrun's agent, moments apart."""
    said = []
    handler = Interrupts(say=said.append, repeat_window_s=60.0)
    with handler.installed():
        with handler.step():
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)  # the echo: the step still finishes
        assert handler.pending == signal.SIGTERM and len(said) == 1
        with pytest.raises(StepAborted):  # another signal is still a second request
            with handler.step():
                signal.raise_signal(signal.SIGINT)


def test_a_stop_asked_for_by_another_rank_stops_here_too(interrupts):
    handler, said = interrupts
    handler.request(signal.SIGTERM)
    handler.request(signal.SIGINT)  # the first request stands
    assert handler.pending == signal.SIGTERM and not said
    with pytest.raises(StopRequested):
        handler.check()


def test_outside_a_step_a_signal_stops_at_once(interrupts):
    handler, _ = interrupts
    for signum in (signal.SIGINT, signal.SIGTERM):
        with pytest.raises(KeyboardInterrupt) as info:
            signal.raise_signal(signum)
        assert type(info.value) is KeyboardInterrupt
    handler.check()  # nothing pending: no stop between steps


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_outside_a_step_a_signal_inside_an_import_waits_for_the_import(interrupts, signum, tmp_path,
                                                                        monkeypatch):
    # torch's C++ imports Python lazily; a KeyboardInterrupt raised inside such an import aborted the
    # process (SIGABRT). The signal is asked again after the import, then stops as usual.
    (tmp_path / "slow_to_import.py").write_text(
        "import signal, time\n"
        f"signal.raise_signal({int(signum)})\n"
        "time.sleep(0.2)  # the retry fires in here and must wait too\n"
        "finished = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "slow_to_import", raising=False)
    import slow_to_import  # the signal lands inside this import: no exception out of it

    assert slow_to_import.finished
    with pytest.raises(KeyboardInterrupt) as info:  # the retry lands here, outside the import
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            time.sleep(0.01)
    assert type(info.value) is KeyboardInterrupt
    interrupts[0].check()  # nothing pending


def test_both_exceptions_are_keyboard_interrupts():
    assert issubclass(StopRequested, KeyboardInterrupt) and issubclass(StepAborted, KeyboardInterrupt)
