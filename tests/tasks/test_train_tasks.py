"""End-to-end CPU runs of `python -m fastzero.train` beyond Countdown: the arithmetic task, the
README's own reward and own task (taken from the README verbatim), a hostile reward that cannot stall
a step, a reward that stalls the pool (the run stops with a checkpoint), and usage errors."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from fastzero.train import main

README = Path(__file__).resolve().parents[2] / "README.md"
SMALL = ["--preset", "tiny-direct", "--num-train", "300", "--num-test", "16", "--prompts-per-step", "4", "--samples-per-prompt", "4",
         "--mini-batch-size", "8", "--eval-every", "0", "--progress", "false", "--threads", "1", "--max-steps", "2"]
SEQUENCES = 16  # prompts x samples per step, and held-out problems


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _readme_section() -> str:
    text = README.read_text()
    start = text.index("## Your own task or reward")
    return text[start:text.index("\n## ", start + 1)]


def _readme_file(name: str) -> str:
    """The python block that the README introduces as `name`."""
    section = _readme_section()
    after = section[section.index(f"`{name}`"):]
    return re.search(r"```python\n(.*?)```", after, re.DOTALL).group(1)


def _readme_command(flag_value: str) -> list[str]:
    """The arguments of the README's `python -m fastzero.train` line that uses `flag_value`."""
    for line in re.findall(r"^python -m fastzero\.train (.*)$", _readme_section(), re.MULTILINE):
        if flag_value in line:
            return shlex.split(line)
    raise AssertionError(f"no README command with {flag_value}")


def test_arithmetic_task_end_to_end(tmp_path):
    out = tmp_path / "run"
    assert main(SMALL + ["--task", "arithmetic", "--output-dir", str(out)]) == 0
    rows = _lines(out / "metrics.jsonl")
    assert [r["step"] for r in rows if "reward/mean" in r] == [1, 2]
    assert all("reward/timeouts" not in r for r in rows)  # only a sandboxed reward can time out
    samples = _lines(out / "samples.jsonl")
    assert samples and set(samples[0]) >= {"question", "answer", "response", "reward"}
    from fastzero.tasks.arithmetic.checker import score
    for sample in samples:  # the logged reward is the checker's on the logged response
        assert sample["reward"] == pytest.approx(score(sample["response"], sample["answer"]))


def test_readme_reward_end_to_end(tmp_path, monkeypatch):
    (tmp_path / "myreward.py").write_text(_readme_file("myreward.py"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert main(_readme_command("myreward:reward") + SMALL + ["--output-dir", str(out)]) == 0
    rows = _lines(out / "metrics.jsonl")
    steps = [r for r in rows if "reward/mean" in r]
    assert len(steps) == 2 and all(r["reward/timeouts"] == r["reward/errors"] == 0 for r in steps)
    assert rows[-1]["eval/reward_timeouts"] == rows[-1]["eval/reward_errors"] == 0
    import myreward  # the same function called directly gives the rewards the run logged
    for sample in _lines(out / "samples.jsonl"):
        problem = {"question": sample["question"], "answer": sample["answer"]}
        assert sample["reward"] == pytest.approx(myreward.reward([sample["response"]], [problem])[0])


def test_readme_task_end_to_end(tmp_path, monkeypatch):
    (tmp_path / "mytask.py").write_text(_readme_file("mytask.py"))
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    assert main(_readme_command("mytask:make_task") + SMALL + ["--output-dir", str(out)]) == 0
    samples = _lines(out / "samples.jsonl")
    assert samples and set(samples[0]) >= {"x", "response", "reward"}
    import mytask
    task = mytask.make_task()
    for sample in samples:
        assert sample["reward"] == task.score_batch([sample["response"]], [{"x": sample["x"]}])[0]


def test_hostile_reward_cannot_stall_a_step(tmp_path):
    out = tmp_path / "run"
    args = ["--reward", "tests.tasks.hostile_rewards:always_hang", "--reward-timeout", "0.5", "--reward-workers", "2"]
    assert main(SMALL + args + ["--output-dir", str(out)]) == 0
    rows = _lines(out / "metrics.jsonl")
    steps = [r for r in rows if "reward/mean" in r]
    assert [r["reward/timeouts"] for r in steps] == [SEQUENCES, SEQUENCES]
    assert all(r["reward/errors"] == 0 and r["reward/mean"] == 0.0 for r in steps)
    assert rows[-1]["eval/reward_timeouts"] == SEQUENCES and rows[-1]["eval/accuracy"] == 0.0


def test_stalled_reward_stops_keeping_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    """The stall is mid-step (data and RNGs already moved on): that step is not saved, the last
    checkpoint is kept (a step-1 save of a half step 2 would resume differently)."""
    monkeypatch.setenv("FASTZERO_TEST_HANG_FLAG", str(tmp_path / "hang"))
    out = tmp_path / "run"
    args = ["--reward", "tests.tasks.hostile_rewards:hang_from_third_call", "--reward-workers", "1",
            "--reward-timeout", "0.5", "--reward-stall-seconds", "1.5", "--save-every", "1"]
    assert main(SMALL + args + ["--output-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert "--reward-stall-seconds" in err and "kept the checkpoint of step 1" in err
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-000001"]


@pytest.mark.parametrize("args,message", [
    (["--task", "nope"], "--task: 'nope' is not a built-in task"),
    (["--reward", "not-a-spec"], "--reward: 'not-a-spec' is not of the form"),
    (["--reward", "tests.tasks.no_such_module:f"], "--reward tests.tasks.no_such_module:f: no module named"),
    (["--task", "tests.tasks.user_task:not_a_task"], "lacks name, templates"),
    (["--reward-timeout", "0"], "--reward-timeout"),
    (["--task", "arithmetic", "--max-target", "10"], "--max-target"),
    (["--task", "tests.tasks.user_task:make_task", "--template", "compact"], "has no template 'compact'"),
])
def test_usage_errors_name_the_option(tmp_path, capsys, args, message):
    assert main(SMALL + args + ["--output-dir", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
