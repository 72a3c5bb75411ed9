"""The one config definition: presets, files, flags, validation that names the option at fault."""
from __future__ import annotations

import json

import pytest

from fastzero import config as C
from fastzero.presets import PRESETS, from_preset
from fastzero.train import build_parser, config_from_args, main


def test_every_preset_validates_once_given_a_model():
    for name in PRESETS:
        cfg = from_preset(name)
        if cfg.model.model_path == "":
            with pytest.raises(ValueError, match="--model-path"):
                C.validate(cfg)
            cfg.set("model_path", "/models/qwen")
        C.validate(cfg)


def test_tinyzero_recipe_in_qwen_presets():
    cfg = from_preset("qwen2.5-3b")
    assert cfg.algorithm.estimator == "ppo" and cfg.algorithm.gamma == 1.0 and cfg.algorithm.lam == 1.0
    assert cfg.optimizer.lr == 1e-6 and cfg.optimizer.critic_lr == 1e-5
    assert cfg.rollout.prompts_per_step == 256 and cfg.rollout.max_new_tokens == 1024
    assert cfg.algorithm.kl_coef == 0.001 and cfg.algorithm.entropy_coef == 0.001
    grpo = from_preset("qwen2.5-3b-grpo")
    assert grpo.algorithm.estimator == "grpo" and grpo.rollout.samples_per_prompt >= 2


def test_help_lists_every_option_with_its_default():
    text = build_parser().format_help()
    for name in C.FIELDS:
        assert "--" + name.replace("_", "-") in text
    assert "--max-steps" in text and "(default: 300)" in text.replace("\n", " ").replace("  ", " ")


def test_flags_override_preset_and_file(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"optimizer": {"lr": 3e-5}, "max_steps": 7}))
    cfg = config_from_args(["--config", str(path), "--max-steps", "9"])
    assert cfg.optimizer.lr == 3e-5 and cfg.run.max_steps == 9
    toml = tmp_path / "cfg.toml"
    toml.write_text('algorithm = "rloo"\n[rollout]\nsamples_per_prompt = 4\n')
    cfg = config_from_args(["--config", str(toml)])
    assert cfg.algorithm.estimator == "rloo" and cfg.rollout.samples_per_prompt == 4


@pytest.mark.parametrize("argv, option", [
    (["--max-steps", "-1"], "--max-steps"),
    (["--max-steps", "ten"], "--max-steps"),
    (["--algorithm", "a2c"], "--algorithm"),
    (["--temperature", "0"], "--temperature"),
    (["--top-p", "1.5"], "--top-p"),
    (["--max-numbers", "7"], "--max-numbers"),
    (["--min-value", "50", "--max-value", "10"], "--min-value"),
    (["--samples-per-prompt", "1"], "--samples-per-prompt"),
    (["--mini-batch-size", "100"], "--mini-batch-size"),
    (["--kl-in-reward", "true"], "--kl-in-reward"),
    (["--dual-clip", "0.5"], "--dual-clip"),
    (["--format-score", "2"], "--format-score"),
])
def test_invalid_values_fail_naming_the_option(argv, option):
    with pytest.raises(ValueError, match=option):
        config_from_args(argv)


def test_bad_config_file_is_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"learning_rate": 1}))
    with pytest.raises(ValueError, match="learning_rate"):
        config_from_args(["--config", str(bad)])
    with pytest.raises(FileNotFoundError, match="--config"):
        config_from_args(["--config", str(tmp_path / "missing.json")])


def test_main_reports_errors_before_work(capsys, tmp_path):
    assert main(["--lr", "-1", "--output-dir", str(tmp_path / "run")]) == 2
    assert "--lr" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert main(["--model-path", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path / "run")]) == 2
    assert "--model-path" in capsys.readouterr().err
    used = tmp_path / "used"
    used.mkdir()
    (used / "metrics.jsonl").write_text('{"step": 0}\n')
    (used / "config.json").write_text(json.dumps(C.Config().to_dict()))  # a run's directory
    assert main(["--output-dir", str(used)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (used / "metrics.jsonl").read_text() == '{"step": 0}\n'  # nothing overwritten


def test_readme_lists_every_option_with_its_current_default():
    import os
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    assert C.options_markdown() in readme, "regenerate the README's options table from config.options_markdown()"
