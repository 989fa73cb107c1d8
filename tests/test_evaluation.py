import json

import numpy as np
import pytest
import torch
from helpers import tiny_config
from torch import nn

from core.checkpoints import DatasetSample, load_checkpoint, save_checkpoint
from core.evaluation import (
    Episodes,
    EvalResult,
    plot_sweep,
    run_episodes,
    summarize,
    write_result,
)
from core.stats import mean_interval, wilson_interval


def test_wilson_interval_known_values():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(50, 50) == pytest.approx((0.9287, 1.0), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_mean_interval():
    lo, hi = mean_interval([1.0, 2.0, 3.0])
    assert (lo + hi) / 2 == pytest.approx(2.0) and hi - lo == pytest.approx(2 * 1.959964 / 3**0.5)
    assert mean_interval([4.0]) == (4.0, 4.0)


class LineEnv:
    """A 1-D task: the state moves by the first action dim; success at x >= 3.

    Reward is -1 per step until success; an episode lasts at most ``limit`` steps.
    """

    def __init__(self, limit: int = 8) -> None:
        self.limit = limit
        self.calls: list[np.ndarray] = []

    def reset_to(self, seed: int):
        self.x, self.t = float(seed % 2), 0  # odd seeds start closer to the goal
        return np.array([self.x, 0.0], np.float32), {}

    def step(self, action):
        self.calls.append(np.asarray(action))
        self.x += float(action[0])
        self.t += 1
        success = self.x >= 3
        obs = np.array([self.x, self.t], np.float32)
        return obs, 0.0 if success else -1.0, success, self.t >= self.limit, {"success": success}


class ConstantVelocity(nn.Module):
    """A flow policy whose samples are ``noise + 1`` (then clipped): it pushes right."""

    def __init__(self, action_dim: int) -> None:
        super().__init__()
        self.action_dim = action_dim

    def forward(self, obs, a_t, t):
        return torch.ones_like(a_t)


def q_right(obs, a):
    """Q rewards pushing right with every dimension, so guidance pushes right harder."""
    return a.sum(-1)


def run_line(weight: float, horizon: int = 1, episodes: int = 5, num_envs: int = 2):
    envs: list[LineEnv] = []
    eps = run_episodes(
        ConstantVelocity(horizon * 2),
        q_right,
        make_env=LineEnv,
        reset=lambda env, seed: env.reset_to(seed),
        episodes=episodes,
        num_envs=num_envs,
        seed=0,
        weight=weight,
        horizon=horizon,
        action_dim=2,
        flow_steps=4,
        envs=envs,
    )
    return eps, envs


def test_batched_episodes_are_reproducible_and_guidance_helps():
    bc, envs = run_line(0.0)
    assert len(envs) == 2  # 5 episodes ran on 2 envs, stepped together
    again, _ = run_line(0.0)
    assert np.array_equal(bc.returns, again.returns) and np.array_equal(bc.success, again.success)
    guided, _ = run_line(5.0)
    assert guided.lengths.sum() < bc.lengths.sum()
    assert guided.success.sum() >= bc.success.sum() and guided.success.all()
    point = summarize("qgf", 5.0, guided)
    assert point.successes == 5 and point.success_ci == pytest.approx(wilson_interval(5, 5))
    assert point.success_per_episode == [1] * 5


def test_chunks_are_executed_open_loop():
    eps, envs = run_line(0.0, horizon=3, episodes=2, num_envs=2)
    # Each policy call yields 3 actions of 2 dims, all stepped before the next call.
    assert all(np.asarray(c).shape == (2,) for e in envs for c in e.calls)
    assert eps.lengths.tolist() == [len(e.calls) for e in envs]


def fake_result() -> EvalResult:
    rng = np.random.default_rng(0)
    points = []
    for est in ("qgf", "ood"):
        for w, p in ((0.0, 0.1), (0.01, 0.5), (0.1, 0.3)):
            success = rng.random(20) < p
            eps = Episodes(success, rng.normal(-100, 10, 20), np.full(20, 200))
            points.append(summarize(est, w, eps))
    return EvalResult(
        env="cube-single-play-singletask-task2-v0",
        episodes=20,
        num_envs=10,
        seed=0,
        flow_steps=10,
        horizon=1,
        weights=[0.0, 0.01, 0.1],
        estimators=["qgf", "ood"],
        points=points,
        wall_time_s=1.0,
    )


def test_result_json_and_plot(tmp_path):
    result = fake_result()
    json_path, png_path = write_result(result, tmp_path)
    data = json.loads(json_path.read_text())
    best = result.best("qgf")
    assert data["summary"]["qgf"]["best_weight"] == best.weight
    assert data["summary"]["qgf"]["success_at_0"] == result.point("qgf", 0.0).success_rate
    assert len(data["points"]) == 6
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_sweep(result, tmp_path / "again.png").stat().st_size > 1000


@pytest.mark.slow
def test_evaluate_a_checkpoint_on_the_real_env(tmp_path):
    from core.evaluation import evaluate

    torch.manual_seed(0)
    config = tiny_config()
    p, c = config.build_policy(), config.build_critic()
    sample = DatasetSample(np.zeros((2, 28), np.float32), np.zeros((2, 5), np.float32))
    save_checkpoint(tmp_path / "ck", config, p, c, c, sample)
    policy, critic, config = load_checkpoint(tmp_path / "ck")
    kwargs = dict(episodes=3, num_envs=2, seed=7, progress=False, max_episode_steps=6)
    result = evaluate(policy, critic, config, weights=[0.0, 0.1], **kwargs)
    assert [(p.estimator, p.weight) for p in result.points] == [("qgf", 0.0), ("qgf", 0.1)]
    for point in result.points:
        assert point.episodes == 3 and point.length_mean == 6  # untrained: never succeeds
        assert point.return_mean == pytest.approx(-6.0)
    again = evaluate(policy, critic, config, weights=[0.0], **kwargs)
    assert again.points[0].success_per_episode == result.points[0].success_per_episode
    with pytest.raises(ValueError, match="unknown estimator"):
        evaluate(policy, critic, config, estimators=["nope"], **kwargs)


def q_nan(obs, a):
    """A diverged critic: NaN everywhere."""
    return a.sum(-1) * float("nan")


@pytest.mark.parametrize(
    ("critic", "weight", "flagged"), [(q_right, 1e3, False), (q_nan, 0.1, True)]
)
def test_extreme_weights_and_a_nan_critic_give_finite_actions_and_are_counted(
    critic, weight, flagged
):
    envs: list[LineEnv] = []
    eps = run_episodes(
        ConstantVelocity(2),
        critic,
        make_env=LineEnv,
        reset=lambda env, seed: env.reset_to(seed),
        episodes=3,
        num_envs=2,
        seed=0,
        weight=weight,
        action_dim=2,
        flow_steps=4,
        envs=envs,
    )
    calls = np.stack([c for e in envs for c in e.calls])
    assert np.isfinite(calls).all() and len(calls) == eps.lengths.sum()
    assert np.abs(calls).max() <= 1.0  # clipped to the action box
    assert (eps.nonfinite_steps == eps.actions) if flagged else eps.nonfinite_steps == 0
    assert summarize("qgf", weight, eps).nonfinite_steps == eps.nonfinite_steps
