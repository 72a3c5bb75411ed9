"""fastzero.state.TrainState: what a checkpoint saves round-trips, and foreign state is refused."""
from __future__ import annotations

import pytest

from fastzero.state import TrainState


def test_round_trip_through_a_dict():
    state = TrainState(step=7, tokens=123, optimizer_steps=14, bad_steps=1, bad_in_a_row=0,
                       phase_seconds={"rollout": 1.5}, eval_start={"eval/accuracy": 0.25},
                       wall_seconds=9.0, data={"epoch": 1, "index": 32}, rng={"python": None})
    assert TrainState.from_dict(state.to_dict()) == state


def test_older_checkpoints_load_and_unknown_entries_are_refused():
    legacy = {"step": 3, "tokens": 10, "wall_seconds": 2.0, "wall_before_resume": 1.0}
    assert TrainState.from_dict(legacy) == TrainState(step=3, tokens=10, wall_seconds=2.0)
    with pytest.raises(ValueError, match="unknown entries"):
        TrainState.from_dict({"step": 1, "learning_rate": 0.1})
