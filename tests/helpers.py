"""Helpers that several test modules share (importable as ``helpers``: pytest puts tests/
on the path, as for ``xvfb``)."""

from __future__ import annotations

from typing import Any

from core.checkpoints import CheckpointConfig

ENV = "cube-single-play-singletask-task2-v0"


def tiny_config(**overrides: Any) -> CheckpointConfig:
    """A hand-built ``CheckpointConfig``: cube-single task 2 (28-dim states, 5-dim actions),
    two hidden layers of 16, 4 flow steps, untrained; ``overrides`` replace any field."""
    values: dict[str, Any] = dict(
        env=ENV,
        dataset="cube-single-play-v0",
        task=2,
        obs_dim=28,
        action_dim=5,
        horizon=1,
        hidden=[16, 16],
        layer_norm=True,
        time_dim=16,
        q_ensemble=2,
        flow_steps=4,
        training_steps=0,
        data_fingerprint={},
    )
    values.update(overrides)
    return CheckpointConfig(**values)


def time_limit(env):
    """The env's gymnasium ``TimeLimit`` wrapper (its ``_max_episode_steps`` is the episode
    length; set on an outer wrapper, the attribute would change nothing)."""
    import gymnasium

    while not isinstance(env, gymnasium.wrappers.TimeLimit):
        env = env.env
    return env
