"""The trainer's view of rewards: the task's scorer, or a user reward in the sandbox, with counts."""
from fastzero.tasks.registry import resolve_task
from fastzero.tasks.sandbox import SandboxOptions
from fastzero.tasks.scoring import TaskScorer


def test_task_scorer_is_the_task_itself():
    task = resolve_task("arithmetic")
    problems = task.generate(20, seed=0)
    responses = [f"<answer>{p.answer + (i % 3 == 0)}</answer>" for i, p in enumerate(problems)]
    scorer = TaskScorer(task)
    scores = scorer(responses, problems)
    assert scores.rewards == task.score_batch(responses, problems) and not scores.counted
    assert scorer.correct_reward == task.correct_reward


def test_user_reward_runs_on_json_problems_with_counts():
    task = resolve_task("tests.tasks.user_task:make_task")
    messages = []
    scorer = TaskScorer(task, reward="tests.tasks.hostile_rewards:per_sample", correct_reward=2.0,
                        log=messages.append, sandbox=SandboxOptions(workers=1, timeout=1.0, per_sample=True))
    try:
        problems = task.generate(4, seed=0)
        scores = scorer(["ab", "raise", "nan", "abc"], problems)
        assert scores.rewards == [2.0, 0.0, 0.0, 3.0] and scorer.correct_reward == 2.0
        assert (scores.timeouts, scores.errors, scores.counted) == (0, 2, True)
        scorer(["raise"], problems[:1])
        assert len(messages) == 1 and "RuntimeError: reward failed on purpose" in messages[0]
    finally:
        scorer.close()
