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


def nan_critic_checkpoint(path, flow_steps: int = 4, samples: int = 32):
    """Save, at ``path``, an untrained ``tiny_config`` checkpoint whose critic returns NaN
    everywhere (every parameter NaN, as after a diverged run), with a random dataset sample
    of ``samples`` rows; returns ``path``."""
    import numpy as np
    import torch

    from core.checkpoints import DatasetSample, save_checkpoint

    torch.manual_seed(0)
    config = tiny_config(flow_steps=flow_steps)
    critic = config.build_critic()
    with torch.no_grad():
        for p in critic.parameters():
            p.fill_(float("nan"))
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(samples, config.obs_dim)).astype(np.float32)
    actions = rng.uniform(-1, 1, (samples, config.action_dim)).astype(np.float32)
    sample = DatasetSample(obs, actions)
    save_checkpoint(path, config, config.build_policy(), critic, critic, sample)
    return path
