"""Distance to the data in the viewer: per-candidate off-manifold flags and a weight sweep.

GUI-free (tests drive it with a ``Session`` alone). ``ManifoldAnalysis`` builds one
``core.manifold.DataManifold`` per checkpoint, from the checkpoint's dataset sample, the
first time a sample of that checkpoint is made (on load or switch, on the policy worker
thread; never again per step), and is a ``Session.sample_hooks`` entry: every new sample
gets a ``CandidateDistances`` (guided candidates and the w = 0 ghost) and its
``off_manifold`` flags, which the scene draws red. Sessions without a dataset sample
(random weights, custom networks) get ``None`` and ``ManifoldAnalysis.unavailable`` says why.

``sweep_preview`` is the "where does more guidance leave the data" view of the current
state: one batched ``core.manifold.weight_sweep`` call over a log grid of weights, with the
current sample's noise, estimator and T.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from core.manifold import DataManifold, WeightSweep, weight_sweep
from viewer.session import CandidateDistances

if TYPE_CHECKING:
    from viewer.session import Session, SessionView, StepSample

# The sweep's weight grid: log-spaced, covering the weight slider's log range.
SWEEP_WEIGHTS = tuple(float(w) for w in np.logspace(-3.0, 0.0, 12))


@dataclass
class SweepPreview:
    """Q and distance to the data against the guidance weight, for one state.

    Attributes:
        sweep: the ``WeightSweep`` (``[W, C]`` arrays, C = the sample's N candidates).
        weights: ``[W]`` the weights, as numpy.
        q_mean: ``[W]`` mean Q over candidates.
        distance_mean: ``[W]`` mean distance to the data (NaN without a manifold).
        threshold: the off-manifold threshold (inf without a manifold).
        key: what it was computed for (session version-independent: step, estimator, T, N,
            seed), so the app knows when it is stale.
        seconds: wall time of the call.
    """

    sweep: WeightSweep
    weights: np.ndarray
    q_mean: np.ndarray
    distance_mean: np.ndarray
    threshold: float
    key: tuple
    seconds: float = 0.0


def sweep_key(view: SessionView) -> tuple:
    """What a sweep preview of the session's live step depends on (from its ``SessionView``)."""
    s = view.sampled
    return (
        view.episode,
        view.live_step,
        view.checkpoint,
        view.label,
        s.estimator,
        s.steps,
        s.candidates,
        s.seed,
    )


class ManifoldAnalysis:
    """Off-manifold flags for every sample of a session, and the weight sweep.

    Args:
        k, quantile: passed to ``DataManifold.from_checkpoint``.
    """

    def __init__(self, k: int | None = None, quantile: float | None = None) -> None:
        self._fit_kwargs = {
            name: value for name, value in (("k", k), ("quantile", quantile)) if value is not None
        }
        self.manifold: DataManifold | None = None
        self.unavailable: str | None = "no checkpoint yet"
        self.build_seconds = 0.0
        self._for: Path | None = None
        self._failed_for: Path | None = None

    def attach(self, session: Session) -> None:
        """Install the hook and flag the current sample (re-sampled once, so the shown
        frame carries the flags). Call on the thread that owns the session."""
        if self.hook not in session.sample_hooks:
            session.sample_hooks.append(self.hook)
        if session.current is not None and session.current.chunk_step == 0:
            session.resample()

    def manifold_for(self, session: Session) -> DataManifold | None:
        """The manifold of the session's checkpoint, built once per checkpoint."""
        path = session.checkpoint_path
        if path is None:
            self.manifold, self._for = None, None
            self.unavailable = f"no dataset sample ({session.label})"
            return None
        if path == self._for:
            return self.manifold
        if path == self._failed_for:
            return None
        t0 = time.perf_counter()
        try:
            manifold = DataManifold.from_checkpoint(path, **self._fit_kwargs)
        except Exception as e:  # a checkpoint without a usable sample: say so, keep going
            self.manifold, self._for, self._failed_for = None, None, path
            self.unavailable = f"no dataset sample in {path.name} ({type(e).__name__}: {e})"
            return None
        self.build_seconds = time.perf_counter() - t0
        self.manifold, self._for, self.unavailable = manifold, path, None
        return manifold

    def hook(self, session: Session, sample: StepSample, obs: np.ndarray) -> None:
        """``Session.sample_hooks`` entry: sets ``sample.distances`` and ``off_manifold``."""
        t0 = time.perf_counter()
        manifold = self.manifold_for(session)
        if manifold is None:
            sample.distances = None
            sample.off_manifold = None
            return
        n = sample.noise.shape[0]
        finals = torch.cat([sample.guided.final, sample.unguided.final])  # [2N, A]
        o = torch.as_tensor(obs, dtype=finals.dtype)[None].expand(finals.shape[0], -1)
        q = manifold.query(o, finals)
        dist = q.distance.numpy().astype(np.float32)
        off = q.off_manifold.numpy().astype(bool)
        sample.off_manifold = off[:n]
        sample.distances = CandidateDistances(
            distance=dist[:n],
            off_manifold=off[:n],
            ghost_distance=dist[n:],
            ghost_off_manifold=off[n:],
            threshold=manifold.threshold,
            seconds=time.perf_counter() - t0,
        )

    def sweep(self, session: Session, weights: tuple[float, ...] = SWEEP_WEIGHTS) -> SweepPreview:
        """Sweep preview of the session's current state: one batched ``weight_sweep`` call
        with the current sample's noise ``[N, A]``, estimator and T."""
        t0 = time.perf_counter()
        rec = session.current
        s = rec.sample.settings
        device = next(session.policy.parameters()).device
        obs = torch.as_tensor(rec.obs, dtype=torch.float32, device=device)
        manifold = self.manifold_for(session)
        result = weight_sweep(
            session.policy,
            session.critic,
            obs,
            list(weights),
            manifold,
            estimator=s.estimator,
            steps=s.steps,
            noise=rec.sample.noise.to(device),
        )
        result = WeightSweep(
            weights=result.weights.cpu(),
            actions=result.actions.cpu(),
            q=result.q.cpu(),
            distance=result.distance.cpu(),
            off_manifold=result.off_manifold.cpu(),
            nonfinite=result.nonfinite.cpu(),
            threshold=result.threshold,
            estimator=result.estimator,
        )
        return SweepPreview(
            sweep=result,
            weights=result.weights.numpy().astype(np.float64),
            q_mean=result.q_mean.numpy().astype(np.float64),
            distance_mean=result.distance_mean.numpy().astype(np.float64),
            threshold=result.threshold,
            key=sweep_key(session.frame().view),
            seconds=time.perf_counter() - t0,
        )
