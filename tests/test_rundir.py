"""fastzero.rundir: one live run per directory (a lock the kernel drops when its holder dies), and
only directories that are runs, or empty, are used."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from fastzero.rundir import LOCK_NAME, RunDirError, claim, is_run_directory
from fastzero.writable import PROBE_PREFIX
from tests._files import unwritable_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_CONFIG = {"model": {}, "data": {}, "rollout": {}, "algorithm": {}, "optimizer": {}, "run": {}}


def _make_run(path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(RUN_CONFIG))


def _holder(path) -> subprocess.Popen:
    """Another process that claims `path` and holds it until killed."""
    code = ("import sys, time; from fastzero.rundir import claim; "
            "lock = claim(sys.argv[1], resume=False); print('locked', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_fresh_run_creates_and_locks_its_directory(tmp_path):
    out = tmp_path / "a" / "run"
    with claim(str(out), resume=False) as lock:
        assert lock.directory == str(out)
        assert (out / LOCK_NAME).read_text().strip() == str(os.getpid())
    with claim(str(out), resume=False):  # released: a directory with only the lock file is empty
        pass


def test_a_second_run_fails_at_once_naming_the_holder_and_a_killed_holder_leaves_no_lock(tmp_path):
    out = tmp_path / "run"
    holder = _holder(out)
    try:
        for resume in (False, True):
            if resume:
                _make_run(out)
            with pytest.raises(RunDirError, match=rf"in use by another FastZero run \(pid {holder.pid}\)"):
                claim(str(out), resume=resume)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with claim(str(out), resume=True) as lock:  # SIGKILL left no stale lock
        assert lock.directory == str(out)


def test_a_directory_of_other_files_is_refused_and_left_untouched(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"hidden_size": 64}')  # e.g. a model's config, not a run's
    (out / "notes.txt").write_text("keep")
    for resume, message in ((False, "holds other files .*config.json, notes.txt.* and no FastZero run"),
                            (True, "not a FastZero run directory")):
        with pytest.raises(RunDirError, match=message):
            claim(str(out), resume=resume)
    assert sorted(os.listdir(out)) == ["config.json", "notes.txt"]
    assert not is_run_directory(str(out))


def test_a_run_is_resumed_not_restarted(tmp_path):
    out = tmp_path / "run"
    _make_run(out)
    with pytest.raises(RunDirError, match=f"has no checkpoint yet; restart it with --resume {out}"):
        claim(str(out), resume=False)
    (out / "checkpoints" / "step-000001").mkdir(parents=True)
    with pytest.raises(RunDirError, match=f"already holds a run; continue it with --resume {out}"):
        claim(str(out), resume=False)
    with claim(str(out), resume=True):
        pass


def test_resume_of_something_that_is_no_run_says_what_to_do(tmp_path):
    with pytest.raises(RunDirError, match="--resume: .* does not exist"):
        claim(str(tmp_path / "missing"), resume=True)
    died_early = tmp_path / "died"
    died_early.mkdir()
    (died_early / LOCK_NAME).write_text("123\n")  # a run killed before it saved its config
    (died_early / f"{PROBE_PREFIX}x1y2z3").write_text("")  # ... and SIGKILLed inside its writability probe
    with pytest.raises(RunDirError, match=f"start it afresh with --output-dir {died_early}"):
        claim(str(died_early), resume=True)
    with claim(str(died_early), resume=False):
        pass


@pytest.mark.parametrize("where", ["file", "under-a-file", "read-only"])
def test_an_output_dir_that_cannot_hold_a_run_is_one_line(tmp_path, where):
    (tmp_path / "file").write_text("x")
    path = {"file": lambda: tmp_path / "file", "under-a-file": lambda: tmp_path / "file" / "run",
            "read-only": lambda: os.path.join(unwritable_folder(tmp_path), "run")}[where]()
    for resume, option in ((False, "--output-dir"), (True, "--resume")):
        with pytest.raises(RunDirError) as info:
            claim(str(path), resume=resume)
        assert str(info.value).startswith(f"{option}: ") and "\n" not in str(info.value)


def test_of_runs_started_together_in_one_new_directory_exactly_one_proceeds(tmp_path):
    out = tmp_path / "run"
    release = tmp_path / "release"
    code = ("import os, sys, time; from fastzero.rundir import claim, RunDirError\n"
            "try:\n    lock = claim(sys.argv[1], resume=False)\nexcept RunDirError as e:\n    print(e)\n"
            "else:\n    print('won', flush=True)\n"
            "    while not os.path.exists(sys.argv[2]): time.sleep(0.05)")  # hold until all have tried
    procs = [subprocess.Popen([sys.executable, "-c", code, str(out), str(release)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [p.stdout.readline().strip() for p in procs]
    release.write_text("")
    for p in procs:
        p.wait(timeout=60)
    assert outputs.count("won") == 1, outputs
    assert all("in use by another FastZero run" in o for o in outputs if o != "won"), outputs


def test_main_refuses_a_directory_another_run_holds(tmp_path, capsys):
    from fastzero.train import main

    out = tmp_path / "run"
    holder = _holder(out)
    try:
        assert main(["--output-dir", str(out), "--max-steps", "0"]) == 2
        assert f"in use by another FastZero run (pid {holder.pid})" in capsys.readouterr().err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert os.listdir(out) == [LOCK_NAME]  # the refused run wrote nothing
