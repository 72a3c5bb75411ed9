"""fastzero.resume_rules: what may change on --resume, and refusals that name every option."""
from __future__ import annotations

import pytest

from fastzero.resume_rules import MAY_CHANGE, check_config_file_keys, check_resume, refused_changes

SAVED = {"max_steps": 300, "seed": 0, "lr": 1e-4, "num_test": 500, "max_value": 20, "eval_every": 50,
         "threads": 0, "progress": True, "price_per_hour": 0.0, "output_dir": "runs/a", "resume": None}


def test_options_that_may_change_pass_and_unchanged_values_are_not_changes():
    given = {"max_steps": 600, "time_limit_minutes": 0.0, "eval_every": 10, "save_every": 5, "threads": 1,
             "progress": False, "price_per_hour": 2.5, "seed": 0, "lr": 1e-5}
    assert refused_changes(SAVED, given) == []
    check_resume(SAVED, {**given, "output_dir": "runs/a/"}, resume_dir="runs/a")


def test_every_refused_option_is_named_with_both_values():
    with pytest.raises(ValueError) as info:
        check_resume(SAVED, {"seed": 1, "num_test": 100, "max_value": 50, "max_steps": 10}, resume_dir="runs/a")
    message = str(info.value)
    for part in ("--seed (saved 0, given 1)", "--num-test (saved 500, given 100)", "--max-value (saved 20, given 50)"):
        assert part in message
    assert "--max-steps (" not in message and "--max-steps" in message  # named only among the allowed
    assert "\n" not in message


def test_a_decaying_learning_rate_fixes_the_run_length():
    decaying = {**SAVED, "lr_schedule": "cosine"}
    with pytest.raises(ValueError, match=r"--max-steps \(saved 300, given 600; --lr-schedule cosine decays over it\)"):
        check_resume(decaying, {"max_steps": 600}, resume_dir="runs/a")
    check_resume(decaying, {"max_steps": 300, "time_limit_minutes": 30.0}, resume_dir="runs/a")  # same length: fine


def test_resume_into_another_output_dir_is_refused():
    with pytest.raises(ValueError, match="--output-dir runs/b cannot move it"):
        check_resume(SAVED, {"output_dir": "runs/b"}, resume_dir="runs/a")


def test_resume_cannot_come_from_a_config_file():
    check_config_file_keys(["lr", "max_steps"], "c.toml")
    with pytest.raises(ValueError, match=r"--config c.toml: 'resume' cannot be set in a config file; pass --resume"):
        check_config_file_keys(["lr", "resume"], "c.toml")


def test_the_allowed_list_leaves_out_everything_that_shapes_the_run():
    for name in ("seed", "data_seed", "weight_decay", "num_test", "train_path", "algorithm", "model_path", "device",
                 "micro_batch_tokens", "mini_batch_size", "temperature"):
        assert name not in MAY_CHANGE
