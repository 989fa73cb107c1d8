"""Guidance-weight sweeps: success rate and return per (estimator, weight), with 95% CIs.

Episodes run in batches of ``num_envs`` environments stepped together: every control step
makes one ``guided_sample`` call for all still-running envs of the batch. Episode ``i`` of a
sweep always starts from ``reset(env, seed + i)`` and envs draw their initial noise from a
generator seeded by the same index, so every (estimator, weight) cell sees the same start
states and, while actions agree, the same noise: cells differ only by the guidance.

With action chunking (horizon H) each sampled chunk is executed open loop: H env steps
before the next policy call (fewer if the episode ends inside the chunk).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.checkpoints import CheckpointConfig, check_env_dims
from core.files import atomic_write, write_json
from core.guidance import ESTIMATORS, QFn, VelocityFn, guided_sample
from core.manifold import DataManifold
from core.stats import mean_interval, wilson_interval


@dataclass
class Episodes:
    """Per-episode outcomes of one sweep cell (index ``i`` = episode with seed ``seed + i``).

    Attributes:
        success: ``[N]`` bool, task solved at the end.
        returns: ``[N]`` sum of rewards.
        lengths: ``[N]`` env steps taken.
        nonfinite_steps: policy calls in which a row's guidance went non-finite.
        actions: action chunks sampled (one per still-running env per policy call).
        off_manifold_actions: of those, how many lay off the data manifold (0 when no
            manifold was given).
        policy_time_s: wall time spent sampling actions (the batched ``guided_sample``
            calls, results on the CPU), without env steps.
    """

    success: np.ndarray
    returns: np.ndarray
    lengths: np.ndarray
    nonfinite_steps: int = 0
    actions: int = 0
    off_manifold_actions: int = 0
    policy_time_s: float = 0.0


@dataclass
class SweepPoint:
    """Summary of one (estimator, weight) cell.

    Attributes:
        success_ci, return_ci: 95% intervals (Wilson for success, normal for return).
        success_per_episode: 0/1 per episode, for paired comparisons across cells.
    """

    estimator: str
    weight: float
    episodes: int
    successes: int
    success_rate: float
    success_ci: tuple[float, float]
    return_mean: float
    return_ci: tuple[float, float]
    length_mean: float
    nonfinite_steps: int
    success_per_episode: list[int] = field(default_factory=list)


@dataclass
class EvalResult:
    """A whole sweep: settings, one ``SweepPoint`` per cell, and timing."""

    env: str
    episodes: int
    num_envs: int
    seed: int
    flow_steps: int
    horizon: int
    weights: list[float]
    estimators: list[str]
    points: list[SweepPoint]
    wall_time_s: float
    checkpoint: str | None = None
    training_steps: int | None = None

    def point(self, estimator: str, weight: float) -> SweepPoint:
        for p in self.points:
            if p.estimator == estimator and p.weight == weight:
                return p
        raise KeyError((estimator, weight))

    def best(self, estimator: str) -> SweepPoint:
        """The cell with the highest success rate (ties: the smaller weight)."""
        cells = [p for p in self.points if p.estimator == estimator]
        return max(cells, key=lambda p: (p.success_rate, -p.weight))

    def to_json(self) -> dict:
        data = asdict(self)
        data["summary"] = {
            est: {
                "success_at_0": self._rate_at_zero(est),
                "best_weight": self.best(est).weight,
                "best_success": self.best(est).success_rate,
                "best_success_ci": list(self.best(est).success_ci),
            }
            for est in self.estimators
        }
        return data

    def _rate_at_zero(self, estimator: str) -> float | None:
        cells = [p for p in self.points if p.estimator == estimator and p.weight == 0.0]
        return cells[0].success_rate if cells else None


def run_episodes(
    policy: VelocityFn,
    critic: QFn,
    make_env,
    reset,
    episodes: int,
    num_envs: int,
    seed: int,
    estimator: str = "qgf",
    weight: float = 0.0,
    horizon: int = 1,
    action_dim: int = 5,
    flow_steps: int = 10,
    device: str | torch.device = "cpu",
    envs: list | None = None,
    progress=None,
    manifold: DataManifold | None = None,
) -> Episodes:
    """Run ``episodes`` guided episodes, ``num_envs`` at a time.

    Args:
        policy, critic: ``guided_sample``'s velocity and aggregated Q (chunk-sized actions).
        make_env: ``() -> env``; called to fill ``envs`` up to ``num_envs``.
        reset: ``(env, seed) -> (obs [O], info)`` reproducible reset.
        episodes, num_envs, seed: episode ``i`` resets with seed ``seed + i``.
        estimator, weight: the guidance.
        horizon, action_dim: chunk length H and env action size; the policy returns
            ``H * action_dim`` dims, executed open loop.
        flow_steps: Euler steps T.
        device: where observations go for the policy.
        envs: envs to reuse (extended in place when there are fewer than ``num_envs``).
        progress: optional tqdm bar, advanced by one per finished episode.
        manifold: when given, every executed chunk is checked against the data (this
            draws no random numbers, so the episodes are the same with or without it).

    Returns:
        ``Episodes`` in episode order.
    """
    envs = envs if envs is not None else []
    while len(envs) < min(num_envs, episodes):
        envs.append(make_env())
    success = np.zeros(episodes, bool)
    returns = np.zeros(episodes)
    lengths = np.zeros(episodes, int)
    nonfinite = sampled = off = 0
    policy_time = 0.0
    chunk = horizon * action_dim
    for first in range(0, episodes, num_envs):
        ids = list(range(first, min(first + num_envs, episodes)))
        obs = np.stack([reset(envs[j], seed + i)[0] for j, i in enumerate(ids)])
        # One noise stream per episode, independent of the weight and of the other envs.
        gens = [torch.Generator().manual_seed(seed + i) for i in ids]
        active = np.ones(len(ids), bool)
        while active.any():
            rows = np.flatnonzero(active)
            noise = torch.stack([torch.randn(chunk, generator=gens[r]) for r in rows])
            obs_t = torch.as_tensor(obs[rows], dtype=torch.float32, device=device)
            started = time.perf_counter()
            trace = guided_sample(
                policy,
                critic,
                obs_t,
                estimator=estimator,
                weight=weight,
                steps=flow_steps,
                noise=noise.to(device),
            )
            actions = trace.actions.detach().cpu().numpy().reshape(len(rows), horizon, action_dim)
            policy_time += time.perf_counter() - started
            nonfinite += int(trace.nonfinite.sum())
            sampled += len(rows)
            if manifold is not None:
                off += int(manifold.off_manifold(obs_t, trace.actions).sum())
            for k, r in enumerate(rows):
                env, i = envs[r], ids[r]
                for a in actions[k]:
                    ob, reward, terminated, truncated, info = env.step(a)
                    obs[r] = ob
                    returns[i] += reward
                    lengths[i] += 1
                    if terminated or truncated:
                        success[i] = bool(info.get("success", False))
                        active[r] = False
                        if progress is not None:
                            progress.update(1)
                        break
    return Episodes(success, returns, lengths, nonfinite, sampled, off, policy_time)


def summarize(estimator: str, weight: float, ep: Episodes) -> SweepPoint:
    n, k = len(ep.success), int(ep.success.sum())
    return SweepPoint(
        estimator=estimator,
        weight=float(weight),
        episodes=n,
        successes=k,
        success_rate=k / n if n else float("nan"),
        success_ci=wilson_interval(k, n),
        return_mean=float(ep.returns.mean()),
        return_ci=mean_interval(ep.returns),
        length_mean=float(ep.lengths.mean()),
        nonfinite_steps=ep.nonfinite_steps,
        success_per_episode=[int(s) for s in ep.success],
    )


def evaluate(
    policy: VelocityFn,
    critic: QFn,
    config: CheckpointConfig,
    weights: Sequence[float] = (0.0, 0.01, 0.03, 0.1),
    estimators: Sequence[str] = ("qgf",),
    episodes: int = 50,
    num_envs: int = 25,
    seed: int = 0,
    device: str | torch.device = "cpu",
    env: str | None = None,
    progress: bool = True,
    max_episode_steps: int | None = None,
) -> EvalResult:
    """Sweep guidance weights and estimators on a checkpoint's env.

    Args:
        policy, critic: from ``load_checkpoint`` (or the trainer's live networks).
        config: the checkpoint's config (env, dims, horizon, flow steps).
        weights, estimators: the grid; weight 0 is computed once per estimator (it is plain
            BC for every estimator, but it is kept per estimator so each curve starts there).
        episodes, num_envs, seed: see ``run_episodes``.
        device: the networks' device.
        env: evaluate on another env name than the checkpoint's (same dims required).
        progress: tqdm bar over episodes.
        max_episode_steps: shorten episodes (tests); default is the env's own limit.

    Returns:
        ``EvalResult`` with one point per (estimator, weight) in grid order.
    """
    from tqdm import tqdm

    from core.envs import make_env, reset

    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown:
        raise ValueError(f"unknown estimator(s) {unknown}; registered: {sorted(ESTIMATORS)}")
    env_name = env or config.env
    kwargs = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}

    def new_env():
        return make_env(env_name, **kwargs)

    envs = [new_env()]
    ob, _ = reset(envs[0], seed)
    check_env_dims(config, len(ob), int(np.prod(envs[0].action_space.shape)), env_name)

    start = time.perf_counter()
    points = []
    total = episodes * len(weights) * len(estimators)
    with tqdm(total=total, desc=f"eval {env_name}", unit="ep", disable=not progress) as bar:
        for est in estimators:
            for w in weights:
                bar.set_postfix(estimator=est, weight=w)
                ep = run_episodes(
                    policy,
                    critic,
                    new_env,
                    reset,
                    episodes,
                    num_envs,
                    seed,
                    estimator=est,
                    weight=float(w),
                    horizon=config.horizon,
                    action_dim=config.action_dim,
                    flow_steps=config.flow_steps,
                    device=device,
                    envs=envs,
                    progress=bar,
                )
                points.append(summarize(est, w, ep))
                bar.write(
                    f"{est} w={w:g}: success {points[-1].successes}/{episodes}, "
                    f"return {points[-1].return_mean:.1f}"
                )
    for e in envs:
        e.close()
    return EvalResult(
        env=env_name,
        episodes=episodes,
        num_envs=num_envs,
        seed=seed,
        flow_steps=config.flow_steps,
        horizon=config.horizon,
        weights=[float(w) for w in weights],
        estimators=list(estimators),
        points=points,
        wall_time_s=round(time.perf_counter() - start, 1),
        training_steps=config.training_steps,
    )


def plot_sweep(result: EvalResult, path: str | os.PathLike) -> Path:
    """Success rate (with Wilson 95% band) and return against guidance weight, per estimator.

    Weight 0 is drawn on a symlog axis so BC sits at the left edge of the log-spaced sweep.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_s, ax_r) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    positive = [w for w in result.weights if w > 0]
    linthresh = min(positive) if positive else 1.0
    for est in result.estimators:
        cells = sorted((p for p in result.points if p.estimator == est), key=lambda p: p.weight)
        w = [p.weight for p in cells]
        ax_s.plot(w, [100 * p.success_rate for p in cells], "o-", label=est)
        ax_s.fill_between(
            w,
            [100 * p.success_ci[0] for p in cells],
            [100 * p.success_ci[1] for p in cells],
            alpha=0.2,
        )
        ax_r.plot(w, [p.return_mean for p in cells], "o-", label=est)
        ax_r.fill_between(
            w, [p.return_ci[0] for p in cells], [p.return_ci[1] for p in cells], alpha=0.2
        )
    for ax, label in ((ax_s, "success rate (%)"), (ax_r, "return")):
        ax.set_xscale("symlog", linthresh=linthresh)
        # A tick at every weight evaluated (symlog's own ticks may label only one of two).
        weights = sorted(set(result.weights))
        ax.set_xticks(weights, [f"{w:g}" for w in weights])
        ax.set_xlabel("guidance weight w")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    ax_s.set_ylim(-2, 102)
    steps = f", {result.training_steps} training steps" if result.training_steps else ""
    fig.suptitle(f"{result.env}: {result.episodes} episodes per point{steps} (95% CI)")
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    finally:
        plt.close(fig)


def write_result(result: EvalResult, out: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``eval.json`` and ``eval.png`` into directory ``out`` (atomically)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "eval.json", result.to_json())
    return out / "eval.json", plot_sweep(result, out / "eval.png")
