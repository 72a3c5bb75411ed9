"""Rewards that misbehave on purpose, for the sandbox tests. Each response names what to do."""
import ctypes
import os
import sys
import time

ALLOCATION_CAP = 2 << 30  # never more than 2 GiB, so a broken memory limit fails the test, not the box


def behave(response: str) -> float:
    if response == "sleep":
        time.sleep(10**6)
    elif response == "loop":
        while True:
            pass
    elif response == "alloc":
        chunks, total = [], 0
        while total < ALLOCATION_CAP:
            chunks.append(bytearray(8 << 20))  # zero-filled: the pages are really touched
            total += 8 << 20
        return -1.0  # reached only when no memory limit stopped it
    elif response == "segv":
        ctypes.string_at(0)
    elif response == "exit":
        os._exit(3)
    elif response == "raise":
        raise RuntimeError("reward failed on purpose")
    elif response == "nan":
        return float("nan")
    elif response == "inf":
        return float("-inf")
    elif response == "str":
        return "1.0"
    elif response == "print":
        sys.stdout.write("x" * (4 << 20))
        sys.stderr.write("y" * (4 << 20))
        return 7.0
    return float(len(response))


def per_sample(response, problem):
    return behave(response)


def batch(responses, problems):
    return [behave(r) for r in responses]


def wrong_length(responses, problems):
    return [1.0] * (len(responses) + 1)


def not_a_list(responses, problems):
    return 3.0


def countdown(responses, problems):
    """Countdown's own verifier as a user reward (problems arrive as JSON dicts)."""
    from fastzero.tasks.countdown.verifier import score_batch
    return score_batch(responses, [p["numbers"] for p in problems], [p["target"] for p in problems], num_threads=1)


if os.environ.get("FASTZERO_TEST_HANG_FLAG") and os.path.exists(os.environ["FASTZERO_TEST_HANG_FLAG"]):
    time.sleep(10**6)  # importing this module hangs once the flag file exists
if os.environ.get("FASTZERO_TEST_IMPORT_FAILS"):
    raise ImportError("this module refuses to load")


def spawn_and_hang(response, problem):
    """Starts a child that would outlive its worker, records its pid, then hangs."""
    import subprocess
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(10**6)"])
    with open(response, "w") as f:
        f.write(str(child.pid))
    time.sleep(10**6)


def always_hang(responses, problems):
    time.sleep(10**6)


_calls = 0


def hang_from_third_call(responses, problems):
    """Scores the first two calls (the start evaluation, step 1); the third creates the hang flag and
    hangs, so the replacement worker hangs while importing this module: the pool stalls."""
    global _calls
    _calls += 1
    if _calls >= 3:
        open(os.environ["FASTZERO_TEST_HANG_FLAG"], "w").close()
        time.sleep(10**6)
    return [0.0] * len(responses)
