"""The reward sandbox: hostile rewards cannot stall a call, counts are exact, normal rewards are unchanged.

Time bounds are derived on this machine, now: `startup` is the slowest measured worker start and
`round_trip` the slowest of a few trivial calls on the same pool. A call whose critical path holds R
timeouts and S worker restarts must end within R * timeout + S * startup + margin, margin =
2 * startup + 4 * round_trip (two spare starts, and a few dispatches and wake-ups), so the bound
scales with how loaded the box is instead of being a number one machine happened to meet.
"""
import math
import signal
import time

import pytest
from hypothesis import given, settings, strategies as st

from fastzero.tasks import sandbox as sandbox_module
from fastzero.tasks.sandbox import RewardLoadError, RewardSandbox, RewardStalled, SandboxOptions
from tests.tasks import hostile_rewards, user_task

TIMEOUT = 1.0
HOSTILE = "tests.tasks.hostile_rewards"


class Timed:
    """A sandbox with measured startup and round-trip times, and a bound() for calls on it."""

    def __init__(self, spec, **options):
        self.options = SandboxOptions(**{"timeout": TIMEOUT, "workers": 2, "memory_mb": 64,
                                         "stall_seconds": 20.0, **options})
        self.sandbox = RewardSandbox(spec, self.options)
        self.round_trip = max(self.measure(["a", "bb"], [{}, {}])[1] for _ in range(3))

    def measure(self, responses, problems):
        started = time.monotonic()
        result = self.sandbox.score(responses, problems)
        return result, time.monotonic() - started

    def bound(self, rounds: int, restarts: int) -> float:
        startup = self.sandbox.startup_seconds
        return rounds * self.options.timeout + restarts * startup + 2 * startup + 4 * self.round_trip


@pytest.fixture(scope="module")
def per_sample_pool():
    pool = Timed(f"{HOSTILE}:per_sample", per_sample=True)
    yield pool
    pool.sandbox.close()


@pytest.fixture(scope="module")
def batch_pool():
    pool = Timed(f"{HOSTILE}:batch")
    yield pool
    pool.sandbox.close()


# (kind, counted as timeout, counted as error)
HOSTILE_KINDS = [("sleep", 1, 0), ("loop", 1, 0), ("alloc", 0, 1), ("segv", 0, 1), ("exit", 0, 1),
                 ("raise", 0, 1), ("nan", 0, 1), ("inf", 0, 1), ("str", 0, 1)]


@pytest.mark.parametrize("kind,timeouts,errors", HOSTILE_KINDS, ids=[k[0] for k in HOSTILE_KINDS])
def test_per_sample_hostile(per_sample_pool, kind, timeouts, errors):
    responses = ["a", kind, "bbb", "cc", "dddd", "e"]
    result, elapsed = per_sample_pool.measure(responses, [{}] * len(responses))
    assert result.rewards == [1.0, 0.0, 3.0, 2.0, 4.0, 1.0]
    assert (result.timeouts, result.errors) == (timeouts, errors)
    assert (result.first_error is None) == (errors == 0)
    assert elapsed <= per_sample_pool.bound(rounds=timeouts, restarts=1), result
    after, _ = per_sample_pool.measure(["ab", "c"], [{}, {}])  # the pool works afterwards
    assert after.rewards == [2.0, 1.0] and after.timeouts == after.errors == 0


def test_per_sample_error_texts(per_sample_pool):
    for kind, text in [("raise", "RuntimeError: reward failed on purpose (at hostile_rewards.py"),
                       ("nan", "non-finite"), ("str", "returned str, not a number"),
                       ("segv", "signal SIGSEGV"), ("alloc", "MemoryError")]:
        assert text in per_sample_pool.sandbox.score([kind], [{}]).first_error


def test_more_hanging_samples_than_workers(per_sample_pool):
    responses = ["sleep", "loop", "ok", "sleep", "sleep", "fine"]
    result, elapsed = per_sample_pool.measure(responses, [{}] * 6)
    assert result.rewards == [0.0, 0.0, 2.0, 0.0, 0.0, 4.0]
    assert (result.timeouts, result.errors) == (4, 0)
    assert elapsed <= per_sample_pool.bound(rounds=2, restarts=2)  # 4 hangs over 2 workers: 2 rounds


def test_timeout_kills_what_the_reward_started(tmp_path):
    pid_file = tmp_path / "child.pid"
    options = SandboxOptions(workers=1, timeout=TIMEOUT, per_sample=True)
    with RewardSandbox(f"{HOSTILE}:spawn_and_hang", options) as sandbox:
        assert sandbox.score([str(pid_file)], [{}]).timeouts == 1
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5.0
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie is dead, awaiting its reaper
    except FileNotFoundError:
        return False


def test_printing_megabytes(per_sample_pool, batch_pool):
    for pool in (per_sample_pool, batch_pool):
        result, elapsed = pool.measure(["print", "ab", "print"], [{}] * 3)
        assert result.rewards == [7.0, 2.0, 7.0] and result.timeouts == result.errors == 0
        assert elapsed <= pool.bound(rounds=0, restarts=0)


@pytest.mark.parametrize("kind,timeouts,errors", HOSTILE_KINDS, ids=[k[0] for k in HOSTILE_KINDS])
def test_batch_hostile(batch_pool, kind, timeouts, errors):
    # 2 workers, 4 samples: chunks [0, 1] and [2, 3]. A call that hangs, crashes or raises takes its
    # whole chunk down; a bad value (nan, inf, str) is only its own sample's error.
    result, elapsed = batch_pool.measure(["a", kind, "bbb", "cc"], [{}] * 4)
    whole_chunk = kind not in ("nan", "inf", "str")
    assert result.rewards == [0.0 if whole_chunk else 1.0, 0.0, 3.0, 2.0]
    share = 2 if whole_chunk else 1
    assert (result.timeouts, result.errors) == (share * timeouts, share * errors)
    assert elapsed <= batch_pool.bound(rounds=timeouts, restarts=1)


@pytest.mark.parametrize("function,message", [("wrong_length", "returned 3 rewards for 2 responses"),
                                              ("not_a_list", "returned float, not a list")])
def test_batch_bad_shapes(function, message):
    with RewardSandbox(f"{HOSTILE}:{function}", SandboxOptions(workers=1, timeout=TIMEOUT)) as sandbox:
        result = sandbox.score(["a", "b"], [{}, {}])
    assert result.rewards == [0.0, 0.0] and result.errors == 2 and message in result.first_error


def test_fallback_is_configurable():
    options = SandboxOptions(workers=1, timeout=TIMEOUT, fallback=-0.5, per_sample=True)
    with RewardSandbox(f"{HOSTILE}:per_sample", options) as sandbox:
        assert sandbox.score(["raise", "ab", "nan"], [{}] * 3).rewards == [-0.5, 2.0, -0.5]


def test_cpu_limit_ends_a_busy_worker_as_a_timeout():
    # Wall timeout far away; the CPU-time limit (1 s beyond what the worker used) ends the loop.
    options = SandboxOptions(workers=1, timeout=30.0, stall_seconds=60.0, cpu_seconds=1, per_sample=True)
    with RewardSandbox(f"{HOSTILE}:per_sample", options) as sandbox:
        started = time.monotonic()
        result = sandbox.score(["loop", "ab"], [{}, {}])
    assert result.rewards == [0.0, 2.0] and (result.timeouts, result.errors) == (1, 0)
    assert time.monotonic() - started < 30.0


# ---- the same numbers as a direct call ---------------------------------------------------------
@pytest.fixture(scope="module")
def user_pools():
    batch = RewardSandbox("tests.tasks.user_task:rewards", SandboxOptions(workers=2, timeout=5.0))
    single = RewardSandbox("tests.tasks.user_task:reward", SandboxOptions(workers=2, timeout=5.0, per_sample=True))
    countdown = RewardSandbox(f"{HOSTILE}:countdown", SandboxOptions(workers=2, timeout=5.0))
    yield batch, single, countdown
    for pool in (batch, single, countdown):
        pool.close()


ANSWERS = st.one_of(st.sampled_from(user_task.WORDS), st.text(max_size=6))


@settings(max_examples=40, deadline=None)
@given(items=st.lists(st.tuples(st.integers(0, 9), ANSWERS, st.sampled_from(["", "<answer>", "x"])), max_size=40))
def test_user_reward_same_in_sandbox_as_direct(user_pools, items):
    responses = [f"{prefix}<answer>{word}</answer>" if prefix != "x" else word for _, word, prefix in items]
    problems = [{"n": n} for n, _, _ in items]
    direct = user_task.rewards(responses, problems)
    batch, single, _ = user_pools
    for pool in (batch, single):
        result = pool.score(responses, problems)
        assert result.rewards == direct and result.timeouts == result.errors == 0


def test_countdown_reward_same_in_sandbox_as_direct(user_pools):
    import random

    from tests.tasks.countdown.test_fuzz import random_input

    rng = random.Random(1)
    batch = [random_input(rng) for _ in range(3000)]
    responses = [t for t, _, _ in batch]
    problems = [{"numbers": n, "target": g} for _, n, g in batch]
    result = user_pools[2].score(responses, problems)
    assert result.rewards == hostile_rewards.countdown(responses, problems) and result.errors == 0


# ---- loading and the watchdog ------------------------------------------------------------------
@pytest.mark.parametrize("spec,match", [
    ("tests.tasks.no_such_module:f", "no module named"),
    (f"{HOSTILE}:no_such_function", "has no attribute 'no_such_function'"),
    ("not a spec", "not of the form module.path:function"),
])
def test_load_errors_name_the_option(spec, match):
    with pytest.raises(ValueError, match=match) as err:
        RewardSandbox(spec, SandboxOptions(workers=1))
    assert "--reward" in str(err.value)


def test_import_error_is_a_load_error(monkeypatch):
    monkeypatch.setenv("FASTZERO_TEST_IMPORT_FAILS", "1")
    with pytest.raises(RewardLoadError, match="ImportError: this module refuses to load"):
        RewardSandbox(f"{HOSTILE}:batch", SandboxOptions(workers=1))


def test_watchdog_when_workers_cannot_restart(monkeypatch, tmp_path):
    flag = tmp_path / "hang"
    monkeypatch.setenv("FASTZERO_TEST_HANG_FLAG", str(flag))
    pool = Timed(f"{HOSTILE}:per_sample", workers=1, timeout=0.5, stall_seconds=2.0, per_sample=True)
    with pool.sandbox:
        flag.touch()  # from now on a new worker hangs while importing the module
        started = time.monotonic()
        with pytest.raises(RewardStalled, match="--reward-stall-seconds"):
            pool.sandbox.score(["sleep", "ab"], [{}, {}])
        elapsed = time.monotonic() - started
    # The timeout (0.5 s) is the last progress; the watchdog fires stall_seconds after it.
    stalled_at = pool.options.timeout + pool.options.stall_seconds
    assert stalled_at <= elapsed <= stalled_at + pool.bound(rounds=0, restarts=0)


def test_watchdog_when_workers_never_start(monkeypatch, tmp_path, per_sample_pool):
    flag = tmp_path / "hang"
    flag.touch()
    monkeypatch.setenv("FASTZERO_TEST_HANG_FLAG", str(flag))
    started = time.monotonic()
    with pytest.raises(RewardStalled, match="did not start"):
        RewardSandbox(f"{HOSTILE}:batch", SandboxOptions(workers=1, timeout=0.5, stall_seconds=1.5))
    assert time.monotonic() - started <= 1.5 + per_sample_pool.bound(rounds=0, restarts=0)


def test_a_call_interrupted_midway_leaves_no_stale_results(monkeypatch):
    options = SandboxOptions(workers=1, timeout=5.0, per_sample=True)
    with RewardSandbox(f"{HOSTILE}:per_sample", options) as sandbox:
        original = sandbox._drain
        def interrupt(*args):  # the trainer's Ctrl-C arriving while a chunk is in flight
            raise KeyboardInterrupt
        monkeypatch.setattr(sandbox, "_drain", interrupt)
        with pytest.raises(KeyboardInterrupt):
            sandbox.score(["a", "bb", "ccc"], [{}] * 3)
        monkeypatch.setattr(sandbox, "_drain", original)
        assert sandbox.score(["dddd"], [{}]).rewards == [4.0]


def test_closing_does_not_wait_for_a_busy_worker(monkeypatch, per_sample_pool):
    """A worker inside the user's function cannot read the goodbye: close kills it at once (the idle
    one beside it still exits on its own), instead of waiting out the polite second first."""
    sandbox = RewardSandbox(f"{HOSTILE}:per_sample", SandboxOptions(workers=2, timeout=30.0, per_sample=True))
    def ctrl_c(*args):  # the trainer's Ctrl-C, arriving while the call waits for its workers
        raise KeyboardInterrupt
    monkeypatch.setattr(sandbox_module, "wait", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        sandbox.score(["sleep"], [{}])  # one worker now sleeps in the reward; the other is idle
    monkeypatch.undo()
    assert sorted(w.state for w in sandbox.workers) == ["busy", "idle"]
    busy, idle = sorted(sandbox.workers, key=lambda w: w.state)
    started = time.monotonic()
    sandbox.close()
    # restarts=1: the idle worker's own exit, which takes no longer than a worker's start
    assert time.monotonic() - started <= per_sample_pool.bound(rounds=0, restarts=1)
    assert busy.proc.returncode == -signal.SIGKILL and idle.proc.returncode == 0


def test_options_are_checked():
    for bad, option in [(dict(timeout=0), "--reward-timeout"), (dict(timeout=math.inf), "--reward-timeout"),
                        (dict(memory_mb=-1), "--reward-memory-mb"), (dict(workers=-1), "--reward-workers"),
                        (dict(fallback=math.nan), "--reward-fallback"),
                        (dict(timeout=5.0, stall_seconds=5.0), "--reward-stall-seconds")]:
        with pytest.raises(ValueError, match=option):
            SandboxOptions(**bad)


def test_workers_do_not_outlive_the_sandbox():
    sandbox = RewardSandbox(f"{HOSTILE}:batch", SandboxOptions(workers=2))
    procs = [w.proc for w in sandbox.workers]
    sandbox.close()
    assert all(p.poll() is not None for p in procs)
    with pytest.raises(RuntimeError, match="closed"):
        sandbox.score(["a"], [{}])
