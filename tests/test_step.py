"""core.step: the one rule for a step's noise, guided + ghost sample and effector paths."""

import numpy as np
import pytest
import torch

from core import envs
from core.guidance import guided_sample
from core.models import Critic, VelocityField
from core.step import (
    StepSettings,
    effector_paths,
    executed_candidate,
    q_along_denoising,
    sample_step,
    step_noise,
)

ENV = "cube-single-play-singletask-task2-v0"
T, N = 3, 4


@pytest.fixture(scope="module")
def nets() -> tuple[VelocityField, Critic]:
    torch.manual_seed(0)
    policy = VelocityField(28, 5, hidden=(32, 32)).eval().requires_grad_(False)
    critic = Critic(28, 5, hidden=(32, 32)).eval().requires_grad_(False)
    return policy, critic


@pytest.fixture(scope="module")
def env():
    e = envs.make_env(ENV, seed=0)
    envs.reset(e, seed=0)
    yield e
    e.close()


def test_noise_is_a_function_of_seed_and_step_only() -> None:
    a = step_noise(3, 7, candidates=4, action_dim=5)
    assert a.shape == (4, 5)
    assert torch.equal(a, step_noise(3, 7, 4, 5))
    assert not torch.equal(a, step_noise(3, 8, 4, 5))
    assert not torch.equal(a, step_noise(4, 7, 4, 5))


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"estimator": "nope"}, "unknown estimator"),
        ({"steps": 0}, "steps T"),
        ({"candidates": 65}, "candidates N"),
        ({"weight": -1.0}, "weight"),
        ({"weight": float("nan")}, "weight"),
    ],
)
def test_settings_name_the_bad_one(bad: dict, match: str) -> None:
    StepSettings().validate()
    with pytest.raises(ValueError, match=match):
        StepSettings(**bad).validate()


@pytest.mark.parametrize("estimator", ["qgf", "ood"])
def test_guided_and_ghost_rows_are_one_call_and_the_ghost_is_weight_0(nets, estimator) -> None:
    policy, critic = nets
    obs = torch.randn(28, generator=torch.Generator().manual_seed(1))
    noise = step_noise(0, 0, N, 5)
    s = StepSettings(weight=0.5, estimator=estimator, steps=T, candidates=N)
    draw = sample_step(policy, critic, obs, s, noise, q_path=True)
    unguided = guided_sample(policy, critic, obs[None], estimator, 0.0, T, noise, best_of=N)
    assert torch.equal(draw.ghost.final, unguided.final)
    assert not torch.equal(draw.guided.final, draw.ghost.final)
    assert draw.executed == 0
    assert draw.q_guided.shape == draw.q_ghost.shape == (T + 1, N)
    assert torch.allclose(draw.q_guided[-1], draw.guided.q_final)
    expected = q_along_denoising(critic, obs, draw.guided)
    assert torch.allclose(draw.q_guided, expected, atol=1e-5)
    alone = sample_step(policy, critic, obs, s, noise, ghost=False)
    assert alone.ghost is None and alone.guided.a_t.shape == draw.guided.a_t.shape


def test_pick_best_executes_the_argmax_of_q(nets) -> None:
    policy, critic = nets
    obs = torch.randn(28, generator=torch.Generator().manual_seed(2))
    noise = step_noise(0, 0, N, 5)
    draw = sample_step(policy, critic, obs, StepSettings(steps=T, pick_best=True), noise)
    assert draw.executed == int(torch.argmax(draw.guided.q_final))
    assert executed_candidate(draw.guided, False) == 0


def test_effector_paths_map_every_candidate_as_the_env_does(env) -> None:
    rng = np.random.default_rng(0)
    h = 2
    a_hat = rng.uniform(-1, 1, size=(T, N, 5 * h))
    final = rng.uniform(-1, 1, size=(N, 5 * h))
    ghost = rng.uniform(-1, 1, size=(N, 5 * h))
    paths = effector_paths(env, a_hat, final, ghost)
    assert paths.denoise.shape == (T, N, h, 3)
    assert paths.final.shape == paths.ghost.shape == (N, h, 3)
    assert paths.gripper.shape == (N, h)
    assert np.array_equal(paths.origin, envs.effector_state(env)[0])
    for j in range(N):
        one = envs.action_to_ee_targets(env, final[j].reshape(h, 5))
        assert np.allclose(paths.final[j], one.xyz)
        assert np.allclose(
            paths.ghost[j], envs.action_to_ee_targets(env, ghost[j].reshape(h, 5)).xyz
        )
        assert np.allclose(
            paths.denoise[1, j], envs.action_to_ee_targets(env, a_hat[1, j].reshape(h, 5)).xyz
        )
    overlay = paths.overlay(executed=2)
    assert np.array_equal(overlay.gripper, paths.gripper[2])
    start = (np.array([0.5, 0.0, 0.3]), 0.5)
    moved = effector_paths(env, a_hat, final, start=start)
    assert moved.ghost is None and np.array_equal(moved.origin, start[0])
