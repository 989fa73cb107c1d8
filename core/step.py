"""One step of a guided flow policy: the rule the viewer, the recorder and the comparison share.

At a state ``s`` reached at env step ``k`` of an episode started from ``seed``:

1. the N candidates' initial noise ``a_0 [N, A]`` is ``step_noise(seed, k, N, A)``, a fixed
   function of ``(seed, k)``, so changing the weight or the estimator keeps the noise and
   ``qgf record --seed S`` draws what ``qgf view`` draws with seed S;
2. ``sample_step`` denoises them in one ``guided_sample`` call of two rows: row 0 guided at
   the weight, row 1 the same noise at weight 0 (the unguided "ghost"), so the difference
   between the two is the guidance and nothing else;
3. the executed candidate is the one of highest Q with ``pick_best`` (best-of-N), otherwise
   candidate 0, which is what a single-sample policy with this seed does;
4. ``effector_paths`` maps every candidate's actions (the one-step estimates ``a_hat`` along
   denoising and the final actions, each a chunk of H env actions) to end-effector targets
   with the env's own action scaling and workspace clip, from the effector's pose at ``s``.

Names: ``steps`` is always the number of Euler steps T of the sampler; env steps are called
``env_steps`` (or an index ``k``); ``best_of`` is always the integer N candidates per row of
``core.guidance.guided_sample``, and the boolean "execute the best of them" is ``pick_best``.
See docs/ALGORITHM.md for the estimators and docs/ARCHITECTURE.md for who calls this when.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from core.envs import action_to_ee_targets, effector_state
from core.guidance import ESTIMATORS, DenoiseTrace, guided_sample
from core.render import Overlay

MAX_STEPS = 100
"""Largest number of Euler steps T the interactive tools accept."""
MAX_CANDIDATES = 64
"""Largest number of candidates N the interactive tools accept."""

# Estimators whose recorded q_hat is already Q(s, a_hat) (they take their gradient there),
# so Q along denoising needs no extra critic call.
Q_AT_A_HAT = frozenset({"none", "qgf", "qgf_jacobian"})


@dataclass(frozen=True)
class StepSettings:
    """What decides the policy's action at a step.

    Attributes:
        weight: guidance weight w (= 1/beta).
        estimator: a name in ``core.guidance.ESTIMATORS``.
        steps: Euler steps T of the sampler.
        candidates: N candidates drawn at each sample.
        pick_best: execute the candidate of highest Q (best-of-N); otherwise candidate 0.
        seed: the episode's seed (start state and, with the env step, the noise).
    """

    weight: float = 0.03
    estimator: str = "qgf"
    steps: int = 10
    candidates: int = 8
    pick_best: bool = False
    seed: int = 0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad setting."""
        if self.estimator not in ESTIMATORS:
            raise ValueError(
                f"unknown estimator {self.estimator!r}; registered: {', '.join(ESTIMATORS)}"
            )
        if not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps T must be in 1..{MAX_STEPS}, got {self.steps}")
        if not 1 <= self.candidates <= MAX_CANDIDATES:
            raise ValueError(f"candidates N must be in 1..{MAX_CANDIDATES}, got {self.candidates}")
        if not np.isfinite(self.weight) or self.weight < 0:
            raise ValueError(f"weight must be a finite number >= 0, got {self.weight}")


# Settings whose change only needs a new sample of the current state (no reset).
RESAMPLE_FIELDS = frozenset({"weight", "estimator", "steps", "candidates", "pick_best", "seed"})


def noise_seed(seed: int, step: int) -> int:
    """Seed of the denoising noise at env step ``step`` of an episode started from ``seed``."""
    return (int(seed) * 1_000_003 + int(step)) % (2**63)


def step_noise(seed: int, step: int, candidates: int, action_dim: int) -> Tensor:
    """``[candidates, A]`` float32 initial noise a_0 at env step ``step``, on the CPU."""
    generator = torch.Generator().manual_seed(noise_seed(seed, step))
    return torch.randn(candidates, action_dim, generator=generator)


@dataclass
class StepDraw:
    """The candidates of one state (on the device they were sampled on).

    Attributes:
        guided: one-row ``DenoiseTrace`` with ``best_of = N``, at the settings' weight.
        ghost: the same noise at weight 0, or None when not sampled.
        executed: the executed candidate, in 0..N-1 (``executed_candidate``).
        q_guided, q_ghost: ``[T+1, N]`` Q(s, a_hat) at each denoising step, then
            Q(s, final action) (``q_along_denoising``), or None when not asked for.
    """

    guided: DenoiseTrace
    ghost: DenoiseTrace | None
    executed: int
    q_guided: Tensor | None = None
    q_ghost: Tensor | None = None


def executed_candidate(guided: DenoiseTrace, pick_best: bool) -> int:
    """The candidate a row executes: its argmax of Q with ``pick_best``, otherwise 0."""
    return int(guided.chosen[0]) if pick_best else 0


def sample_step(
    policy: torch.nn.Module,
    critic: Callable[[Tensor, Tensor], Tensor],
    obs: Tensor,
    settings: StepSettings,
    noise: Tensor,
    ghost: bool = True,
    q_path: bool = False,
) -> StepDraw:
    """The guided candidates of one state and (with ``ghost``) the unguided ones.

    One ``guided_sample`` call of ``[guided at weight, same noise at 0]`` (one row without
    ``ghost``), so every caller with the same settings and noise draws the same actions.

    Args:
        obs: ``[O]`` the state, on the policy's device.
        settings: the weight, estimator, T and ``pick_best`` (N is ``noise.shape[0]``).
        noise: ``[N, A]`` the initial noise a_0 (``step_noise``).
        q_path: also compute Q along denoising (``q_along_denoising``); needs a critic
            with a ``.v`` and ``__call__(obs, actions)``, as ``core.models.Critic``.
    """
    n = noise.shape[0]
    rows = 2 if ghost else 1
    trace = guided_sample(
        policy,
        critic,
        obs[None].expand(rows, -1),
        estimator=settings.estimator,
        weight=torch.tensor([settings.weight, 0.0][:rows], device=obs.device),
        steps=settings.steps,
        noise=noise.repeat(rows, 1).to(obs.device),
        best_of=n,
    )
    guided = trace.row(0)
    draw = StepDraw(
        guided=guided,
        ghost=trace.row(1) if ghost else None,
        executed=executed_candidate(guided, settings.pick_best),
    )
    if q_path:
        q = q_along_denoising(critic, obs, trace)
        draw.q_guided, draw.q_ghost = q[:, :n], (q[:, n:] if ghost else None)
    return draw


def q_along_denoising(
    critic: Callable[[Tensor, Tensor], Tensor], obs: Tensor, trace: DenoiseTrace
) -> Tensor:
    """``[T+1, B*]`` Q(s, a_hat) at each denoising step, then Q(s, final action).

    The same quantity whatever the estimator: each estimator's own ``q_hat`` is Q where it
    took its gradient (at a_t for ood, at ODE(a_t) for qgf_chain), which is Q(s, a_hat) only
    for the estimators in ``Q_AT_A_HAT``; for the others the critic is called again.
    """
    with torch.no_grad():
        if trace.estimator in Q_AT_A_HAT:
            return torch.cat([trace.q_hat, trace.q_final[None]])
        a_dim = trace.a_hat.shape[-1]
        points = torch.cat([trace.a_hat, trace.final[None]]).reshape(-1, a_dim)
        q = critic(obs[None].expand(points.shape[0], -1), points)
        return q.reshape(trace.steps + 1, -1)


@dataclass
class EffectorPaths:
    """Where N candidates send the end effector, in world coordinates.

    Attributes:
        origin: ``[3]`` the effector position every path starts from.
        denoise: ``[T, N, H, 3]`` targets of ``a_hat`` at each denoising step.
        final: ``[N, H, 3]`` targets of the final actions.
        ghost: ``[N, H, 3]`` targets of the ghost's final actions, or None.
        gripper: ``[N, H]`` gripper targets (0 open .. 1 closed) of the final actions.
    """

    origin: np.ndarray
    denoise: np.ndarray
    final: np.ndarray
    ghost: np.ndarray | None
    gripper: np.ndarray

    def overlay(
        self,
        executed: int,
        off_manifold: np.ndarray | None = None,
        nonfinite: np.ndarray | None = None,
    ) -> Overlay:
        """The scene overlay that draws these paths (``core.render.Overlay``)."""
        return Overlay(
            origin=self.origin,
            denoise=self.denoise,
            final=self.final,
            executed=executed,
            ghost=self.ghost,
            gripper=self.gripper[executed],
            off_manifold=off_manifold,
            nonfinite=nonfinite,
        )


def effector_paths(
    env,
    a_hat: np.ndarray,
    final: np.ndarray,
    ghost: np.ndarray | None = None,
    start: tuple[np.ndarray, float] | None = None,
) -> EffectorPaths:
    """Map candidates' actions to effector targets (``core.envs.action_to_ee_targets``).

    Every candidate's action is a chunk of ``H`` env actions of width 5, chained from the
    effector's pose: the env's current one, or ``start`` (``core.envs.effector_state_at``
    of a past step). All paths are mapped in one call.

    Args:
        a_hat: ``[T, N, H*5]`` the one-step clean estimates along denoising.
        final: ``[N, H*5]`` the final actions.
        ghost: ``[N, H*5]`` the ghost's final actions, or None.
    """
    a_hat, final = np.asarray(a_hat), np.asarray(final)
    t, n = a_hat.shape[:2]
    parts = [a_hat.reshape(t * n, -1, 5), final.reshape(n, -1, 5)]
    if ghost is not None:
        parts.append(np.asarray(ghost).reshape(n, -1, 5))
    targets = action_to_ee_targets(env, np.concatenate(parts), start=start)
    xyz = targets.xyz
    origin = effector_state(env)[0] if start is None else np.asarray(start[0])
    return EffectorPaths(
        origin=origin,
        denoise=xyz[: t * n].reshape(t, n, -1, 3),
        final=xyz[t * n : t * n + n],
        ghost=xyz[t * n + n :] if ghost is not None else None,
        gripper=targets.gripper[t * n : t * n + n],
    )
