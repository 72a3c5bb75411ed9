"""The task protocol: the registry and specs, the split (never overlapping), and a user's own task."""
import json

import pytest

from fastzero.tasks.base import check_task, make_splits
from fastzero.tasks.registry import BUILTIN_TASKS, resolve_task
from fastzero.tasks.spec import check_spec, load_object

SMALL = {"countdown": dict(min_numbers=3, max_numbers=3, max_value=20, max_target=50), "arithmetic": {}}


def test_default_is_countdown_and_builtins_resolve():
    assert resolve_task().name == "countdown"
    for name in BUILTIN_TASKS:
        task = check_task(resolve_task(name), name)
        assert task.name == name and task.correct_reward == 1.0


@pytest.mark.parametrize("name", list(BUILTIN_TASKS))
def test_generated_splits_are_disjoint_reproducible_and_json(name):
    task = resolve_task(name, **SMALL[name])
    splits = make_splits(task, num_train=400, num_test=100, seed=7)
    train_keys, test_keys = {task.key(p) for p in splits.train}, {task.key(p) for p in splits.test}
    assert len(train_keys) == 400 and len(test_keys) == 100 and not train_keys & test_keys
    again = make_splits(task, num_train=50, num_test=100, seed=7)
    assert again.test == splits.test  # the held-out split does not depend on the training size
    for p in splits.test[:20]:
        assert json.loads(json.dumps(task.to_json(p))) == task.to_json(p)
        assert task.render_prompt(p, "base").endswith("<think>")


def test_loaded_splits_drop_held_out_keys(tmp_path):
    from fastzero.tasks.arithmetic.gsm8k import save_gsm8k

    task = resolve_task("arithmetic")
    problems = task.generate(30, seed=1)
    save_gsm8k(problems[:20], tmp_path / "train.jsonl")
    save_gsm8k(problems[10:30], tmp_path / "test.jsonl")  # overlaps train in problems 10..19
    splits = make_splits(task, num_train=0, num_test=15, seed=0, train_path=str(tmp_path / "train.jsonl"),
                         test_path=str(tmp_path / "test.jsonl"))
    assert splits.test == problems[10:25]
    assert splits.train == problems[:10]


def test_split_errors_name_the_option():
    task = resolve_task("countdown", min_numbers=1, max_numbers=1, max_value=3, max_target=3)
    with pytest.raises(ValueError, match="--num-train 50"):
        make_splits(task, num_train=50, num_test=2, seed=0)


def test_user_task_by_spec():
    task = resolve_task("tests.tasks.user_task:make_task")
    splits = make_splits(task, num_train=10, num_test=3, seed=0)
    assert [p["n"] for p in splits.test] == [0, 1, 2] and [p["n"] for p in splits.train] == list(range(3, 10))
    assert task.score_batch(["<answer>zero</answer>", "x"], splits.test[:2]) == [1.0, 0.0]


@pytest.mark.parametrize("spec,match", [
    ("nonsense", "not a built-in task"),
    ("tests.tasks.no_such_module:make", "no module named 'tests.tasks.no_such_module'"),
    ("tests.tasks.user_task:missing", "has no attribute 'missing'"),
    ("tests.tasks.user_task:WORDS", "is not callable"),
    ("tests.tasks.user_task:not_a_task", "lacks name, templates"),
])
def test_bad_task_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        resolve_task(spec)


def test_builtin_options_are_checked():
    with pytest.raises(ValueError, match="--task countdown"):
        resolve_task("countdown", no_such_option=1)
    with pytest.raises(ValueError, match="max_answer"):
        resolve_task("arithmetic", max_value=50, max_answer=10)


def test_spec_shape():
    assert check_spec("a.b:c.d", "--reward") == ("a.b", "c.d")
    for bad in ("a.b", "a:b:c", ":f", "a:", "a b:c", "1a:f", "a.:f"):
        with pytest.raises(ValueError, match="--reward"):
            check_spec(bad, "--reward")
    assert load_object("json:dumps", "--reward") is json.dumps


@pytest.mark.parametrize("name", list(BUILTIN_TASKS))
def test_instruct_template_goes_through_the_chat_template(name):
    from transformers import AutoTokenizer

    from fastzero.config import EMBEDDED_MODEL, resolve_model_path
    from fastzero.tasks.templates import ASSISTANT_PREFILL, SYSTEM

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(EMBEDDED_MODEL), local_files_only=True)
    task = resolve_task(name, **SMALL[name])
    problem = task.generate(1, seed=0)[0]
    with pytest.raises(ValueError, match="chat template"):
        task.render_prompt(problem, "instruct", tokenizer)  # the tiny tokenizer has none
    tokenizer.chat_template = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
                               "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    text = task.render_prompt(problem, "instruct", tokenizer)
    request = task.render_prompt(problem, "base").split("\nUser: ", 1)[1].split("\nAssistant:", 1)[0]
    assert text == f"<|system|>{SYSTEM}\n<|user|>{request}\n<|assistant|>{ASSISTANT_PREFILL}"
