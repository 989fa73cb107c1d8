"""The paper's estimator analyses, on any velocity field and critic.

- ``noise_sensitivity`` (Fig. 3): cosine similarity between ``G(s, a_t)`` and
  ``G(s, a_t + eps)`` per denoising step and estimator.
- ``q_optimisation`` (Fig. 4): Q of each estimator's final action against the best-of-N
  oracle (unguided sampling, N candidates, argmax Q), from the same noise.
- ``flops_per_action`` (Fig. 6-7): FLOPs one final action costs, per estimator and with
  best-of-N, counted by ``torch.utils.flop_counter.FlopCounterMode`` (backward included).

Every function takes the same ``velocity`` and ``q`` callables as ``guided_sample`` and
returns a typed result; tensors are on the CPU in float64, whatever the networks use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode
from torch.utils.module_tracker import ModuleTracker

from core.guidance import ESTIMATORS, GuidanceStep, QFn, VelocityFn, euler, guided_sample

NO_GRADIENT = ("none",)
"""Estimators whose G is identically 0: a cosine similarity is undefined for them."""


def gradient_estimators() -> list[str]:
    """Every registered estimator that has a gradient (all but ``none``)."""
    return [name for name in ESTIMATORS if name not in NO_GRADIENT]


def _check_estimators(estimators: Sequence[str] | None, gradient_only: bool) -> list[str]:
    names = list(estimators) if estimators is not None else None
    if names is None:
        return gradient_estimators() if gradient_only else list(ESTIMATORS)
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown:
        raise ValueError(f"unknown estimators {unknown}; registered: {sorted(ESTIMATORS)}")
    if gradient_only and any(n in NO_GRADIENT for n in names):
        raise ValueError(
            "'none' has no gradient (G = 0), so its cosine similarity is undefined; leave it out"
        )
    return names


def _noise(
    noise: Tensor | None,
    generator: torch.Generator | None,
    rows: int,
    action_dim: int,
    like: Tensor,
) -> Tensor:
    if noise is not None:
        if tuple(noise.shape) != (rows, action_dim):
            raise ValueError(f"noise must be [{rows}, {action_dim}], got {list(noise.shape)}")
        return noise.to(like)
    return torch.randn(rows, action_dim, generator=generator, dtype=like.dtype).to(like.device)


def _action_dim(velocity: VelocityFn, noise: Tensor | None) -> int:
    if noise is not None:
        return noise.shape[-1]
    if not hasattr(velocity, "action_dim"):
        raise ValueError("pass noise, or a velocity with an .action_dim attribute")
    return int(velocity.action_dim)


# --------------------------------------------------------------------------- Fig. 3


@dataclass
class NoiseSensitivity:
    """Cosine similarity of each estimator's G at ``a_t`` and at ``a_t + eps * xi``.

    Attributes:
        estimators: the estimators, in the order of the first axis.
        cosine: ``[E, T, P, S]`` per estimator, denoising step, perturbation and state;
            NaN where G (perturbed or not) is exactly 0 and the cosine is undefined.
        eps: standard deviation of the perturbation ``eps * xi``, ``xi ~ N(0, I)``.
        weight: guidance weight of the trajectories the iterates ``a_t`` come from (0: every
            estimator is probed along the same unguided trajectory).
        steps: Euler steps T.
    """

    estimators: list[str]
    cosine: Tensor
    eps: float
    weight: float
    steps: int

    @property
    def mean(self) -> Tensor:
        """``[E, T]`` mean cosine over perturbations and states (where defined)."""
        return self.cosine.flatten(2).nanmean(dim=-1)

    @property
    def std(self) -> Tensor:
        """``[E, T]`` standard deviation over perturbations and states (where defined)."""
        c = self.cosine.flatten(2)
        mean = c.nanmean(dim=-1, keepdim=True)
        return ((c - mean) ** 2).nanmean(dim=-1).sqrt()

    @property
    def defined(self) -> Tensor:
        """``[E, T]`` fraction of (perturbation, state) pairs whose cosine is defined."""
        return (~self.cosine.isnan()).flatten(2).double().mean(dim=-1)

    def summary(self) -> dict[str, float]:
        """Mean cosine over every step, perturbation and state, per estimator."""
        return {
            name: float(self.cosine[i].flatten().nanmean())
            for i, name in enumerate(self.estimators)
        }


def _cosine(x: Tensor, y: Tensor) -> Tensor:
    """Row-wise cosine of ``[..., A]`` tensors; NaN where either row is exactly 0."""
    nx, ny = x.norm(dim=-1), y.norm(dim=-1)
    value = (x * y).sum(dim=-1) / (nx * ny)
    return torch.where((nx > 0) & (ny > 0), value, float("nan"))


def noise_sensitivity(
    velocity: VelocityFn,
    q: QFn,
    obs: Tensor,
    estimators: Sequence[str] | None = None,
    eps: float = 0.05,
    steps: int = 10,
    weight: float = 0.0,
    perturbations: int = 1,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    clip: bool = True,
) -> NoiseSensitivity:
    """Fig. 3: how much each estimator's gradient turns under a small change of ``a_t``.

    For every state, the iterates ``a_t`` (t = k / T) come from one denoising of ``noise``
    (guided by the estimator itself at ``weight``, or unguided when ``weight = 0``, so that
    every estimator is probed at the same points). At each step G is evaluated at ``a_t`` and
    at ``perturbations`` points ``a_t + eps * xi``, ``xi ~ N(0, I)``, all in one batch
    (rows are independent), and compared by cosine similarity.

    Args:
        velocity, q: as for ``guided_sample``.
        obs: ``[S, O]`` states.
        estimators: names with a gradient (default: every registered one but ``none``).
        eps: perturbation scale (std per action coordinate; the actions live in [-1, 1]).
        steps: Euler steps T.
        weight: guidance weight of the probed trajectories.
        perturbations: perturbations P per state and step.
        noise: ``[S, A]`` initial noise; else drawn from ``generator``.
        generator: CPU generator for the noise and the perturbations.
        clip: as for ``guided_sample``.

    Returns:
        A ``NoiseSensitivity`` with ``cosine [E, T, P, S]``.
    """
    if eps < 0 or perturbations < 1:
        raise ValueError(f"need eps >= 0 and perturbations >= 1, got {eps}, {perturbations}")
    names = _check_estimators(estimators, gradient_only=True)
    states = obs.shape[0]
    a0 = _noise(noise, generator, states, _action_dim(velocity, noise), obs)
    xi = torch.randn(perturbations, *a0.shape, generator=generator, dtype=obs.dtype).to(obs.device)
    obs_all = obs.repeat(1 + perturbations, 1)
    unguided = None
    cosine = torch.empty(len(names), steps, perturbations, states, dtype=torch.float64)
    for i, name in enumerate(names):
        if weight == 0.0:
            if unguided is None:
                unguided = guided_sample(velocity, q, obs, "none", 0.0, steps, a0, clip=clip)
            trace = unguided
        else:
            trace = guided_sample(velocity, q, obs, name, weight, steps, a0, clip=clip)
        for k in range(steps):
            a = trace.a_t[k]
            a_all = torch.cat([a[None], a[None] + eps * xi]).flatten(0, 1)
            step = GuidanceStep.at(velocity, q, obs_all, a_all, k, steps, clip)
            g = ESTIMATORS[name](step)[0].view(1 + perturbations, states, -1)
            cosine[i, k] = _cosine(g[:1], g[1:]).double().cpu()
    return NoiseSensitivity(names, cosine, float(eps), float(weight), steps)


# --------------------------------------------------------------------------- Fig. 4


@dataclass
class QOptimisation:
    """Q of final actions per estimator, against the best-of-N oracle.

    Attributes:
        estimators: the estimators, in the order of the first axis.
        weights: guidance weight used for each estimator.
        q: ``[E, S]`` Q of each estimator's final action.
        oracle_q: ``[S]`` Q of the oracle's action: the best of ``best_of`` unguided samples.
        distance_to_oracle: ``[E, S]`` ``||a - a_oracle|| / sqrt(A)`` (RMS over coordinates).
        nonfinite: ``[E, S]`` the sampler flagged the row (see ``DenoiseTrace.nonfinite``).
        best_of: N of the oracle.
        steps: Euler steps T.
        actions: ``[E, S, A]`` each estimator's final actions (for further measures, such
            as the distance to the data in ``core.report``).
        oracle_actions: ``[S, A]`` the oracle's actions.
        candidate_q: ``[S, N]`` Q of every oracle candidate (best-of-n for any n <= N).
    """

    estimators: list[str]
    weights: dict[str, float]
    q: Tensor
    oracle_q: Tensor
    distance_to_oracle: Tensor
    nonfinite: Tensor
    best_of: int
    steps: int
    actions: Tensor
    oracle_actions: Tensor
    candidate_q: Tensor

    @property
    def gap(self) -> Tensor:
        """``[E, S]`` Q of the estimator's action minus the oracle's (paired per state)."""
        return self.q - self.oracle_q[None]

    def summary(self) -> dict[str, dict[str, float]]:
        """Per estimator and for the oracle: mean Q, mean gap to the oracle, mean distance."""
        out = {
            name: {
                "q": float(self.q[i].mean()),
                "gap": float(self.gap[i].mean()),
                "distance_to_oracle": float(self.distance_to_oracle[i].mean()),
            }
            for i, name in enumerate(self.estimators)
        }
        out[f"best_of_{self.best_of}"] = {
            "q": float(self.oracle_q.mean()),
            "gap": 0.0,
            "distance_to_oracle": 0.0,
        }
        return out


def q_optimisation(
    velocity: VelocityFn,
    q: QFn,
    obs: Tensor,
    estimators: Sequence[str] | None = None,
    weight: float | Mapping[str, float] = 0.05,
    best_of: int = 16,
    steps: int = 10,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    clip: bool = True,
) -> QOptimisation:
    """Fig. 4: each estimator as an optimiser of Q, against the best-of-N oracle.

    Candidate ``c`` of state ``i`` starts from row ``i * N + c`` of the noise; every
    estimator starts from candidate 0 of each state, the oracle uses all N (so candidate 0 is
    shared, and the oracle is never worse than unguided sampling from the same noise).

    Args:
        velocity, q: as for ``guided_sample``.
        obs: ``[S, O]`` states.
        estimators: names (default: every registered one, ``none`` being plain BC).
        weight: one guidance weight, or one per estimator name.
        best_of: N of the oracle.
        steps: Euler steps T.
        noise: ``[S * N, A]``; else drawn from ``generator``.
        generator: CPU generator for the noise.
        clip: as for ``guided_sample``.

    Returns:
        A ``QOptimisation``.
    """
    names = _check_estimators(estimators, gradient_only=False)
    if isinstance(weight, Mapping):
        missing = [n for n in names if n not in weight]
        if missing:
            raise ValueError(f"no weight given for {missing}")
        weights = {n: float(weight[n]) for n in names}
    else:
        weights = {n: float(weight) for n in names}
    states = obs.shape[0]
    a0 = _noise(noise, generator, states * best_of, _action_dim(velocity, noise), obs)
    oracle = guided_sample(velocity, q, obs, "none", 0.0, steps, a0, best_of=best_of, clip=clip)
    first = a0[::best_of]
    qs, dists, flags, finals = [], [], [], []
    for name in names:
        trace = guided_sample(velocity, q, obs, name, weights[name], steps, first, clip=clip)
        finals.append(trace.actions)
        qs.append(trace.q_final)
        dists.append((trace.actions - oracle.actions).norm(dim=-1) / math.sqrt(first.shape[-1]))
        flags.append(trace.nonfinite)
    return QOptimisation(
        estimators=names,
        weights=weights,
        q=torch.stack(qs).double().cpu(),
        oracle_q=oracle.q_final[oracle.executed].double().cpu(),
        distance_to_oracle=torch.stack(dists).double().cpu(),
        nonfinite=torch.stack(flags).cpu(),
        best_of=best_of,
        steps=steps,
        actions=torch.stack(finals).double().cpu(),
        oracle_actions=oracle.actions.double().cpu(),
        candidate_q=oracle.q_final.view(states, best_of).double().cpu(),
    )


# --------------------------------------------------------------------------- Fig. 6-7


@dataclass
class FlopCount:
    """FLOPs of one final action.

    Attributes:
        label: ``unguided`` (``euler``, velocity only), an estimator name, or
            ``<estimator>+best_of_<N>``.
        estimator: the estimator (None for ``unguided``).
        best_of: candidates per final action.
        steps: Euler steps T.
        flops: FLOPs per final action, forward and backward, as torch's FlopCounterMode
            counts them (matrix products; elementwise ops are not counted).
    """

    label: str
    estimator: str | None
    best_of: int
    steps: int
    flops: float


class _GlobalOnly(ModuleTracker):
    """``FlopCounterMode``'s per-module tracker without its hooks. That tracker hooks the
    backward of every module output, and such hooks make ``autograd.grad(..., inputs=leaf)``
    fail (torch 2.13: "A leaf node was passed to _will_engine_execute_node"), which is how
    the estimators differentiate. Counting everything under "Global" (the ``parents`` that
    ``ModuleTracker.__init__`` starts with) needs no hooks."""

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def count_flops(fn: Callable[[], object]) -> int:
    """Total FLOPs of ``fn()`` (forward and backward ops alike) by ``FlopCounterMode``."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    with counter:
        fn()
    return counter.get_total_flops()


def flop_label(estimator: str, best_of: int) -> str:
    """The label of ``flops_per_action``'s row for ``estimator`` with ``best_of`` candidates
    per action: the name alone for one (best-of-1 is the estimator itself)."""
    return estimator if best_of == 1 else f"{estimator}+best_of_{best_of}"


def flops_per_action(
    velocity: VelocityFn,
    q: QFn,
    obs: Tensor,
    estimators: Sequence[str] | None = None,
    steps: int = 10,
    best_of: Sequence[tuple[str, int]] = (("none", 16), ("qgf", 16)),
    weight: float = 0.05,
    generator: torch.Generator | None = None,
) -> list[FlopCount]:
    """Fig. 6-7: FLOPs per final action of unguided sampling, each estimator, and best-of-N.

    Counted on one ``guided_sample`` call over the states ``obs [S, O]`` and divided by
    ``S``; every model here costs the same per row, so the count does not depend on ``S``.

    Args:
        velocity, q: as for ``guided_sample``.
        obs: ``[S, O]`` states.
        estimators: names (default: every registered one).
        steps: Euler steps T.
        best_of: ``(estimator, N)`` pairs to count with N candidates per action (default:
            plain best-of-16 and QGF + best-of-16).
        weight: guidance weight (FLOPs do not depend on it).
        generator: CPU generator for the noise.

    Returns:
        ``FlopCount`` rows: ``unguided``, then each estimator, then each best-of pair.
    """
    names = _check_estimators(estimators, gradient_only=False)
    states = obs.shape[0]
    action_dim = _action_dim(velocity, None)
    a0 = _noise(None, generator, states, action_dim, obs)

    def unguided() -> None:
        with torch.no_grad():
            euler(velocity, obs, a0, steps)

    rows = [FlopCount("unguided", None, 1, steps, count_flops(unguided) / states)]
    runs = [(name, 1) for name in names] + [(n, int(b)) for n, b in best_of]
    for name, n in runs:
        noise = _noise(None, generator, states * n, action_dim, obs)
        total = count_flops(
            partial(guided_sample, velocity, q, obs, name, weight, steps, noise, best_of=n)
        )
        rows.append(FlopCount(flop_label(name, n), name, n, steps, total / states))
    return rows
