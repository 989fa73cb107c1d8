"""The estimator report behind ``qgf diagnose``: the paper's estimator analyses on a checkpoint.

Over ``S`` states from the checkpoint's dataset sample, from the same initial noise for every
estimator, at one guidance weight:

- Fig. 3, noise sensitivity: cosine similarity of ``G(s, a_t)`` and ``G(s, a_t + eps)`` per
  denoising step and estimator (``core.diagnostics.noise_sensitivity``), every estimator
  probed at the same points: the iterates of the unguided denoising of each state's noise.
- Fig. 4, Q optimisation: Q of each estimator's final action against the best-of-N oracle
  (unguided sampling, N candidates, argmax Q), and the oracle's Q as a function of N
  (``core.diagnostics.q_optimisation``); FLOPs per action (``flops_per_action``).
- Fig. 17, distance to the data: distance of each final action to the oracle's action, and
  to the data (``core.manifold``: nearest dataset actions in the nearest states), with the
  off-manifold threshold and the dataset's own actions as the reference.

States are drawn from the pairs the manifold held out for its threshold, so the dataset's own
actions there were not in the reference set: their distances are the calibration distances
the threshold came from, and an estimator's distances compare with them directly.

The figures and the files written (``write_report``) are in ``core.report_figures``; this
module computes, and needs no plotting library.

Reproducibility: the initial noise of candidate ``c`` of state ``i`` is row ``i * N + c`` of
``torch.randn(S * N, A, generator=torch.Generator().manual_seed(seed))`` (CPU generator, the
state's dtype); every estimator uses candidate 0 of each state, the oracle all N.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from core.diagnostics import (
    NO_GRADIENT,
    flop_label,
    flops_per_action,
    noise_sensitivity,
    q_optimisation,
)
from core.guidance import ESTIMATORS, QFn, VelocityFn, euler
from core.manifold import DataManifold
from core.stats import Z95, half_width

ORACLE = "best_of_n"
DATA = "data"
# Spans the reference evaluation's sweep (0.004 .. 0.12) and goes past it, where guidance
# is expected to leave the data.
DEFAULT_SWEEP = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def _stats(x: np.ndarray) -> dict:
    """Mean, normal-approximation 95% half-width and median of ``x``."""
    x = np.asarray(x, dtype=np.float64)
    return {"mean": float(x.mean()), "ci95": half_width(x), "median": float(np.median(x))}


@dataclass
class EstimatorResult:
    """One estimator (or the oracle, or the dataset's own actions) over the report's states.

    Attributes:
        name: estimator name, ``best_of_n`` for the oracle, ``data`` for dataset actions.
        q_final: ``[S]`` Q of the final action.
        distance: ``[S]`` distance of the final action to the data.
        off_manifold: ``[S]`` distance above the manifold's threshold.
        distance_to_oracle: ``[S]`` ``||a - a_oracle|| / sqrt(H)`` (per env action, like the
            distance to the data).
        noise_sensitivity: ``[T]`` mean cosine similarity per denoising step (empty where it
            does not apply: the oracle, the data, and ``none`` whose G is 0).
        noise_sensitivity_ci: ``[T]`` its normal 95% half-width.
        nonfinite: states where the sampler flagged a NaN/inf.
        flops_per_action: FLOPs to sample one action, backward included (None when not
            counted); the oracle's counts all N candidates.
    """

    name: str
    q_final: np.ndarray
    distance: np.ndarray
    off_manifold: np.ndarray
    distance_to_oracle: np.ndarray
    noise_sensitivity: np.ndarray = field(default_factory=lambda: np.empty(0))
    noise_sensitivity_ci: np.ndarray = field(default_factory=lambda: np.empty(0))
    nonfinite: int = 0
    flops_per_action: float | None = None

    def summary(self) -> dict:
        """Means with normal 95% half-widths, medians, off-manifold fraction."""
        return {
            "q_final": _stats(self.q_final),
            "distance": _stats(self.distance),
            "distance_to_oracle": _stats(self.distance_to_oracle),
            "off_manifold_fraction": float(np.mean(self.off_manifold)),
            "noise_sensitivity": [float(v) for v in self.noise_sensitivity],
            "noise_sensitivity_ci95": [float(v) for v in self.noise_sensitivity_ci],
            "nonfinite": int(self.nonfinite),
            "flops_per_action": self.flops_per_action,
        }


@dataclass
class DiagnoseReport:
    """Everything ``qgf diagnose`` computed; ``to_json`` is what it writes.

    Attributes:
        checkpoint, env: where the networks came from.
        rows: ``[S]`` rows of the dataset sample whose states were used (empty when the
            states came from the env, ``state_source``).
        weight, steps, best_of, eps, seed, perturbations: the settings.
        horizon: the policy's chunk length.
        manifold: the manifold's settings and threshold, or ``{"available": False, "why"}``
            when the checkpoint has no dataset sample.
        results: one ``EstimatorResult`` per estimator, then the oracle, then the data.
        oracle_q_by_n: ``[N]`` mean over states of the best Q among the first n candidates.
        sweep: one row per (weight, guided estimator): Q gap to the oracle, distance to the
            data, off-manifold share (``_sweep_row``); the report's weight is among them.
        flops_unguided: FLOPs of one unguided action (the cost unit of Fig. 6-7).
        wall_time_s: total time.
        state_source: where the states came from: the dataset sample, or (without one) the
            env, visited by the unguided policy (``rollout_states``).
    """

    checkpoint: str
    env: str
    rows: list[int]
    weight: float
    steps: int
    best_of: int
    eps: float
    seed: int
    horizon: int
    perturbations: int
    manifold: dict
    results: list[EstimatorResult]
    oracle_q_by_n: list[float]
    sweep: list[dict] = field(default_factory=list)
    flops_unguided: float | None = None
    wall_time_s: float = 0.0
    state_source: str = "dataset sample"

    @property
    def states(self) -> int:
        """S, the number of states diagnosed."""
        return len(self.results[0].q_final)

    def result(self, name: str) -> EstimatorResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def q_gap(self, name: str) -> dict:
        """``Q(name) - Q(oracle)`` over states: mean and paired 95% half-width."""
        gap = self.result(name).q_final - self.result(ORACLE).q_final
        return _stats(gap)

    def to_json(self) -> dict:
        """Settings, per-estimator summaries, and the per-state values behind every figure."""
        head = {k: v for k, v in asdict(self).items() if k != "results"}
        head["summary"] = {
            r.name: {**r.summary(), "q_minus_oracle": self.q_gap(r.name)} for r in self.results
        }
        head["per_state"] = {
            r.name: {
                "q_final": r.q_final.tolist(),
                "distance": r.distance.tolist(),
                "off_manifold": _flags(r.off_manifold),
                "distance_to_oracle": r.distance_to_oracle.tolist(),
            }
            for r in self.results
        }
        return head


def _flags(off: np.ndarray) -> list:
    """Off-manifold flags for JSON: None where unknown (no dataset sample), never False."""
    if off.dtype == bool:
        return off.tolist()
    return [None if np.isnan(v) else bool(v) for v in off]


def action_width(policy: VelocityFn) -> int:
    """The flat action size A a velocity field samples (its ``action_dim``)."""
    width = getattr(policy, "action_dim", None)
    if width is None:
        raise ValueError("the velocity field needs an action_dim attribute")
    return int(width)


def initial_noise(states: int, candidates: int, width: int, seed: int, dtype) -> Tensor:
    """``[S, N, A]`` the report's initial noise (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(states * candidates, width, generator=gen, dtype=dtype).view(
        states, candidates, width
    )


def pick_states(manifold: DataManifold, sample_obs: np.ndarray, count: int, seed: int):
    """Rows of the sample to diagnose: held-out rows first (see the module docstring).

    Returns:
        ``(rows [S], held_out [S] bool)``.
    """
    rng = np.random.default_rng(seed)
    held = manifold.calibration_rows.cpu().numpy()
    take = rng.choice(held, size=min(count, len(held)), replace=False)
    if len(take) < count:
        rest = np.setdiff1d(np.arange(len(sample_obs)), held)
        extra = rng.choice(rest, size=min(count - len(take), len(rest)), replace=False)
        take = np.concatenate([take, extra])
    return take, np.isin(take, held)


def _data_q(critic: QFn, obs: Tensor, data_actions: Tensor | None, width: int) -> np.ndarray:
    """Q of the dataset's own actions, where they are whole actions of the policy's width."""
    if data_actions is None or data_actions.shape[1] != width:
        return np.full(obs.shape[0], np.nan)
    with torch.no_grad():
        return critic(obs, data_actions.to(obs)).cpu().double().numpy()


def estimator_analyses(
    policy: VelocityFn,
    critic: QFn,
    manifold: DataManifold | None,
    obs: Tensor,
    *,
    estimators: Sequence[str],
    weight: float,
    steps: int = 10,
    best_of: int = 16,
    seed: int = 0,
    data_actions: Tensor | None = None,
    horizon: int = 1,
) -> tuple[list[EstimatorResult], list[float]]:
    """Q, distance to the oracle and distance to the data of every estimator's final action.

    Q and the oracle come from ``core.diagnostics.q_optimisation`` (Fig. 4); this adds the
    distance to the data (Fig. 17) and the ``data`` reference entry.

    Args:
        policy, critic: the velocity field (with ``.action_dim``) and the aggregated critic.
        manifold: distance to the data; None (no dataset sample) leaves distances and
            off-manifold flags NaN: unavailable, never guessed.
        obs: ``[S, O]`` states.
        estimators: names in ``ESTIMATORS``.
        weight: guidance weight for every estimator.
        steps: Euler steps T.
        best_of: N of the oracle.
        seed: seed of the initial noise (``initial_noise``).
        data_actions: ``[S, A']`` the dataset's actions at these states, for the ``data``
            entry (its Q is computed only when ``A'`` is the policy's width).
        horizon: the policy's chunk length H.

    Returns:
        ``(results, oracle_q_by_n)``: one ``EstimatorResult`` per estimator, then the oracle
        and (when ``data_actions`` is given) the data; and the oracle's mean Q when it keeps
        the best of its first n candidates, n = 1..N.
    """
    n_states, width = obs.shape[0], action_width(policy)
    env_dim = width // horizon
    noise = initial_noise(n_states, best_of, width, seed, obs.dtype).to(obs.device)
    opt = q_optimisation(
        policy,
        critic,
        obs,
        estimators,
        weight,
        best_of=best_of,
        steps=steps,
        noise=noise.reshape(n_states * best_of, width),
    )
    # diagnostics gives the RMS over the A coordinates; the report states every action
    # distance per env action, as the manifold does: ||a - b|| / sqrt(H).
    per_env_action = math.sqrt(env_dim)

    def to_data(actions: Tensor) -> tuple[np.ndarray, np.ndarray]:
        if manifold is None:
            unknown = np.full(n_states, np.nan)
            return unknown, unknown.copy()
        found = manifold.query(obs, actions.to(obs.device))
        return found.distance.double().cpu().numpy(), found.off_manifold.cpu().numpy()

    def measure(name: str, actions: Tensor, q: Tensor, to_oracle: Tensor, nonfinite: int):
        distance, off = to_data(actions)
        return EstimatorResult(
            name=name,
            q_final=q.double().cpu().numpy(),
            distance=distance,
            off_manifold=off,
            distance_to_oracle=to_oracle.double().cpu().numpy(),
            nonfinite=nonfinite,
        )

    results = [
        measure(
            name,
            opt.actions[i],
            opt.q[i],
            opt.distance_to_oracle[i] * per_env_action,
            int(opt.nonfinite[i].sum()),
        )
        for i, name in enumerate(opt.estimators)
    ]
    results.append(
        measure(
            ORACLE,
            opt.oracle_actions,
            opt.oracle_q,
            torch.zeros(n_states, dtype=torch.float64),
            0,
        )
    )
    if data_actions is not None:
        compared = min(width, data_actions.shape[1])
        gap = data_actions[:, :compared].double().cpu() - opt.oracle_actions[:, :compared]
        distance, off = to_data(data_actions)
        results.append(
            EstimatorResult(
                name=DATA,
                q_final=_data_q(critic, obs, data_actions, width),
                distance=distance,
                off_manifold=off,
                distance_to_oracle=(
                    torch.linalg.vector_norm(gap, dim=-1) / math.sqrt(compared // env_dim)
                ).numpy(),
            )
        )
    q_by_n = torch.cummax(opt.candidate_q, dim=1).values.mean(dim=0)
    return results, [float(v) for v in q_by_n]


# ---------------------------------------------------------------------- the whole report


def diagnose_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    states: int = 256,
    estimators: Sequence[str] | None = None,
    weight: float | None = None,
    steps: int | None = None,
    best_of: int = 16,
    eps: float = 0.05,
    perturbations: int = 2,
    k: int = 32,
    seed: int = 0,
    sweep: Sequence[float] = DEFAULT_SWEEP,
    device: str | torch.device = "cpu",
) -> DiagnoseReport:
    """Run every analysis of the report on a checkpoint.

    Args:
        checkpoint: checkpoint directory (``core.checkpoints`` layout).
        states: number of states S, drawn from the dataset sample (held-out rows first).
        estimators: names in ``ESTIMATORS``; None means every registered one.
        weight: guidance weight; None takes the best QGF weight of the checkpoint's
            ``eval.json`` when there is one, else 0.05.
        steps: Euler steps T; None takes the checkpoint's ``flow_steps``.
        best_of: N of the best-of-N oracle.
        eps: scale of the action noise in the noise-sensitivity analysis.
        perturbations: perturbations per state and step in the noise-sensitivity analysis.
        k: nearest states per distance query.
        seed: seed of the state draw, of the initial noise and of the perturbations.
        sweep: further weights at which every guided estimator's Q gap to the oracle,
            distance to the data and off-manifold share are summarised (same states, same
            noise); empty for none.
        device: where the networks and the manifold run.
    """
    from core.checkpoints import NoDatasetSample, load_checkpoint, load_dataset_sample

    started = time.perf_counter()
    policy, critic, config = load_checkpoint(checkpoint, device)
    try:
        sample = load_dataset_sample(checkpoint)
    except NoDatasetSample as e:
        sample, no_sample = None, str(e)
    estimators = list(ESTIMATORS) if estimators is None else list(estimators)
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown:
        raise ValueError(f"unknown estimators {unknown}; registered: {sorted(ESTIMATORS)}")
    steps = steps or config.flow_steps
    weight = float(default_weight(checkpoint) if weight is None else weight)

    if sample is not None:
        manifold = DataManifold.from_sample(sample, horizon=config.horizon, k=k, device=device)
        rows, _ = pick_states(manifold, sample.observations, states, seed)
        obs = torch.as_tensor(sample.observations[rows], dtype=torch.float32, device=device)
        data_actions = torch.as_tensor(sample.actions[rows], dtype=torch.float32, device=device)
        source, summary = "dataset sample", manifold_summary(manifold, config.horizon)
    else:
        manifold, data_actions, rows = None, None, np.zeros(0, dtype=np.int64)
        obs = rollout_states(policy, config.env, states, seed, config.flow_steps).to(device)
        source = f"env rollouts of the unguided policy (no dataset sample), seed {seed}"
        summary = {"available": False, "why": no_sample}

    # Every weight is analysed on the same states, noise and sampler settings.
    analyse = partial(
        estimator_analyses,
        policy,
        critic,
        manifold,
        obs,
        steps=steps,
        best_of=best_of,
        seed=seed,
        horizon=config.horizon,
    )
    results, q_by_n = analyse(estimators=estimators, weight=weight, data_actions=data_actions)

    with_gradient = [e for e in estimators if e not in NO_GRADIENT]
    if with_gradient:
        noise = initial_noise(len(obs), best_of, config.chunk_dim, seed, obs.dtype)[:, 0]
        sens = noise_sensitivity(
            policy,
            critic,
            obs,
            with_gradient,
            eps=eps,
            steps=steps,
            perturbations=perturbations,
            noise=noise.to(device),
            generator=torch.Generator().manual_seed(seed),
        )
        count = (~sens.cosine.isnan()).flatten(2).sum(dim=-1).clamp_min(1)
        half = Z95 * sens.std / count.sqrt()
        for i, name in enumerate(sens.estimators):
            r = next(r for r in results if r.name == name)
            r.noise_sensitivity = sens.mean[i].numpy()
            r.noise_sensitivity_ci = half[i].numpy()

    flops = flops_per_action(
        policy,
        critic,
        obs[: min(4, len(obs))],
        estimators,
        steps=steps,
        best_of=(("none", best_of),),
        generator=torch.Generator().manual_seed(seed),
    )
    by_label = {f.label: f.flops for f in flops}
    for r in results:
        r.flops_per_action = by_label.get(
            flop_label("none", best_of) if r.name == ORACLE else r.name
        )

    # `none` ignores the weight; its result at the report's weight stands for every weight.
    guided = [e for e in estimators if e != "none"]
    rows_by_weight = []
    for w in sorted({float(w) for w in sweep} | {weight}):
        if w == weight:
            at_w = results
        elif guided:
            at_w, _ = analyse(estimators=guided, weight=w)
        else:
            continue
        oracle_q = next(r for r in at_w if r.name == ORACLE).q_final
        rows_by_weight += [_sweep_row(w, r, oracle_q) for r in at_w if r.name in guided]
    return DiagnoseReport(
        checkpoint=str(checkpoint),
        env=config.env,
        rows=[int(r) for r in rows],
        weight=weight,
        steps=steps,
        best_of=best_of,
        eps=eps,
        seed=seed,
        horizon=config.horizon,
        perturbations=perturbations,
        manifold=summary,
        results=results,
        oracle_q_by_n=q_by_n,
        sweep=rows_by_weight,
        flops_unguided=by_label["unguided"],
        wall_time_s=time.perf_counter() - started,
        state_source=source,
    )


def rollout_states(
    policy: VelocityFn, env_name: str, count: int, seed: int, steps: int, every: int = 5
) -> Tensor:
    """``[count, O]`` states the unguided policy visits in the env: episodes reset with
    ``seed``, ``seed + 1``, ...; a state is kept every ``every`` env steps (chunks run open
    loop). For a checkpoint without a dataset sample to draw states from."""
    from core import envs

    env = envs.make_env(env_name)
    gen = torch.Generator().manual_seed(seed)
    width, horizon = action_width(policy), int(getattr(policy, "horizon", 1))
    device = next(policy.parameters()).device if isinstance(policy, torch.nn.Module) else "cpu"
    kept: list[np.ndarray] = []
    episode = 0
    while len(kept) < count:
        obs, _ = envs.reset(env, seed + episode)
        episode += 1
        chunk: list[np.ndarray] = []
        for t in range(env.spec.max_episode_steps or 1000):
            if t % every == 0:
                kept.append(np.asarray(obs, dtype=np.float32))
                if len(kept) == count:
                    break
            if not chunk:
                o = torch.as_tensor(obs, dtype=torch.float32, device=device)[None]
                noise = torch.randn(1, width, generator=gen).to(device)
                with torch.no_grad():
                    action = euler(policy, o, noise, steps)
                chunk = list(action[0].cpu().numpy().reshape(horizon, -1))
            obs, _, terminated, truncated, _ = env.step(chunk.pop(0))
            if terminated or truncated:
                break
    return torch.as_tensor(np.stack(kept))


def _sweep_row(weight: float, result: EstimatorResult, oracle_q: np.ndarray) -> dict:
    return {
        "weight": weight,
        "estimator": result.name,
        "q_final": _stats(result.q_final),
        "q_minus_oracle": _stats(result.q_final - oracle_q),
        "distance": _stats(result.distance),
        "off_manifold_fraction": float(np.mean(result.off_manifold)),
        "nonfinite": result.nonfinite,
    }


def manifold_summary(manifold: DataManifold, policy_horizon: int) -> dict:
    """What the JSON records about the distance measure."""
    cal = manifold.calibration.cpu().double().numpy()
    compares = (
        "whole chunks"
        if manifold.horizon == policy_horizon
        else f"the first {manifold.horizon} of {policy_horizon} actions of each chunk"
    )
    return {
        "k": manifold.k,
        "horizon": manifold.horizon,
        "compares": compares,
        "reference_rows": len(manifold),
        "threshold": float(manifold.threshold),
        "quantile": float(manifold.quantile),
        "calibration_pairs": len(cal),
        "calibration_percentiles": {
            str(p): float(np.percentile(cal, p)) for p in (5, 25, 50, 75, 95, 99)
        },
    }


def default_weight(checkpoint: str | os.PathLike, fallback: float = 0.05) -> float:
    """The best QGF weight recorded in the checkpoint's ``eval.json``, else ``fallback``."""
    import json

    path = Path(checkpoint) / "eval.json"
    try:
        summary = json.loads(path.read_text())["summary"]
        return float(summary["qgf"]["best_weight"])
    except (OSError, KeyError, TypeError, ValueError):
        return fallback
