"""fastzero.session through `main`, in this process: each way a run can be stopped or can fail
leaves only consistent checkpoints, says what was kept, and resumes to the uninterrupted result.

Signals are real (signal.raise_signal) but placed precisely, by wrapping the function the signal
should interrupt; tests/test_interrupt.py sends them from outside at random moments."""
from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest

from fastzero import checkpoint as ckpt_module
from fastzero import optim
from fastzero.train import main
from tests._interrupt import assert_same_run, comparable_rows

# KL in the loss: every sequence carries a gradient, so every step takes two optimizer steps (two
# mini-batches of 8 sequences): optimizer step 2k+1 is the middle of RL step k+1.
ARGS = ["--preset", "tiny-direct", "--num-train", "300", "--num-test", "8", "--prompts-per-step", "4", "--samples-per-prompt", "4",
        "--mini-batch-size", "8", "--eval-every", "2", "--save-every", "1", "--progress", "false",
        "--threads", "1", "--max-steps", "3", "--kl-coef", "0.01"]


@pytest.fixture(scope="module", autouse=True)
def cpu_kernels():
    """The kernels' PyTorch path, as a CPU user runs (the Triton interpreter is for kernel tests)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FASTZERO_KERNELS", "torch")
        yield


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cpu_kernels) -> Path:
    out = tmp_path_factory.mktemp("session") / "reference"
    assert main(ARGS + ["--output-dir", str(out)]) == 0
    return out


def _signal_after(monkeypatch, owner, name, *, calls: set[int], signals=(signal.SIGINT,)):
    """Wrap owner.name so that its n-th call (n in `calls`, from 1) is followed by `signals`."""
    real, count = getattr(owner, name), [0]

    def wrapped(*args, **kwargs):
        result = real(*args, **kwargs)
        count[0] += 1
        if count[0] in calls:
            for signum in signals:
                signal.raise_signal(signum)
        return result

    monkeypatch.setattr(owner, name, wrapped)


def _steps_on_disk(out: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*"))


def test_a_signal_mid_step_finishes_the_step_then_saves_it(reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    # Between the two optimizer steps of step 2: half its update done, its metrics and save to come.
    _signal_after(monkeypatch, optim.Optimizers, "step", calls={3}, signals=(signal.SIGTERM,))
    assert main(ARGS + ["--output-dir", str(out)]) == 130
    err = capsys.readouterr().err
    assert "finishing this step" in err and "checkpoint saved at step 2" in err and "Traceback" not in err
    assert _steps_on_disk(out) == [1, 2]
    monkeypatch.undo()
    assert main(["--resume", str(out)]) == 0
    assert_same_run(reference, out)


def test_a_second_signal_abandons_the_step_and_keeps_the_last_checkpoint(reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _signal_after(monkeypatch, optim.Optimizers, "step", calls={3}, signals=(signal.SIGINT, signal.SIGINT))
    assert main(ARGS + ["--output-dir", str(out)]) == 130
    err = capsys.readouterr().err
    assert "stopped at once during step 2, which was discarded" in err and "step 1" in err
    assert _steps_on_disk(out) == [1]  # step 1 untouched: nothing of the half step was saved
    monkeypatch.undo()
    assert main(["--resume", str(out)]) == 0
    assert_same_run(reference, out)


def test_a_second_signal_during_the_final_save_keeps_the_previous_checkpoint(reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    args = list(ARGS)
    args[args.index("--save-every") + 1] = "0"  # only the stop saves; the run has no checkpoint before it
    _signal_after(monkeypatch, optim.Optimizers, "step", calls={3})  # first signal: step 2 finishes, then saves
    _signal_after(monkeypatch, ckpt_module, "write_manifest", calls={1})  # second one: inside that save
    assert main(args + ["--output-dir", str(out)]) == 130
    err = capsys.readouterr().err
    assert "second signal during the save: abandoned it" in err
    assert _steps_on_disk(out) == [] and not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    monkeypatch.undo()
    assert main(["--resume", str(out)]) == 0  # no checkpoint: from step 0 with the saved config
    assert comparable_rows(out)[-1]["step"] == 3


class _FileToWrite:
    """The file torch_save writes through, so that a signal can land inside one of torch's writes."""

    def __init__(self, handle):
        self.handle = handle

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()

    def write(self, data) -> int:
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def test_a_second_signal_inside_a_torch_write_is_a_clean_stop_not_a_traceback(reference, tmp_path, monkeypatch, capsys):
    """torch's C++ writer sees the handler's KeyboardInterrupt as a failed write and used to raise
    RuntimeError("unexpected pos ...") in its place (a random-interruption test caught it)."""
    import builtins

    from fastzero import write_errors

    out = tmp_path / "run"
    args = list(ARGS)
    args[args.index("--save-every") + 1] = "0"  # the stop's save is the first torch_save of the run
    monkeypatch.setattr(write_errors, "open", lambda path, mode: _FileToWrite(builtins.open(path, mode)), raising=False)
    _signal_after(monkeypatch, optim.Optimizers, "step", calls={3})  # first signal: step 2 finishes, then saves
    _signal_after(monkeypatch, _FileToWrite, "write", calls={2})  # second one: inside torch.save's writes
    assert main(args + ["--output-dir", str(out)]) == 130
    err = capsys.readouterr().err
    assert "second signal during the save: abandoned it" in err and "Traceback" not in err
    assert _steps_on_disk(out) == [] and not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    monkeypatch.undo()
    assert main(["--resume", str(out)]) == 0
    assert_same_run(reference, out)


@pytest.mark.parametrize("where", ["start-up", "first evaluation"])
def test_a_signal_during_start_up_or_the_first_evaluation_leaves_a_resumable_directory(reference, tmp_path, monkeypatch,
                                                                                       capsys, where):
    from fastzero import data, trainer

    out = tmp_path / "run"
    owner, name = (data.TaskData, "__init__") if where == "start-up" else (trainer.Trainer, "evaluate")
    _signal_after(monkeypatch, owner, name, calls={1})
    assert main(ARGS + ["--output-dir", str(out)]) == 130
    err = capsys.readouterr().err
    assert "nothing to save" in err and "Traceback" not in err
    monkeypatch.undo()
    hint = err.strip().splitlines()[-1]
    again = ["--resume", str(out)] if "--resume" in hint else ARGS + ["--output-dir", str(out)]
    assert main(again) == 0
    assert_same_run(reference, out)


def test_resume_of_a_run_without_checkpoint_starts_from_step_0_with_its_saved_config(reference, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(ARGS + ["--max-steps", "0", "--output-dir", str(out)]) == 0  # config, metrics, no step
    for path in (out / "checkpoints").glob("step-*"):
        import shutil
        shutil.rmtree(path)
    assert main(["--resume", str(out), "--max-steps", "3"]) == 0
    assert "starting from step 0 with the saved config" in capsys.readouterr().out
    assert_same_run(reference, out)


def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(reference, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(ARGS + ["--output-dir", str(out)]) == 0
    assert _steps_on_disk(out) == [2, 3]
    victim = out / "checkpoints" / "step-000003" / "optimizers.pt"
    victim.write_bytes(victim.read_bytes()[:-10])
    (out / "checkpoints" / "latest").unlink()
    capsys.readouterr()
    assert main(["--resume", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{victim} is truncated" in printed and "resumed from" in printed and "step-000002" in printed
    assert_same_run(reference, out)


def test_resume_with_every_checkpoint_damaged_is_an_error_naming_them(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(ARGS + ["--max-steps", "2", "--output-dir", str(out)]) == 0
    for step in (1, 2):
        (out / "checkpoints" / f"step-00000{step}" / "optimizers.pt").unlink()
    rows = (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(["--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no intact checkpoint" in err and "Traceback" not in err
    assert all(f"step-00000{s}" in err and "optimizers.pt is missing" in err for s in (1, 2))
    assert (out / "metrics.jsonl").read_text() == rows  # nothing was trained


def _disk_full_on(monkeypatch, call: int):
    """The `call`-th file torch writes for a checkpoint fails as on a full disk."""
    real, count = ckpt_module.torch_save, [0]

    def save(obj, path):
        count[0] += 1
        if count[0] == call:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(obj, path)

    monkeypatch.setattr(ckpt_module, "torch_save", save)


def test_disk_full_names_the_path_and_what_was_kept(reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _disk_full_on(monkeypatch, call=3)  # two torch files per checkpoint: the second checkpoint fails
    assert main(ARGS + ["--output-dir", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: could not write ") and "optimizers.pt: No space left on device" in err
    assert "Kept: the checkpoint of step 1" in err and f"--resume {out}" in err
    assert _steps_on_disk(out) == [1]
    monkeypatch.undo()
    assert main(["--resume", str(out)]) == 0
    assert_same_run(reference, out)


def test_weights_that_become_non_finite_never_report_success(tmp_path, monkeypatch, capsys):
    import torch

    real = optim.Optimizers.step

    def overflowing_step(self, steps_done):  # an update that overflows, as a huge learning rate would
        norm = real(self, steps_done)
        with torch.no_grad():
            next(self._policy.module.parameters()).view(-1)[0] = float("inf")
        return norm

    monkeypatch.setattr(optim.Optimizers, "step", overflowing_step)
    out = tmp_path / "run"
    assert main(ARGS + ["--output-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert "no longer finite at step 1" in err and "Traceback" not in err
    assert not (out / "final").exists() and not (out / "summary.json").exists()
    assert _steps_on_disk(out) == []


@pytest.fixture
def small_disk(tmp_path):
    """A real 24 MB filesystem (tmpfs) that fills up: needs root and mount rights, else skipped."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root and mount rights)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_really_full_disk_keeps_the_last_checkpoint_and_resumes(reference, small_disk, capsys):
    import subprocess

    out = small_disk / "run"  # a checkpoint is ~13 MB: the second one does not fit next to the first
    assert main(ARGS + ["--output-dir", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: could not write ") and "No space left on device" in err, err
    assert "Kept: the checkpoint of step 1" in err and "Traceback" not in err
    assert _steps_on_disk(out) == [1]
    subprocess.run(["mount", "-o", "remount,size=200m", str(small_disk)], check=True)  # space freed
    assert main(["--resume", str(out)]) == 0
    assert_same_run(reference, out)


def test_write_errors_hidden_by_torch_and_safetensors_come_back_as_os_errors(small_disk):
    """The libraries' own wrapping, on a real full disk (what the session then reports)."""
    import torch
    from safetensors.torch import save_file

    from fastzero.write_errors import as_os_error, torch_save

    big = {"x": torch.zeros(8 << 20)}  # 32 MB, more than the disk holds
    with pytest.raises(OSError) as info:
        torch_save(big, str(small_disk / "a.pt"))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(small_disk / "a.pt")
    (small_disk / "a.pt").unlink()
    with pytest.raises(OSError) as info, as_os_error(str(small_disk / "m")):
        save_file(big, str(small_disk / "m.safetensors"))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(small_disk / "m")
