"""Every gradient estimator side by side on one state, from the same initial noise.

``compare_estimators`` runs each registered estimator (``core.guidance.ESTIMATORS``, those
registered later included) and the best-of-N oracle from one noise tensor ``[N, A]`` at one
state, and measures for each what the paper compares (docs/ALGORITHM.md):

=========================  ====================================================================
final Q                    Q(s, a) of the executed action, and the mean over the N candidates
distance to the data       ``core.manifold.DataManifold`` distance of each candidate's final
                           action, and the fraction off the manifold (when a manifold is given)
noise sensitivity          mean cosine of G(s, a_t) and G(s, a_t + eps xi), ``core.diagnostics
                           .noise_sensitivity`` (Fig. 3); undefined for ``none`` and best-of-N
time per action            median wall time of sampling one action as the acting policy would
FLOPs per action           ``core.diagnostics.flops_per_action`` (Fig. 6-7)
Q along denoising          Q(s, a_hat_k) at every step k, then Q(s, final action)
=========================  ====================================================================

Which candidate is executed: an estimator row acts as a single-sample policy does, with
candidate 0 (the viewer's choice with best-of-N off), so its time and FLOPs are those of one
sample. The best-of-N row samples the N candidates unguided and executes the one of highest
Q; its time and FLOPs are those of all N. Every row starts from the same noise, so the
differences between rows are the estimators' alone.

A one-step policy (FQL's distilled policy, ``core.models.OneStepPolicy``), when given, adds
the row ``one-step``: its action from the same noise, clipped as FQL acts. It does not
denoise, so its "a_hat" at every step is that action and Q along denoising is flat; it has
no gradient, so no noise sensitivity.

GUI-free: the viewer's "Compare estimators" panel (``viewer/compare_view.py``) shows it, and a
script can call it directly.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from core.diagnostics import (
    NO_GRADIENT,
    count_flops,
    flop_label,
    flops_per_action,
    noise_sensitivity,
)
from core.guidance import ESTIMATORS, DenoiseTrace, QFn, VelocityFn, guided_sample
from core.manifold import DataManifold

OneStepFn = Callable[[Tensor, Tensor], Tensor]

BEST_OF = "best-of-N"
"""Label pattern of the best-of-N row (``best_of_label`` writes N out: ``best-of-8``)."""
ONESTEP = "one-step"
"""Label of a one-step policy's row."""

DEFAULT_EPS = 0.05
DEFAULT_PERTURBATIONS = 2


@dataclass
class CompareRow:
    """One estimator (or the best-of-N oracle) on the compared state.

    Attributes:
        label: the estimator's name, ``best-of-N`` with N written out (``best-of-8``), or
            ``one-step``.
        estimator: the estimator sampled (``none`` for best-of-N and one-step).
        pick_best: the row executes the candidate of highest Q (best-of-N) rather than 0
            (a bool, as ``StepSettings.pick_best``; N itself is ``trace.best_of``).
        trace: the ``DenoiseTrace`` of the N candidates (one row, ``B* = N``), on the CPU.
        executed: index in 0..N-1 of the executed candidate.
        q_denoise: ``[T+1, N]`` Q(s, a_hat_k) for k = 0..T-1, then Q(s, final action).
        distance: ``[N]`` distance to the data of each final action, or None.
        off_manifold: ``[N]`` bool, ``distance > threshold``, or None.
        cosine: ``[T]`` mean cosine of G(s, a_t) and G(s, a_t + eps xi) per denoising step
            over candidates and perturbations, or None where G is identically 0.
        ms_per_action: median wall time of one action (see the module docstring), in ms.
        flops_per_action: FLOPs of one action, backward included.
    """

    label: str
    estimator: str
    pick_best: bool
    trace: DenoiseTrace
    executed: int
    q_denoise: Tensor
    distance: Tensor | None
    off_manifold: Tensor | None
    cosine: Tensor | None
    ms_per_action: float
    flops_per_action: float

    @property
    def a_hat(self) -> Tensor:
        """``[T, N, A]`` one-step clean estimates of every candidate at every step."""
        return self.trace.a_hat

    @property
    def final(self) -> Tensor:
        """``[N, A]`` every candidate's final action."""
        return self.trace.final

    @property
    def q_executed(self) -> float:
        """Q(s, executed action)."""
        return float(self.trace.q_final[self.executed])

    @property
    def q_mean(self) -> float:
        """Mean Q over the N candidates' final actions."""
        return float(self.trace.q_final.double().mean())

    @property
    def distance_executed(self) -> float:
        """Distance to the data of the executed action (NaN without a manifold)."""
        return float("nan") if self.distance is None else float(self.distance[self.executed])

    @property
    def distance_mean(self) -> float:
        """Mean distance to the data over the candidates (NaN without a manifold)."""
        return float("nan") if self.distance is None else float(self.distance.double().mean())

    @property
    def off_fraction(self) -> float:
        """Fraction of candidates off the data manifold (NaN without a manifold)."""
        if self.off_manifold is None:
            return float("nan")
        return float(self.off_manifold.double().mean())

    @property
    def sensitivity(self) -> float:
        """Mean cosine over every step (NaN where undefined): 1 = G does not turn."""
        if self.cosine is None or not self.cosine.isfinite().any():
            return float("nan")
        return float(self.cosine.nanmean())

    @property
    def nonfinite(self) -> int:
        """Candidates whose denoising met a NaN/inf (``DenoiseTrace.nonfinite``)."""
        return int(self.trace.nonfinite.sum())


@dataclass
class Comparison:
    """Every estimator and best-of-N on one state from one noise.

    Attributes:
        rows: one ``CompareRow`` per estimator, in registry order, then best-of-N, then
            the one-step policy's row when there is one.
        obs: ``[O]`` the state.
        noise: ``[N, A]`` the initial noise every row starts from.
        weight: guidance weight of every estimator row.
        steps: Euler steps T.
        threshold: the manifold's off-manifold threshold (inf without one).
        eps, perturbations: the noise-sensitivity probe (``noise_sensitivity``); it probes
            every estimator along the same unguided trajectory (its ``weight = 0``).
        flops: FLOPs per action by ``core.diagnostics.flops_per_action`` label (``unguided``,
            each estimator, ``none+best_of_N``), for reuse (``compare_estimators(flops=)``).
        seconds: wall time of the whole comparison.
    """

    rows: list[CompareRow]
    obs: Tensor
    noise: Tensor
    weight: float
    steps: int
    threshold: float
    eps: float
    perturbations: int
    flops: dict[str, float]
    seconds: float = 0.0

    @property
    def candidates(self) -> int:
        return self.noise.shape[0]

    @property
    def labels(self) -> list[str]:
        return [r.label for r in self.rows]

    def row(self, label: str) -> CompareRow:
        """The row called ``label`` (an estimator name, or ``best_of_label(N)``)."""
        for r in self.rows:
            if r.label == label:
                return r
        raise KeyError(f"no row {label!r}; rows: {self.labels}")


def best_of_label(n: int) -> str:
    """Label of the best-of-N row: ``best-of-8`` for N = 8."""
    return BEST_OF.replace("N", str(n))


def _sync(device: torch.device) -> None:
    # CUDA runs asynchronously: a wall time is only honest once the queue is drained.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(1000.0 * (time.perf_counter() - t0))
    return statistics.median(times)


def compare_estimators(
    velocity: VelocityFn,
    q: QFn,
    obs: Tensor,
    noise: Tensor,
    *,
    weight: float,
    steps: int,
    device: torch.device | str = "cpu",
    estimators: Sequence[str] | None = None,
    manifold: DataManifold | None = None,
    eps: float = DEFAULT_EPS,
    perturbations: int = DEFAULT_PERTURBATIONS,
    seed: int = 0,
    repeats: int = 3,
    clip: bool = True,
    flops: Mapping[str, float] | None = None,
    onestep: OneStepFn | None = None,
) -> Comparison:
    """Run every estimator and best-of-N on one state from the same noise, and measure each.

    Args:
        velocity, q: as for ``guided_sample``, already on ``device``.
        obs: ``[O]`` or ``[1, O]`` the state.
        noise: ``[N, A]`` initial noise a_0 of the N candidates, shared by every row.
        weight: guidance weight w of every estimator row.
        steps: Euler steps T.
        device: where to sample (the networks' device; CPU or CUDA).
        estimators: names in ``ESTIMATORS`` (default: all registered, at call time).
        manifold: distance to the data; None leaves the distances out.
        eps, perturbations: noise-sensitivity probe (as in ``qgf diagnose``).
        seed: seed of the probe's perturbations and of the FLOP count's noise.
        repeats: timed calls per row; the median is kept.
        clip: as for ``guided_sample``.
        flops: FLOPs per action by ``flops_per_action`` label, from an earlier comparison's
            ``Comparison.flops`` with the same networks, T and N (counting them costs more
            than the rest of the comparison, and they depend on nothing else); None counts.
        onestep: a one-step policy ``(obs [B,O], noise [B,A]) -> [B,A]`` to add as a row.

    Returns:
        A ``Comparison`` whose rows hold CPU tensors.
    """
    t_start = time.perf_counter()
    device = torch.device(device)
    names = list(ESTIMATORS) if estimators is None else list(estimators)
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown:
        raise ValueError(f"unknown estimators {unknown}; registered: {sorted(ESTIMATORS)}")
    if noise.ndim != 2:
        raise ValueError(f"noise must be [N, A], got {list(noise.shape)}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    o = obs.reshape(1, -1).to(device)
    if not o.is_floating_point():
        o = o.float()
    a0 = noise.to(device=device, dtype=o.dtype)
    n, width = a0.shape
    rows_obs = o.expand(n, -1)

    # Fig. 3 for every estimator with a gradient at once: one draw of the perturbations
    # serves them all, as in the diagnose report.
    with_gradient = [name for name in names if name not in NO_GRADIENT]
    cosine: dict[str, Tensor] = {}
    if with_gradient:
        sens = noise_sensitivity(
            velocity,
            q,
            rows_obs,
            with_gradient,
            eps=eps,
            steps=steps,
            perturbations=perturbations,
            noise=a0,
            generator=torch.Generator().manual_seed(seed),
            clip=clip,
        )
        cosine = {name: sens.mean[i] for i, name in enumerate(sens.estimators)}

    oracle_label = flop_label("none", n)
    if flops is None or any(label not in flops for label in [*names, oracle_label]):
        counted = flops_per_action(
            velocity,
            q,
            o,
            names,
            steps=steps,
            best_of=(("none", n),),
            weight=weight,
            generator=torch.Generator().manual_seed(seed),
        )
        flops = {f.label: f.flops for f in counted}

    def sample(name: str, w: float, noise_rows: Tensor, best_of: int) -> DenoiseTrace:
        return guided_sample(velocity, q, o, name, w, steps, noise_rows, best_of=best_of, clip=clip)

    # (label, estimator, pick_best, weight, noise of one timed action, FLOP-count label)
    plans = [(name, name, False, weight, a0[:1], name) for name in names]
    plans.append((best_of_label(n), "none", True, 0.0, a0, oracle_label))
    traces, times = [], []
    for _, estimator, _, w, one_action, _ in plans:
        traces.append(sample(estimator, w, a0, n))
        times.append(
            _median_ms(
                lambda e=estimator, w=w, a=one_action: sample(e, w, a, a.shape[0]),
                repeats,
                device,
            )
        )

    if onestep is not None:
        plans.append((ONESTEP, "none", False, 0.0, a0[:1], ONESTEP))
        traces.append(_onestep_trace(onestep, q, o, a0, steps, clip))
        times.append(_median_ms(lambda: _onestep_act(onestep, o, a0[:1], clip), repeats, device))
        if ONESTEP not in flops:
            flops = {**flops, ONESTEP: count_flops(lambda: _onestep_act(onestep, o, a0[:1], clip))}

    # Q along denoising of every row in one critic call: [rows, T, N, A] -> [rows, T, N].
    a_hats = torch.stack([trace.a_hat for trace in traces])
    with torch.no_grad():
        q_hat = q(o.expand(a_hats[..., 0].numel(), -1), a_hats.reshape(-1, width))
    q_hat = q_hat.reshape(a_hats.shape[:-1])
    finals = torch.stack([trace.final for trace in traces])  # [rows, N, A]
    found = None
    if manifold is not None:
        found = manifold.query(o.expand(finals.shape[0] * n, -1), finals.reshape(-1, width))

    rows = []
    for i, (label, estimator, pick_best, _, _, counted_as) in enumerate(plans):
        trace = traces[i]
        rows.append(
            CompareRow(
                label=label,
                estimator=estimator,
                pick_best=pick_best,
                trace=trace.to("cpu"),
                executed=int(trace.chosen[0]) if pick_best else 0,
                q_denoise=torch.cat([q_hat[i], trace.q_final[None]]).cpu(),
                distance=None if found is None else found.distance.view(-1, n)[i].cpu(),
                off_manifold=None if found is None else found.off_manifold.view(-1, n)[i].cpu(),
                cosine=None if pick_best else cosine.get(estimator),
                ms_per_action=times[i],
                flops_per_action=float(flops[counted_as]),
            )
        )
    return Comparison(
        rows=rows,
        obs=o[0].cpu(),
        noise=a0.cpu(),
        weight=float(weight),
        steps=steps,
        threshold=manifold.threshold if manifold is not None else float("inf"),
        eps=float(eps),
        perturbations=perturbations,
        flops=dict(flops),
        seconds=time.perf_counter() - t_start,
    )


def _onestep_act(onestep: OneStepFn, o: Tensor, noise: Tensor, clip: bool) -> Tensor:
    with torch.no_grad():
        a = onestep(o.expand(noise.shape[0], -1), noise)
    return a.clamp(-1.0, 1.0) if clip else a


def _onestep_trace(
    onestep: OneStepFn, q: QFn, o: Tensor, noise: Tensor, steps: int, clip: bool
) -> DenoiseTrace:
    """A one-step policy's actions from ``noise [N, A]`` as a trace of ``steps`` steps that
    stands still at its action (it does not denoise), so it plots and draws like the rest."""
    final = _onestep_act(onestep, o, noise, clip)
    n = final.shape[0]
    with torch.no_grad():
        q_final = q(o.expand(n, -1), final)
    still = final.expand(steps, -1, -1)
    return DenoiseTrace(
        actions=final[:1],
        a_t=torch.cat([noise[None], still]),
        a_hat=still.clone(),
        grad=torch.zeros_like(still),
        q_hat=q_final.expand(steps, -1).clone(),
        q_final=q_final,
        chosen=torch.zeros(1, dtype=torch.long, device=final.device),
        nonfinite=~(final.isfinite().all(dim=-1) & q_final.isfinite()),
        weight=torch.zeros(n, dtype=final.dtype, device=final.device),
        estimator="none",
        steps=steps,
        best_of=n,
        clip=clip,
    )
