"""Bad input to `python -m fastzero.train` is one line naming the user's option or file, exit 2,
before any work (no output directory is created): non-finite or out-of-range numbers on the command
line and in config files, malformed config files, damaged model weights, impossible backends, and
options a resumed run cannot change."""
from __future__ import annotations

import json
import os
import re

import pytest

from fastzero import config as C
from fastzero.presets import from_preset
from fastzero.train import main

FLOAT_OPTIONS = [name for name, (_, f) in C.FIELDS.items() if C.field_type(f) is float]
FIELD_NAMES = [f.name for _, f in C.FIELDS.values() if "_" in f.name] + [n for n in C.FIELDS if "_" in n]


def _refused(capsys, argv, tmp_path) -> str:
    out = tmp_path / "out"
    assert main(argv + ["--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists(), "work started before the error"
    text = re.sub(r"'[^']*'|/\S*", "", err)  # paths and quoted values may contain anything
    assert not [name for name in FIELD_NAMES if re.search(rf"(?<![-\w]){name}\b", text)], err  # options, not fields
    return err


@pytest.mark.parametrize("name", FLOAT_OPTIONS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_every_float_option_refuses_non_finite_values(capsys, tmp_path, name, value):
    flag = "--" + name.replace("_", "-")
    assert flag in _refused(capsys, [f"{flag}={value}"], tmp_path)  # "=": argparse takes -inf for a flag


@pytest.mark.parametrize("suffix, body", [
    (".toml", "lr = inf\n"), (".toml", "[algorithm]\nkl_coef = nan\n"), (".json", '{"temperature": Infinity}'),
    (".json", '{"rollout": {"temperature": NaN}}'), (".toml", "lr = true\n"),
])
def test_non_finite_values_in_config_files_are_refused_naming_file_and_option(capsys, tmp_path, suffix, body):
    path = tmp_path / f"c{suffix}"
    path.write_text(body)
    err = _refused(capsys, ["--config", str(path)], tmp_path)
    assert str(path) in err and re.search(r"--(lr|kl-coef|temperature)", err)


@pytest.mark.parametrize("flags, option", [
    (["--weight-decay", "-0.1"], "--weight-decay"), (["--correct-score", "0.05"], "--format-score"),
    (["--format-score", "-1"], "--format-score"), (["--lam", "2"], "--lam"), (["--clip-high", "-1"], "--clip-high"),
    (["--seed", str(2**70)], "--seed"), (["--seed", "-1"], "--seed"), (["--data-seed", str(2**40)], "--data-seed"),
    (["--max-steps", str(2**64)], "--max-steps"), (["--max-value", str(10**12)], "--max-value"),
    (["--attn-implementation", "flash_attention_2", "--device", "cpu"], "--attn-implementation"),
])
def test_out_of_range_values_name_the_option(capsys, tmp_path, flags, option):
    assert option in _refused(capsys, flags, tmp_path)


@pytest.mark.parametrize("suffix, body, expected", [
    (".json", "[1, 2]", "the top level must be a table of options, not a list"),
    (".json", '"lr"', "the top level must be a table of options, not a str"),
    (".json", '{"lr": 1e-4,\n "seed": }', "invalid JSON at line 2, column 10"),
    (".toml", "lr = 1e-4\nseed = = 3\n", "invalid TOML"),
    (".toml", "run = 5\n", "[run] must be a table of options, not a int"),
    (".json", '{"resume": "runs/x"}', "'resume' cannot be set in a config file; pass --resume"),
    (".json", '{"lr": [1]}', "--lr: [1] is not a valid float"),
    (".json", '{"model_path": 3}', "--model-path: 3 is not a valid str"),
])
def test_malformed_config_files_name_the_file_and_place(capsys, tmp_path, suffix, body, expected):
    path = tmp_path / f"c{suffix}"
    path.write_text(body)
    err = _refused(capsys, ["--config", str(path)], tmp_path)
    assert f"--config {path}" in err and expected in err, err
    if suffix == ".toml" and "invalid TOML" in expected:
        assert "line 2, column 8" in err


@pytest.fixture
def model_copy(tmp_path):
    import shutil

    from fastzero.config import EMBEDDED_MODEL, resolve_model_path
    copy = tmp_path / "model"
    shutil.copytree(resolve_model_path(EMBEDDED_MODEL), copy)
    return copy


@pytest.mark.parametrize("damage, reason", [
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "is truncated"),
    (lambda p: p.write_bytes(os.urandom(5000)), "not a safetensors file"),
    (lambda p: p.unlink(), "holds no weights (model.safetensors is missing)"),
])
def test_damaged_model_weights_name_the_file(capsys, tmp_path, model_copy, damage, reason):
    damage(model_copy / "model.safetensors")
    err = _refused(capsys, ["--model-path", str(model_copy)], tmp_path)
    assert err.startswith("error: --model-path: ") and reason in err


def _saved_run(tmp_path, checkpoint: bool = True) -> str:
    """A run directory: its config.json and (the options check only looks for it) a checkpoint."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(from_preset("tiny-direct").to_dict()))
    if checkpoint:
        (run / "checkpoints" / "step-000001").mkdir(parents=True)
    return str(run)


def test_a_run_without_checkpoint_is_restarted_and_any_option_may_change(tmp_path):
    from fastzero.train import config_from_args

    run = _saved_run(tmp_path, checkpoint=False)  # e.g. it failed on a bad --test-path before step 1
    config = config_from_args(["--resume", run, "--seed", "7", "--num-test", "10"])
    assert (config.get("seed"), config.get("num_test"), config.get("output_dir")) == (7, 10, run)


@pytest.mark.parametrize("flags, named", [
    (["--seed", "7"], ["--seed (saved 0, given 7)"]),
    (["--num-test", "10", "--max-value", "30", "--weight-decay", "0.1"], ["--num-test", "--max-value", "--weight-decay"]),
    (["--output-dir", "elsewhere"], ["--output-dir elsewhere cannot move it"]),
    (["--preset", "tiny-cpu"], ["--preset tiny-cpu: cannot be combined with --resume"]),
])
def test_resume_refuses_what_may_not_change_naming_each_option(capsys, tmp_path, flags, named):
    run = _saved_run(tmp_path)
    assert main(["--resume", run, *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(part in err for part in named), err


def test_resume_refuses_changes_through_a_config_file_too(capsys, tmp_path):
    run = _saved_run(tmp_path)
    path = tmp_path / "c.toml"
    path.write_text("[data]\ndata_seed = 5\n")
    assert main(["--resume", run, "--config", str(path)]) == 2
    assert "--data-seed (saved 1000, given 5)" in capsys.readouterr().err


def test_a_non_run_directory_is_refused_by_main(capsys, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(["--output-dir", str(mine)]) == 2
    assert "holds other files (notes.txt) and no FastZero run" in capsys.readouterr().err
    assert main(["--resume", str(mine)]) == 2
    assert "not a FastZero run directory" in capsys.readouterr().err
    assert os.listdir(mine) == ["notes.txt"]


@pytest.mark.parametrize("where", ["a file", "below a file"])
def test_an_output_dir_that_cannot_hold_a_run_is_one_line(capsys, tmp_path, where):
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if where == "a file" else tmp_path / "f" / "run"
    assert main(["--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --output-dir: ") and err.count("\n") == 1 and (tmp_path / "f").read_text() == "x"
