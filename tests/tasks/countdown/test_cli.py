"""The countdown CLI under bad input and bad luck: hopeless generation requests, output that cannot
be written (up front or when the disk fills mid-write), and scores the trainer would refuse."""
from __future__ import annotations

import errno
import os

import pytest

from fastzero.tasks.countdown import problems as P
from fastzero.tasks.countdown.__main__ import main as cli_main
from fastzero.tasks.countdown.problems import load_problems
from tests._files import unwritable_folder

HOPELESS = ["--min-numbers", "6", "--max-numbers", "6", "--max-value", "1000000000", "--max-target", "1000000000"]


def test_hopeless_generation_shows_progress_then_stops_with_a_reason(tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    # One problem: the projected time grows with the draws, so it reports before it gives up.
    code = cli_main(["generate", "--n", "1", "--out", str(out), "--max-minutes", "0.1"] + HOPELESS)
    err = capsys.readouterr().err
    assert code == 1 and not out.exists()
    progress, *_, verdict = err.strip().split("\n")
    assert progress.startswith("6 numbers: 0/1 problems from ") and "none solvable yet" in progress
    assert verdict.startswith("error: stopped after") and "--max-numbers" in verdict and "--max-minutes" in verdict
    assert "Traceback" not in err


@pytest.mark.parametrize("where", ["read-only", "too-long", "under-a-file"])
def test_generate_out_that_cannot_be_written_is_one_line_and_exit_2(tmp_path, capsys, where):
    (tmp_path / "file").write_text("x")
    out = {"read-only": lambda: os.path.join(unwritable_folder(tmp_path), "p.jsonl"),
           "too-long": lambda: str(tmp_path / ("a" * 300 + ".jsonl")),
           "under-a-file": lambda: str(tmp_path / "file" / "sub" / "p.jsonl")}[where]()
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["generate", "--n", "5", "--out", out])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.strip().split("\n")[-1].startswith("python -m fastzero.tasks.countdown generate: error: --out: ")


def test_disk_full_while_writing_names_the_file_and_what_was_kept(tmp_path, capsys, monkeypatch):
    train, test = tmp_path / "train.parquet", tmp_path / "test.jsonl"

    def disk_full(problem, i):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(P, "_jsonl_line", disk_full)  # the .jsonl writer fails, the parquet one works
    code = cli_main(["generate", "--n", "20", "--out", str(train), "--test-n", "5", "--test-out", str(test)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err == f"error: --test-out: could not write {test}: No space left on device; {train} was written"
    assert len(load_problems(train)) == 20
    assert sorted(os.listdir(tmp_path)) == ["train.parquet"]  # no partial test file, no temp file


@pytest.mark.parametrize("flags, option", [
    (["--format-score", "nan"], "--format-score"), (["--correct-score", "inf"], "--correct-score"),
    (["--format-score", "-inf"], "--format-score"), (["--correct-score", "x"], "--correct-score"),
    (["--format-score", "1.5"], "--format-score"), (["--format-score", "1", "--correct-score", "1"], "--format-score"),
    (["--format-score", "-0.1"], "--format-score"),
])
def test_score_refuses_what_the_trainer_refuses(capsys, flags, option):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["score", "--numbers", "3", "7", "12", "--target", "22", *flags, "<answer>12+7+3</answer>"])
    assert exit_info.value.code == 2 and option in capsys.readouterr().err


def test_score_accepts_custom_scores_inside_the_rules(capsys):
    assert cli_main(["score", "--numbers", "3", "7", "--target", "5", "--format-score", "0",
                     "--correct-score", "2", "<answer>3+7</answer>"]) == 0
    assert float(capsys.readouterr().out) == 0.0
