"""The toy mode's state and work, with no GUI: settings in, drawable snapshots out.

``ToySession`` holds the settings (``ToySettings``), samples every shown estimator from the
same noise on the exact toy flow (``core.toy``), and packs what the window draws into an
immutable ``ToyView`` of numpy arrays. The window only reads views and sends ``update``
commands. Work runs either synchronously (``compute``, for tests and scripts) or on one
background thread (``request`` / ``poll``), so dragging a slider or a* never freezes the
window: requests that arrive while a view is being computed are coalesced into one, and a
view is shown as soon as its samples are drawn, before its slower diagnostics.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from core.guidance import ESTIMATORS, DenoiseTrace, GuidanceStep, guided_sample
from core.toy import (
    PROBLEMS,
    MixtureFlow,
    ToyProblem,
    fit_critic,
    misdirected_fraction,
    path_to,
)

CRITICS = ("exact", "fitted")
"""``exact``: Q = -||a - a*|| everywhere. ``fitted``: an MLP fitted on data samples only."""

DEFAULT_ESTIMATORS = ("none", "bptt", "ood", "qgf")
"""The paper's Fig. 2 columns."""

WEIGHT_LOG_RANGE = (-2.0, 2.0)
"""log10 of the weight at the ends of the log-scale slider."""
WEIGHT_LINEAR_MAX = 5.0

DENSITY_POINTS = 241  # 1-D density grid
HEAT_POINTS = 64  # 2-D heatmap grid per side
FIELD_POINTS = 15  # 2-D velocity-field arrows per side
PLOT_LIMIT = 1.25  # 2-D plots show [-PLOT_LIMIT, PLOT_LIMIT]^2
DENSITY_LIMIT = 2.5  # 1-D plots show a in [-DENSITY_LIMIT, DENSITY_LIMIT]
TIME_COLUMNS = 101  # 1-D background: p_t on this many t values
DATA_POINTS = 400  # data samples drawn as the critic's "trusted" region
_FIT_CACHE_SIZE = 16


_LOG_ZERO = 0.02  # the log slider's bottom 2% means weight 0 (guidance off)


def weight_from_slider(u: float, log_scale: bool) -> float:
    """Map a slider position ``u`` in [0, 1] to a guidance weight.

    Log scale: the bottom ``_LOG_ZERO`` of the track is exactly 0 (so the log slider can
    still switch guidance off), the rest spans ``10**WEIGHT_LOG_RANGE``. Linear scale spans
    ``[0, WEIGHT_LINEAR_MAX]``.
    """
    u = min(max(float(u), 0.0), 1.0)
    if not log_scale:
        return u * WEIGHT_LINEAR_MAX
    if u < _LOG_ZERO:
        return 0.0
    lo, hi = WEIGHT_LOG_RANGE
    return 10.0 ** (lo + (u - _LOG_ZERO) / (1.0 - _LOG_ZERO) * (hi - lo))


def slider_from_weight(weight: float, log_scale: bool) -> float:
    """Inverse of ``weight_from_slider`` (clamped to the slider's range)."""
    if not log_scale:
        return min(max(weight / WEIGHT_LINEAR_MAX, 0.0), 1.0)
    if weight <= 0.0:
        return 0.0
    lo, hi = WEIGHT_LOG_RANGE
    frac = min(max((math.log10(weight) - lo) / (hi - lo), 0.0), 1.0)
    return _LOG_ZERO + frac * (1.0 - _LOG_ZERO)


@dataclass(frozen=True)
class ToySettings:
    """Everything that determines a ``ToyView``.

    Attributes:
        dim: 1 or 2 (a key of ``core.toy.PROBLEMS``).
        critic: ``"exact"`` or ``"fitted"``.
        weight: guidance weight w.
        estimators: names in ``ESTIMATORS``, in display order.
        steps: Euler steps T.
        samples: particles N (the same noise for every estimator).
        seed: seed of that noise.
        a_star: the critic's optimum, or None for the problem's default.
    """

    dim: int = 1
    critic: str = "exact"
    weight: float = 0.3
    estimators: tuple[str, ...] = DEFAULT_ESTIMATORS
    steps: int = 25
    samples: int = 300
    seed: int = 0
    a_star: tuple[float, ...] | None = None

    def validated(self) -> ToySettings:
        """These settings, or a ValueError naming what is wrong."""
        if self.dim not in PROBLEMS:
            raise ValueError(f"dim must be one of {sorted(PROBLEMS)}, got {self.dim}")
        if self.critic not in CRITICS:
            raise ValueError(f"critic must be one of {CRITICS}, got {self.critic!r}")
        unknown = [e for e in self.estimators if e not in ESTIMATORS]
        if unknown:
            raise ValueError(f"unknown estimators {unknown}; registered: {sorted(ESTIMATORS)}")
        if not math.isfinite(self.weight) or self.weight < 0:
            raise ValueError(f"weight must be finite and >= 0, got {self.weight}")
        if not 1 <= self.steps <= 200:
            raise ValueError(f"steps must be in 1..200, got {self.steps}")
        if not 1 <= self.samples <= 5000:
            raise ValueError(f"samples must be in 1..5000, got {self.samples}")
        if self.a_star is not None and len(self.a_star) != self.dim:
            raise ValueError(f"a_star needs {self.dim} coordinates, got {len(self.a_star)}")
        return self


@dataclass(frozen=True)
class EstimatorRun:
    """One estimator's guided sampling, as arrays for drawing.

    Attributes:
        name: the estimator.
        a_t: ``[T+1, N, d]`` iterates a_0 .. a_T.
        final: ``[N, d]`` final (clipped) actions.
        component: ``[N]`` the mode each final action belongs to.
        off_data: ``[N]`` True where a final action is off the data (> 3 stds from every mode).
        grad: ``[T, N, d]`` the estimator's gradient G at each step.
        misdirected: ``[T]`` fraction of particles whose G points away from where the true
            Q would send them (``core.toy.misdirected_fraction``); NaN where G is 0, and
            everywhere in a view published before this slower diagnostic was computed.
        field: ``[T, M, d]`` guided velocity ``v + w G`` on the 2-D arrow grid (empty in 1-D).
        star_share: fraction of final actions on a*'s mode.
        off_share: fraction of final actions off the data.
        q_true: mean exact Q of the final actions.
        grad_max, grad_median: of ``|G|`` over all steps and particles.
        nonfinite: particles flagged non-finite by the sampler.
        seconds: time to sample and analyse.
    """

    name: str
    a_t: np.ndarray
    final: np.ndarray
    component: np.ndarray
    off_data: np.ndarray
    grad: np.ndarray
    misdirected: np.ndarray
    field: np.ndarray
    star_share: float
    off_share: float
    q_true: float
    grad_max: float
    grad_median: float
    nonfinite: int
    seconds: float


@dataclass(frozen=True)
class ToyView:
    """A drawable snapshot of the toy for one ``ToySettings``.

    Attributes:
        settings: what produced it (``a_star`` filled in).
        problem: the toy problem.
        a_star: ``[d]``.
        star_component: index of a*'s mode.
        mode_weights: ``[K]`` the data's mode proportions.
        mode_means: ``[K, d]``.
        runs: one ``EstimatorRun`` per shown estimator, in display order.
        unguided_share: ``[K]`` mode proportions of unguided sampling with the same noise.
        times: ``[T+1]`` flow time of each iterate.
        density_grid: ``[G]`` (1-D) action values where densities are given.
        density: ``[T+1, G]`` (1-D) unguided marginal p_t at each step's t.
        background: ``[G, TIME_COLUMNS]`` (1-D) p_t on (a, t), each column scaled to max 1.
        background_times: ``[TIME_COLUMNS]``.
        star_path: ``[TIME_COLUMNS]`` (1-D) where the unguided flow is at each of those
            times if it ends at a* (``core.toy.path_to``): where guidance should steer.
        heat_critic: ``[H, H]`` (2-D) critic value on the grid, row 0 at the top (y max).
        heat_density: ``[T+1, H, H]`` (2-D) unguided p_t per step, same layout.
        heat_axis: ``[H]`` (2-D) grid coordinates along each axis (ascending).
        field_points: ``[M, d]`` (2-D) where the arrows start.
        data: ``[D, d]`` data samples (for the fitted critic: the ones it was fitted on).
        critic_note: one line about the critic (fit error).
        seconds: time to compute the whole view.
    """

    settings: ToySettings
    problem: ToyProblem
    a_star: np.ndarray
    star_component: int
    mode_weights: np.ndarray
    mode_means: np.ndarray
    runs: dict[str, EstimatorRun]
    unguided_share: np.ndarray
    times: np.ndarray
    density_grid: np.ndarray
    density: np.ndarray
    background: np.ndarray
    background_times: np.ndarray
    star_path: np.ndarray
    heat_critic: np.ndarray
    heat_density: np.ndarray
    heat_axis: np.ndarray
    field_points: np.ndarray
    data: np.ndarray
    critic_note: str
    seconds: float


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


@dataclass
class _FitCache:
    """Fitted critics by (dim, a*), least recently used dropped first."""

    items: OrderedDict = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, problem: ToyProblem, a_star: tuple[float, ...]) -> nn.Module:
        key = (problem.name, tuple(round(a, 6) for a in a_star))
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        critic = fit_critic(
            problem.mixture, problem.exact_critic(a_star), n_samples=512, steps=400, seed=0
        )
        with self.lock:
            self.items[key] = critic
            while len(self.items) > _FIT_CACHE_SIZE:
                self.items.popitem(last=False)
        return critic


def guided_field(
    flow: MixtureFlow,
    critic: nn.Module,
    estimator: str,
    weight: float,
    points: torch.Tensor,
    steps: int,
    clip: bool = True,
) -> torch.Tensor:
    """``[T, M, d]`` the guided velocity ``v + w G`` at fixed ``points [M, d]`` at each step.

    What a particle standing at a point at step k would be pushed along: the arrows of the
    2-D view. Uses the registered estimator itself, so custom estimators draw too.
    """
    obs = points.new_zeros(points.shape[0], 0)
    out = torch.empty(steps, *points.shape, dtype=points.dtype)
    estimate = ESTIMATORS[estimator]
    for k in range(steps):
        t = torch.full((points.shape[0],), k / steps, dtype=points.dtype)
        with torch.no_grad():
            v = flow(obs, points, t)
            a_hat = points + (1.0 - k / steps) * v
            a_hat = a_hat.clamp(-1.0, 1.0) if clip else a_hat
        step = GuidanceStep(flow, critic, obs, points, t, v, a_hat, k, steps, clip)
        g, _ = estimate(step)
        g = torch.where(torch.isfinite(g), g, torch.zeros_like(g))
        out[k] = v + weight * g
    return out


class ToySession:
    """Toy state and sampling; the window reads ``view`` and calls ``update``.

    Synchronous use (tests, scripts)::

        s = ToySession(ToySettings(dim=2, critic="fitted"))
        view = s.compute()

    Background use (the window): ``update(...)`` then ``request()``; each frame ``poll()``
    installs a finished view (and re-raises a worker's exception, so the caller can show
    it); ``view`` is the latest one.
    """

    def __init__(self, settings: ToySettings | None = None) -> None:
        self._settings = (settings or ToySettings()).validated()
        self._fits = _FitCache()
        self._view: ToyView | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._future: Future | None = None
        self._pending = False
        self._early: ToyView | None = None  # published by the worker before diagnostics
        self._lock = threading.Lock()
        self.busy_since: float | None = None

    # ---------------------------------------------------------------- settings

    @property
    def settings(self) -> ToySettings:
        return self._settings

    @property
    def view(self) -> ToyView | None:
        """The latest finished view (None before the first)."""
        return self._view

    def problem(self, dim: int | None = None) -> ToyProblem:
        return PROBLEMS[self._settings.dim if dim is None else dim]()

    def a_star(self) -> tuple[float, ...]:
        """The current optimum (the problem's default when none was set)."""
        if self._settings.a_star is not None:
            return self._settings.a_star
        return tuple(float(a) for a in self.problem().a_star)

    def update(self, **changes) -> ToySettings:
        """Change settings (``ToySettings`` field names). Switching ``dim`` resets a*.

        Raises ValueError (and keeps the old settings) when the result is invalid.
        """
        if "dim" in changes and changes["dim"] != self._settings.dim and "a_star" not in changes:
            changes["a_star"] = None
        if "estimators" in changes:
            changes["estimators"] = tuple(changes["estimators"])
        if changes.get("a_star") is not None:
            changes["a_star"] = tuple(float(a) for a in changes["a_star"])
        self._settings = replace(self._settings, **changes).validated()
        return self._settings

    # ---------------------------------------------------------------- computing

    def compute(self, settings: ToySettings | None = None) -> ToyView:
        """Compute (and install) the view for ``settings`` (default: the current ones)."""
        view, traces = self._compute((settings or self._settings).validated())
        self._view = self._with_diagnostics(view, traces)
        return self._view

    def _critic(self, problem: ToyProblem, settings: ToySettings) -> tuple[nn.Module, str]:
        a_star = settings.a_star
        if settings.critic == "exact":
            return problem.exact_critic(a_star), "exact: Q = -|a - a*| everywhere"
        critic = self._fits.get(problem, a_star)
        rep = critic.report
        return critic, (
            f"fitted on {rep.data.shape[0]} data samples only: "
            f"max |error| on data {rep.max_error_on_data:.3f}"
        )

    def _compute(self, settings: ToySettings) -> tuple[ToyView, dict[str, DenoiseTrace]]:
        """The view without the misdirection diagnostics (``misdirected`` all NaN), and the
        traces ``_with_diagnostics`` needs to add them."""
        start = time.perf_counter()
        problem = PROBLEMS[settings.dim]()
        if settings.a_star is None:
            settings = replace(settings, a_star=tuple(float(a) for a in problem.a_star))
        flow = problem.flow()
        exact = problem.exact_critic(settings.a_star)
        critic, note = self._critic(problem, settings)
        mixture = problem.mixture
        d, n, steps = problem.dim, settings.samples, settings.steps
        gen = torch.Generator().manual_seed(settings.seed)
        noise = torch.randn(n, d, generator=gen, dtype=torch.float64)
        obs = torch.zeros(n, 0, dtype=torch.float64)
        star = problem.star_component(settings.a_star)

        if d == 2:
            axis = torch.linspace(-PLOT_LIMIT, PLOT_LIMIT, FIELD_POINTS, dtype=torch.float64)
            fx, fy = torch.meshgrid(axis, axis, indexing="xy")
            field_points = torch.stack([fx.reshape(-1), fy.reshape(-1)], dim=-1)
        else:
            field_points = torch.zeros(0, d, dtype=torch.float64)

        def sample(name: str, weight: float):
            return guided_sample(
                flow, critic, obs, estimator=name, weight=weight, steps=steps, noise=noise
            )

        unguided = sample("none", 0.0)
        runs: dict[str, EstimatorRun] = {}
        traces: dict[str, DenoiseTrace] = {}
        for name in settings.estimators:
            t0 = time.perf_counter()
            trace = unguided if name == "none" else sample(name, settings.weight)
            traces[name] = trace
            final = trace.final
            g = trace.grad.abs()
            fld = (
                guided_field(flow, critic, name, settings.weight, field_points, steps)
                if d == 2
                else torch.zeros(steps, 0, d, dtype=torch.float64)
            )
            finite_g = g[torch.isfinite(g)]
            runs[name] = EstimatorRun(
                name=name,
                a_t=_np(trace.a_t),
                final=_np(final),
                component=_np(mixture.assign(final)),
                off_data=_np(mixture.off_data(final)),
                grad=_np(trace.grad),
                misdirected=np.full(steps, np.nan),
                field=_np(fld),
                star_share=float(mixture.mode_mass(final)[star]),
                off_share=float(mixture.off_data(final).double().mean()),
                q_true=float(exact(obs, final).mean()),
                grad_max=float(finite_g.max()) if finite_g.numel() else float("nan"),
                grad_median=float(finite_g.median()) if finite_g.numel() else float("nan"),
                nonfinite=int(trace.nonfinite.sum()),
                seconds=time.perf_counter() - t0,
            )

        times = np.arange(steps + 1) / steps
        empty = np.zeros((0,))
        density_grid, density, background, background_times = empty, empty, empty, empty
        star_path = empty
        heat_critic, heat_density, heat_axis = empty, empty, empty
        if d == 1:
            grid = torch.linspace(
                -DENSITY_LIMIT, DENSITY_LIMIT, DENSITY_POINTS, dtype=torch.float64
            )
            density_grid = _np(grid)
            density = np.stack([_np(flow.density(grid[:, None], float(t))) for t in times])
            background_times = np.linspace(0.0, 1.0, TIME_COLUMNS)
            cols = np.stack([_np(flow.density(grid[:, None], float(t))) for t in background_times])
            background = (cols / cols.max(axis=1, keepdims=True)).T
            star_path = _np(path_to(mixture, settings.a_star[0], torch.as_tensor(background_times)))
        else:
            ax = torch.linspace(-PLOT_LIMIT, PLOT_LIMIT, HEAT_POINTS, dtype=torch.float64)
            # Row 0 is the top of the picture (largest y), as implot's heat series expects.
            hx, hy = torch.meshgrid(ax, ax.flip(0), indexing="xy")
            pts = torch.stack([hx.reshape(-1), hy.reshape(-1)], dim=-1)
            with torch.no_grad():
                heat_critic = _np(critic(pts.new_zeros(pts.shape[0], 0), pts)).reshape(
                    HEAT_POINTS, HEAT_POINTS
                )
            heat_density = np.stack(
                [_np(flow.density(pts, float(t))).reshape(HEAT_POINTS, HEAT_POINTS) for t in times]
            )
            heat_axis = _np(ax)

        if settings.critic == "fitted":
            data = critic.report.data[:DATA_POINTS].double()
        else:
            data = mixture.sample(DATA_POINTS, torch.Generator().manual_seed(1), torch.float64)[0]

        view = ToyView(
            settings=settings,
            problem=problem,
            a_star=np.asarray(settings.a_star, dtype=np.float64),
            star_component=star,
            mode_weights=_np(mixture.weights),
            mode_means=_np(mixture.means),
            runs=runs,
            unguided_share=_np(mixture.mode_mass(unguided.final)),
            times=times,
            density_grid=density_grid,
            density=density,
            background=background,
            background_times=background_times,
            star_path=star_path,
            heat_critic=heat_critic,
            heat_density=heat_density,
            heat_axis=heat_axis,
            field_points=_np(field_points),
            data=_np(data),
            critic_note=note,
            seconds=time.perf_counter() - start,
        )
        return view, traces

    @staticmethod
    def _with_diagnostics(view: ToyView, traces: dict[str, DenoiseTrace]) -> ToyView:
        """``view`` with each run's ``misdirected`` filled in (the slow part: one rollout
        with a backward pass per step and estimator)."""
        start = time.perf_counter()
        flow = view.problem.flow()
        exact = view.problem.exact_critic(view.settings.a_star)
        runs = {
            name: replace(run, misdirected=_np(misdirected_fraction(flow, exact, traces[name])))
            for name, run in view.runs.items()
        }
        return replace(view, runs=runs, seconds=view.seconds + time.perf_counter() - start)

    # ---------------------------------------------------------------- background work

    def request(self) -> None:
        """Compute a view for the current settings on the worker thread.

        While one is running, further requests are folded into one that starts when it
        ends (with the settings current at that moment).
        """
        if self._future is not None and not self._future.done():
            self._pending = True
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="toy")
        self._pending = False
        self.busy_since = time.perf_counter()
        self._future = self._executor.submit(self._work, self._settings)

    def _work(self, settings: ToySettings) -> ToyView:
        """Worker: publish the view as soon as the samples are drawn (``poll`` shows it),
        then add the diagnostics unless a newer request is already waiting."""
        view, traces = self._compute(settings)
        with self._lock:
            self._early = view
        if self._pending:
            return view
        return self._with_diagnostics(view, traces)

    @property
    def busy(self) -> bool:
        """True while a view is being computed or one is queued."""
        return self._pending or (self._future is not None and not self._future.done())

    def poll(self) -> bool:
        """Install a finished view; True if one was installed.

        Re-raises the worker's exception (once), so the caller can report it.
        """
        future = self._future
        with self._lock:
            early, self._early = self._early, None
        if future is None or not future.done():
            if early is not None:
                self._view = early
                return True
            return False
        self._future = None
        self.busy_since = None
        if self._pending:
            self.request()
        view = future.result()  # re-raises a worker exception
        self._view = view
        return True

    def wait(self, timeout: float | None = None) -> ToyView | None:
        """Block until no work is running or queued; return the latest view.

        Re-raises a worker's exception like ``poll``; raises TimeoutError after ``timeout``.
        """
        deadline = None if timeout is None else time.perf_counter() + timeout
        while self._future is not None:
            remaining = None if deadline is None else max(deadline - time.perf_counter(), 0.0)
            futures_wait([self._future], timeout=remaining)
            if not self._future.done():
                raise TimeoutError(f"the toy view was not ready within {timeout} s")
            self.poll()
        return self._view

    def close(self) -> None:
        """Stop the worker thread (waits for a running computation)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self._future = None
