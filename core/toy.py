"""The paper's toy examples: an exact flow from N(0, I) to a Gaussian mixture, and its critic.

No training is needed for the policy. Under the linear path ``a_t = (1 - t) a_0 + t a_1`` with
``a_0 ~ N(0, I)`` and ``a_1 ~ sum_k pi_k N(mu_k, sigma_k^2 I)``, everything is Gaussian given
the component ``k``::

    a_t | k           ~ N(t mu_k, s_k(t)^2 I),      s_k(t)^2 = (1 - t)^2 + t^2 sigma_k^2
    E[a_1 | a_t, k]   = mu_k + (t sigma_k^2 / s_k^2) (a_t - t mu_k)
    E[a_0 | a_t, k]   =        ((1 - t)   / s_k^2) (a_t - t mu_k)

so the marginal ``p_t`` is itself a Gaussian mixture (same weights, means ``t mu_k``, stds
``s_k(t)``) and the flow-matching velocity ``v(a_t, t) = E[a_1 - a_0 | a_t]`` is the
responsibility-weighted sum of the per-component conditional means::

    v(a_t, t) = sum_k r_k(a_t, t) [mu_k + ((t sigma_k^2 - (1 - t)) / s_k^2) (a_t - t mu_k)]
    r_k(a_t, t) = pi_k N(a_t; t mu_k, s_k^2 I) / p_t(a_t)

With every ``sigma_k > 0``, ``s_k(t) >= min(sigma_k, 1) / sqrt(2)`` on [0, 1]: nothing divides
by ``1 - t`` and the field stays finite up to and including ``t = 1`` (where it equals
``a_t``: a_0 is independent of a_1, so ``E[a_0 | a_1] = 0``). The responsibilities are
computed with a log-sum-exp, so the sharp posteriors near ``t = 1`` do not underflow. (The
sampler never evaluates ``t = 1`` anyway: it uses ``t = k / T`` for ``k < T``.) Point masses
(``sigma = 0``) are refused: their field blows up like ``1 / (1 - t)``.

The critic is ``Q(a) = -||a - a*||``, given two ways:

- ``DistanceCritic``: exact everywhere, including at the noisy ``a_t`` no real critic has
  seen.
- ``FittedCritic``: a small MLP (the reference critic's architecture: GELU, LayerNorm)
  regressed onto ``-||a - a*||`` at samples of the mixture only, as a real critic is fitted
  only on dataset actions. On the data it agrees with the exact Q; off it (between and
  beyond the modes, where noisy ``a_t`` live) it is whatever the fit made it.

Both critics and the flow take a dummy observation ``obs [B, O]`` (``O`` may be 0) so they
plug straight into ``core.guidance.guided_sample``.

The OOD finding. The paper (Fig. 2) reports that OOD guidance (the critic's gradient at the
noisy ``a_t``) misdirects the flow to a suboptimal mode *at every weight*, while QGF and
BPTT reach ``a*``. What we reproduce, in ``tri_modal_1d`` (T = 25, 1000 particles, one
noise draw; share of final actions on a*'s mode, unguided 0.15)::

    weight             0.1   0.3   0.6   1     2     4     10
    exact   qgf        0.18  0.33  0.58  0.85  1.00  0.48  0.34
            ood        0.13  0.15  0.60  0.95  0.87  0.41  0.47
            bptt       0.25  0.37  0.48  0.61  0.77  0.85  0.08 (61% off the data)
    fitted  qgf        0.17  0.31  0.56  0.91  1.00  1.00  1.00
            ood        0.13  0.14  0.13  0.22  0.99  1.00  0.00 (39% off the data)
            bptt       0.26  0.39  0.52  0.65  0.86  0.96  0.95

1. Small weights, either critic: misdirection reproduced. OOD does not raise a*'s share at
   all and sends extra mass to the heavy suboptimal mode (0.65 -> 0.77 at w = 0.3) while
   QGF doubles a*'s share. Why, although the exact OOD gradient ``sign(a* - a_t)`` always
   points towards a* in action space: a 1-D flow preserves order, so the noise that ends on
   a*'s mode is the slice of N(0, 1) between the cumulative weights 0.65 and 0.80, i.e.
   ``a_0`` in about (0.39, 0.84) -- on the far side of ``a* = -0.35``. For those particles
   "towards a* in action space" is the wrong way; they are pushed across into the heavy
   mode. QGF reads the critic at ``a_hat = E[a_1 | a_t]``, which already sits in data
   space, and pushes the wrong way less often (``misdirected_fraction``, first half of
   the steps at w = 0.3: QGF 29%, OOD 34% with the exact critic and 37% with the fitted;
   at the first step 27% against 37% and 47%).
2. Moderate weights, fitted critic: misdirection reproduced up to w = 1, in a milder form
   than the paper's. The fitted critic is right on the data (max error 0.05) but its slope
   fades off it (|dQ/da| < 0.5 for a >= 0.7, where the exact one is 1): the particles that
   should end on a*'s mode start right of all the data and get little pull, while those
   in the data range are pulled left. At w = 1 most OOD particles end stranded at
   a ~ -0.43, between the heavy mode and a* (0.08 from a*, off both modes, mean true Q
   -0.09 vs QGF's -0.04), which the mode assignment counts as the heavy mode.
3. Large weights: not reproduced. With w = 2 OOD reaches a* with either critic. This is
   unavoidable for ``Q = -|a - a*|``: once ``w`` exceeds the flow's speed near a*, OOD
   guidance is plain gradient ascent on Q in ``a_t`` and converges to ``a*`` no matter how
   wrong the early pushes were; the fitted critic is accurate near a*, so it does too. We
   found no placement of a* (we searched 600 random tri-modal mixtures with a* at the middle
   mode at T = 10, and a dozen hand-made ones at T = 10, 25, 50) where OOD misses a* at
   every weight while QGF reaches it. At w >= 4 other failures take over: with the
   kinked exact critic QGF and OOD chatter around a* with amplitude ``w / T``, wider than
   a*'s mode (std 0.03), and BPTT's gradient explodes (below). The fitted critic is smooth
   at its peak: QGF, read at a_hat near the mode's centre where that peak is flat, stays
   on a*'s mode, but OOD at w = 10 jumps back and forth across the peak (steps of up to
   w |G| / T ~ 0.5) and ends either side of it, at about -0.55 and -0.15 (39% off data).

BPTT instability (paper Fig. 14): reproduced. BPTT's gradient ``J^T grad Q`` spans orders of
magnitude (median 0.26, max ~12 at w = 1): tiny where the flow contracts into a mode,
huge near the boundaries between modes. At w = 10 with the exact critic it throws 61% of
the particles off the data, QGF 5%.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from core.guidance import DenoiseTrace, euler
from core.models import MLP

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class GaussianMixture:
    """``sum_k weights[k] N(means[k], stds[k]^2 I)`` in ``d`` dims.

    Attributes:
        means: ``[K, d]`` component means.
        stds: ``[K]`` isotropic standard deviations (all > 0).
        weights: ``[K]`` mixing proportions (sum to 1).
    """

    means: Tensor
    stds: Tensor
    weights: Tensor

    def __post_init__(self) -> None:
        if self.means.ndim != 2:
            raise ValueError(f"means must be [K, d], got {list(self.means.shape)}")
        k = self.means.shape[0]
        if self.stds.shape != (k,) or self.weights.shape != (k,):
            raise ValueError("stds and weights must be [K] with K = means.shape[0]")
        if not bool((self.stds > 0).all()):
            raise ValueError("every component needs std > 0 (a point mass has no finite flow)")
        if not bool((self.weights > 0).all()) or abs(float(self.weights.sum()) - 1.0) > 1e-6:
            raise ValueError("weights must be positive and sum to 1")

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def _params(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # ``.to(like)``: like's dtype and device.
        return self.means.to(like), self.stds.to(like), self.weights.to(like)

    def component_log_prob(self, x: Tensor) -> Tensor:
        """``[N, K]``: ``log pi_k + log N(x; mu_k, sigma_k^2 I)`` for ``x [N, d]``."""
        means, stds, weights = self._params(x)
        sq = ((x[:, None, :] - means[None]) ** 2).sum(-1)
        d = self.dim
        return (
            weights.log()[None]
            - 0.5 * sq / stds[None] ** 2
            - d * stds.log()[None]
            - 0.5 * d * _LOG_2PI
        )

    def log_prob(self, x: Tensor) -> Tensor:
        """``[N]`` log density at ``x [N, d]``."""
        return torch.logsumexp(self.component_log_prob(x), dim=-1)

    def responsibilities(self, x: Tensor) -> Tensor:
        """``[N, K]`` posterior probability of each component given ``x [N, d]``."""
        return torch.softmax(self.component_log_prob(x), dim=-1)

    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> tuple[Tensor, Tensor]:
        """Draw ``n`` points on the CPU: ``(x [n, d], component [n])``."""
        k = torch.multinomial(self.weights.double().cpu(), n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means.double().cpu()[k] + self.stds.double().cpu()[k, None] * eps
        return x.to(dtype), k

    def marginal(self, t: float) -> GaussianMixture:
        """The flow's marginal ``p_t`` (a mixture too): means ``t mu_k``, stds ``s_k(t)``."""
        return GaussianMixture(
            means=t * self.means,
            stds=torch.sqrt((1.0 - t) ** 2 + t**2 * self.stds**2),
            weights=self.weights,
        )

    def cdf(self, x: Tensor) -> Tensor:
        """``[N]`` the distribution function at ``x [N]`` (1-D mixtures only)."""
        if self.dim != 1:
            raise ValueError("cdf is defined for 1-D mixtures only")
        means, stds, weights = self._params(x)
        z = (x[:, None] - means[None, :, 0]) / (stds[None] * math.sqrt(2.0))
        return (weights[None] * 0.5 * (1.0 + torch.erf(z))).sum(-1)

    def assign(self, x: Tensor) -> Tensor:
        """``[N]`` the most responsible component for each ``x [N, d]``."""
        return self.component_log_prob(x).argmax(dim=-1)

    def off_data(self, x: Tensor, n_std: float = 3.0) -> Tensor:
        """``[N]`` True where ``x`` is more than ``n_std`` stds from every component mean."""
        means, stds, _ = self._params(x)
        dist = torch.linalg.vector_norm(x[:, None, :] - means[None], dim=-1) / stds[None]
        return dist.min(dim=-1).values > n_std

    def mode_mass(self, x: Tensor) -> Tensor:
        """``[K]`` fraction of the points ``x [N, d]`` assigned to each component."""
        counts = torch.bincount(self.assign(x), minlength=self.n_components)
        return counts.to(torch.float64) / x.shape[0]


class MixtureFlow(nn.Module):
    """The exact flow-matching velocity from ``N(0, I)`` to a ``GaussianMixture``.

    ``forward(obs [B, O], a_t [B, d], t [B]) -> v [B, d]``; ``obs`` is ignored. Works in the
    dtype and on the device of ``a_t``; differentiable in ``a_t`` (for qgf_jacobian, bptt).
    """

    def __init__(self, mixture: GaussianMixture) -> None:
        super().__init__()
        self.mixture = mixture
        self.action_dim = mixture.dim

    def forward(self, obs: Tensor, a_t: Tensor, t: Tensor) -> Tensor:
        means, stds, weights = self.mixture._params(a_t)
        t = t.to(a_t.dtype)[:, None]  # [B, 1]
        s2 = (1.0 - t) ** 2 + t**2 * stds[None] ** 2  # [B, K]
        centred = a_t[:, None, :] - t[:, :, None] * means[None]  # [B, K, d]
        d = a_t.shape[1]
        log_r = weights.log()[None] - 0.5 * (centred**2).sum(-1) / s2 - 0.5 * d * s2.log()
        r = torch.softmax(log_r, dim=-1)  # [B, K]
        coef = (t * stds[None] ** 2 - (1.0 - t)) / s2  # [B, K]
        v_k = means[None] + coef[:, :, None] * centred  # [B, K, d]
        return (r[:, :, None] * v_k).sum(dim=1)

    def marginal(self, t: float) -> GaussianMixture:
        """``p_t`` in closed form."""
        return self.mixture.marginal(t)

    def density(self, x: Tensor, t: float) -> Tensor:
        """``[N]`` the marginal density ``p_t(x)`` at ``x [N, d]``."""
        return self.marginal(t).log_prob(x).exp()

    def posterior_mean(self, a_t: Tensor, t: Tensor) -> Tensor:
        """``E[a_1 | a_t] = a_t + (1 - t) v``: the one-step estimate a_hat, unclipped."""
        obs = a_t.new_zeros(a_t.shape[0], 0)
        return a_t + (1.0 - t.to(a_t.dtype))[:, None] * self(obs, a_t, t)


class DistanceCritic(nn.Module):
    """The exact critic ``Q(obs, a) = -||a - a*||`` (``obs`` ignored): ``[B, d] -> [B]``."""

    a_star: Tensor  # a buffer

    def __init__(self, a_star: Sequence[float] | Tensor) -> None:
        super().__init__()
        self.register_buffer("a_star", torch.as_tensor(a_star, dtype=torch.float64).reshape(-1))

    def forward(self, obs: Tensor, a: Tensor) -> Tensor:
        return -torch.linalg.vector_norm(a - self.a_star.to(a.device, a.dtype), dim=-1)


@dataclass
class FitReport:
    """How a ``FittedCritic`` was fitted: the data it saw and its errors.

    Attributes:
        data: ``[N, d]`` the mixture samples it was regressed on (CPU, float32).
        loss: final mean squared error on ``data``.
        max_error_on_data: largest ``|Q_fit - Q|`` on ``data``.
        steps: optimiser steps taken.
    """

    data: Tensor
    loss: float
    max_error_on_data: float
    steps: int


class FittedCritic(nn.Module):
    """A small MLP ``Q(obs, a) -> [B]`` (``obs`` ignored) fitted by ``fit_critic``.

    Runs in its parameters' dtype; inputs of another dtype are cast in and the output is
    cast back, so it serves float32 and float64 samplers alike. ``fit_critic`` fits it on
    the CPU: move it (``.to(device)``) to sample on another device.
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (64, 64), layer_norm: bool = True):
        super().__init__()
        self.mlp = MLP(dim, hidden, 1, layer_norm=layer_norm)
        self.report: FitReport | None = None

    def forward(self, obs: Tensor, a: Tensor) -> Tensor:
        p = next(self.parameters())
        return self.mlp(a.to(p.dtype)).squeeze(-1).to(a.dtype)


def fit_critic(
    mixture: GaussianMixture,
    target: nn.Module,
    n_samples: int = 2048,
    steps: int = 1500,
    hidden: Sequence[int] = (64, 64),
    lr: float = 3e-3,
    seed: int = 0,
    layer_norm: bool = True,
) -> FittedCritic:
    """Regress a ``FittedCritic`` onto ``target`` at samples of ``mixture`` only.

    Full-batch Adam with a cosine-decayed step size, on the CPU in float32, seeded: the
    same arguments give the same network.

    Args:
        mixture: the data distribution (the critic never sees anything else).
        target: the critic to imitate, ``(obs, a [N, d]) -> [N]`` (e.g. ``DistanceCritic``).
        n_samples, steps, hidden, lr, seed, layer_norm: data size and fit settings.

    Returns:
        The fitted network, in eval mode, with ``.report`` (a ``FitReport``) set.
    """
    gen = torch.Generator().manual_seed(seed)
    data, _ = mixture.sample(n_samples, gen)
    obs = data.new_zeros(n_samples, 0)
    with torch.no_grad():
        y = target(obs, data.double()).float()
    torch.manual_seed(seed)
    critic = FittedCritic(mixture.dim, hidden, layer_norm)
    opt = torch.optim.Adam(critic.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        loss = ((critic(obs, data) - y) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    critic.eval()
    with torch.no_grad():
        err = (critic(obs, data) - y).abs()
    critic.report = FitReport(
        data=data, loss=float((err**2).mean()), max_error_on_data=float(err.max()), steps=steps
    )
    return critic


@dataclass(frozen=True)
class ToyProblem:
    """A data distribution and the optimum of its critic.

    Attributes:
        name: short label.
        mixture: the data (what the policy imitates and the critic is fitted on).
        a_star: ``[d]`` the optimum of ``Q(a) = -||a - a*||``.
        note: one line on what the setting shows.
    """

    name: str
    mixture: GaussianMixture
    a_star: Tensor
    note: str = ""

    @property
    def dim(self) -> int:
        return self.mixture.dim

    def flow(self) -> MixtureFlow:
        return MixtureFlow(self.mixture)

    def exact_critic(self, a_star: Sequence[float] | Tensor | None = None) -> DistanceCritic:
        return DistanceCritic(self.a_star if a_star is None else a_star)

    def star_component(self, a_star: Sequence[float] | Tensor | None = None) -> int:
        """Index of the component most responsible for ``a*``."""
        a = torch.as_tensor(self.a_star if a_star is None else a_star, dtype=torch.float64)
        return int(self.mixture.assign(a.reshape(1, -1)))


def _mixture(means: Sequence, stds: Sequence[float], weights: Sequence[float]) -> GaussianMixture:
    m = torch.tensor(means, dtype=torch.float64)
    return GaussianMixture(
        means=m.reshape(len(stds), -1),
        stds=torch.tensor(stds, dtype=torch.float64),
        weights=torch.tensor(weights, dtype=torch.float64),
    )


def tri_modal_1d() -> ToyProblem:
    """The 1-D toy of the paper's Fig. 2: noise to three modes, ``a*`` at the light middle one.

    A heavy, wide mode (65% of the data) sits left of ``a*``. The flow preserves order in
    1-D, so the noise that ends at ``a*``'s mode is the slice of N(0, 1) between the
    quantiles 0.65 and 0.80, i.e. ``a_0`` in about (0.39, 0.84): on the *other* side of
    ``a* = -0.35``. The critic's gradient at a noisy ``a_t`` points towards ``a*`` in action
    space, which for those particles is away from where they need to go.
    """
    return ToyProblem(
        name="1-D tri-modal",
        mixture=_mixture([[-0.7], [-0.35], [0.0]], [0.1, 0.03, 0.06], [0.65, 0.15, 0.2]),
        a_star=torch.tensor([-0.35], dtype=torch.float64),
        note="a* is the light middle mode; a heavy mode lies on its far side from the origin",
    )


def mixture_2d() -> ToyProblem:
    """A 2-D analogue: four modes, ``a*`` at a light narrow one next to a heavy wide one."""
    return ToyProblem(
        name="2-D four modes",
        mixture=_mixture(
            [[-0.6, -0.4], [-0.25, -0.15], [0.1, 0.55], [0.55, -0.1]],
            [0.12, 0.04, 0.07, 0.07],
            [0.55, 0.12, 0.17, 0.16],
        ),
        a_star=torch.tensor([-0.25, -0.15], dtype=torch.float64),
        note="a* is a light narrow mode beside the heavy wide one",
    )


PROBLEMS = {1: tri_modal_1d, 2: mixture_2d}
"""The toy problem for each action dimension."""


def path_to(mixture: GaussianMixture, a_1: float, times: Tensor, iters: int = 60) -> Tensor:
    """``[len(times)]`` where the unguided flow is at each time if it ends at ``a_1`` (1-D).

    A 1-D flow preserves order, so its path through ``a_1`` keeps the same quantile:
    ``F_t(x_t) = F_1(a_1)`` with ``F_t`` the closed-form CDF of ``p_t``, solved by
    bisection. This is where guidance must steer a particle at time ``t`` for it to end
    at ``a_1``; OOD guidance steers it to ``a_1`` itself.
    """
    if mixture.dim != 1:
        raise ValueError("path_to is defined for 1-D mixtures only")
    t = times.to(torch.float64)[:, None]  # [T, 1]
    mu = mixture.means[:, 0].double()[None]  # [1, K]
    sd = mixture.stds.double()[None]
    w = mixture.weights.double()[None]
    centre = t * mu  # [T, K]
    spread = torch.sqrt((1.0 - t) ** 2 + t**2 * sd**2) * math.sqrt(2.0)
    target = mixture.cdf(torch.tensor([float(a_1)], dtype=torch.float64))
    lo = torch.full_like(t[:, 0], -10.0)
    hi = torch.full_like(t[:, 0], 10.0)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        cdf = (w * 0.5 * (1.0 + torch.erf((mid[:, None] - centre) / spread))).sum(-1)
        below = cdf < target
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


def misdirected_fraction(
    velocity: MixtureFlow, q_true: nn.Module, trace: DenoiseTrace, eps: float = 1e-12
) -> Tensor:
    """Per step, the fraction of particles whose guidance points the wrong way.

    "The right way" at step ``k`` is ``d = grad_{a_t} Q_true(ODE(a_t))``: the direction in
    which moving ``a_t`` raises the true value of the action it will denoise to (the
    unguided Euler steps ``k .. T-1``, as the sampler takes them). A particle is misdirected
    when its estimator's gradient ``G`` has ``<G, d> < 0``. Particles with ``|G|`` or ``|d|``
    below ``eps`` (no opinion) are left out of the count.

    Args:
        velocity: the flow the trace was sampled with.
        q_true: the true critic (e.g. ``DistanceCritic``), not the fitted one.
        trace: a ``DenoiseTrace`` from ``guided_sample`` with this flow.

    Returns:
        ``[T]`` fractions in [0, 1] (NaN at a step where no particle had an opinion).
    """
    steps = trace.steps
    n = trace.a_t.shape[1]
    obs = trace.a_t.new_zeros(n, 0)
    out = torch.empty(steps, dtype=torch.float64)
    for k in range(steps):
        a = trace.a_t[k].detach().requires_grad_(True)
        with torch.enable_grad():
            value = q_true(obs, euler(velocity, obs, a, steps, start=k, clip=trace.clip))
            (d,) = torch.autograd.grad(value.sum(), a)
        g = trace.grad[k]
        counted = (g.norm(dim=-1) > eps) & (d.norm(dim=-1) > eps)
        wrong = ((g * d).sum(-1) < 0) & counted
        total = int(counted.sum())
        out[k] = float(wrong.sum()) / total if total else float("nan")
    return out
