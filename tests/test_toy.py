"""The toy flow and critics (core/toy.py): exact math, and the parts of the paper's Fig. 2 that
must hold (plus Fig. 14's BPTT instability and what we found about OOD misdirection)."""

from __future__ import annotations

import math

import pytest
import torch

from core.guidance import ESTIMATORS, euler, guided_sample
from core.toy import (
    DistanceCritic,
    GaussianMixture,
    MixtureFlow,
    fit_critic,
    misdirected_fraction,
    mixture_2d,
    path_to,
    tri_modal_1d,
)

F64 = torch.float64


def _velocity(flow: MixtureFlow, x: torch.Tensor, t: float) -> torch.Tensor:
    return flow(x.new_zeros(x.shape[0], 0), x, torch.full((x.shape[0],), t, dtype=x.dtype))


def _sample(problem, critic, estimator, weight, steps=25, n=1000, seed=1):
    noise = torch.randn(n, problem.dim, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return guided_sample(
        problem.flow(),
        critic,
        torch.zeros(n, 0, dtype=F64),
        estimator=estimator,
        weight=weight,
        steps=steps,
        noise=noise,
    )


def _star_share(problem, trace) -> float:
    return float(problem.mixture.mode_mass(trace.actions)[problem.star_component()])


def _binom_std(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def fitted_1d():
    problem = tri_modal_1d()
    return fit_critic(problem.mixture, problem.exact_critic(), n_samples=512, steps=400, seed=0)


# ---------------------------------------------------------------- the exact velocity field


@pytest.mark.parametrize("problem", [tri_modal_1d(), mixture_2d()], ids=["1d", "2d"])
@pytest.mark.parametrize("t", [0.0, 0.3, 0.7, 0.9])
def test_velocity_is_the_conditional_expectation(problem, t):
    """v(x, t) = E[a_1 - a_0 | a_t = x], checked by self-normalised importance sampling:
    draw a_1 from the data, set a_0 = (x - t a_1) / (1 - t), weight by N(a_0; 0, I)."""
    flow = problem.flow()
    gen = torch.Generator().manual_seed(0)
    points = torch.tensor([[-0.5, 0.2], [0.0, 0.0], [0.4, -0.3]], dtype=F64)[:, : problem.dim]
    v = _velocity(flow, points, t)
    for x, v_x in zip(points, v, strict=True):
        a_1, _ = problem.mixture.sample(400_000, gen, F64)
        a_0 = (x - t * a_1) / (1 - t)
        w = torch.softmax(-0.5 * (a_0**2).sum(-1), dim=0)
        f = a_1 - a_0
        mc = (w[:, None] * f).sum(0)
        # Delta-method standard error of a self-normalised IS mean.
        se = torch.sqrt((w[:, None] ** 2 * (f - mc) ** 2).sum(0))
        assert torch.all((v_x - mc).abs() <= 5 * se + 1e-9), (t, x, v_x, mc, se)


def _flux(flow: MixtureFlow, x: torch.Tensor, t: float, i: int) -> torch.Tensor:
    return flow.density(x, t) * _velocity(flow, x, t)[:, i]


@pytest.mark.parametrize("problem", [tri_modal_1d(), mixture_2d()], ids=["1d", "2d"])
def test_velocity_satisfies_the_continuity_equation(problem):
    """d/dt p_t + div(p_t v) = 0, by central finite differences in t and in x."""
    flow = problem.flow()
    h = 1e-5
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(64, problem.dim, generator=gen, dtype=F64) * 2 - 1
    for t in (0.1, 0.5, 0.8, 0.95):
        dp_dt = (flow.density(x, t + h) - flow.density(x, t - h)) / (2 * h)
        div = torch.zeros_like(dp_dt)
        for i in range(problem.dim):
            e = torch.zeros(problem.dim, dtype=F64)
            e[i] = h

            div += (_flux(flow, x + e, t, i) - _flux(flow, x - e, t, i)) / (2 * h)
        scale = dp_dt.abs().max()
        assert scale > 1e-3  # the check is not vacuous
        assert torch.allclose(dp_dt, -div, atol=1e-5 * float(scale) + 1e-8), t


@pytest.mark.parametrize("t", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_marginal_density_integrates_to_one(t):
    flow = tri_modal_1d().flow()
    x = torch.linspace(-6, 6, 12_001, dtype=F64)[:, None]
    p = flow.density(x, t)
    assert abs(float(torch.trapezoid(p, x[:, 0])) - 1.0) < 1e-6

    flow2 = mixture_2d().flow()
    # Spacing 0.02 is half the narrowest std: the trapezoid rule is near-exact for Gaussians.
    g = torch.linspace(-6, 6, 601, dtype=F64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    p2 = flow2.density(torch.stack([xx.reshape(-1), yy.reshape(-1)], -1), t).reshape(601, 601)
    assert abs(float(torch.trapezoid(torch.trapezoid(p2, g), g)) - 1.0) < 1e-6


def test_marginal_is_the_law_of_the_linear_path():
    """p_t's mean and variance equal those of (1 - t) a_0 + t a_1 (closed form)."""
    problem = tri_modal_1d()
    m = problem.mixture
    mu = float((m.weights * m.means[:, 0]).sum())
    second = float((m.weights * (m.means[:, 0] ** 2 + m.stds**2)).sum())
    for t in (0.2, 0.6):
        p = m.marginal(t)
        mean = float((p.weights * p.means[:, 0]).sum())
        var = float((p.weights * (p.means[:, 0] ** 2 + p.stds**2)).sum()) - mean**2
        assert mean == pytest.approx(t * mu)
        assert var == pytest.approx((1 - t) ** 2 + t**2 * (second - mu**2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_field_is_finite_up_to_t_equal_one(dtype):
    flow = mixture_2d().flow()
    x = torch.tensor([[-3.0, 2.0], [0.0, 0.0], [-0.25, -0.15], [5.0, 5.0]], dtype=dtype)
    for t in (0.99, 0.999, 0.999999, 1.0):
        v = _velocity(flow, x, t)
        assert torch.isfinite(v).all(), t
    # At t = 1, a_0 is independent of a_1 = x, so E[a_1 - a_0 | x] = x.
    assert torch.allclose(_velocity(flow, x, 1.0), x)


def test_point_masses_are_refused():
    with pytest.raises(ValueError, match="std > 0"):
        GaussianMixture(torch.zeros(2, 1), torch.tensor([0.1, 0.0]), torch.tensor([0.5, 0.5]))


def test_posterior_mean_is_the_one_step_estimate():
    flow = tri_modal_1d().flow()
    x = torch.linspace(-2, 2, 9, dtype=F64)[:, None]
    t = torch.full((9,), 0.4, dtype=F64)
    assert torch.allclose(flow.posterior_mean(x, t), x + 0.6 * _velocity(flow, x, 0.4))


# ---------------------------------------------------------------- the critics


def test_distance_critic_value_and_gradient():
    q = DistanceCritic([0.3, -0.4])
    a = torch.tensor([[0.3, -0.4], [0.3, 0.6], [1.3, -0.4]], dtype=F64, requires_grad=True)
    value = q(torch.zeros(3, 0), a)
    assert torch.allclose(value, torch.tensor([0.0, -1.0, -1.0], dtype=F64))
    (g,) = torch.autograd.grad(value.sum(), a)
    assert torch.allclose(g[1:], torch.tensor([[0.0, -1.0], [-1.0, 0.0]], dtype=F64))
    assert torch.isfinite(g[0]).all()


@pytest.mark.slow  # fits a critic
def test_fitted_critic_is_right_on_data_and_wrong_off_it(fitted_1d):
    """What a real critic is: trusted on the data, not beyond. Right of the data (a >= 0.7,
    where the noise that should end at a* starts) its slope has faded while the exact one
    stays -1: that fading is what lets OOD guidance misdirect at moderate weights."""
    problem = tri_modal_1d()
    exact = problem.exact_critic()
    assert fitted_1d.report.max_error_on_data < 0.1
    data, _ = problem.mixture.sample(2000, torch.Generator().manual_seed(7), F64)
    obs = torch.zeros(2000, 0, dtype=F64)
    with torch.no_grad():
        err = (fitted_1d(obs, data) - exact(obs, data)).abs()
    assert float(err.mean()) < 0.03
    x = torch.linspace(0.7, 2.0, 14, dtype=F64)[:, None].requires_grad_(True)
    (g,) = torch.autograd.grad(fitted_1d(torch.zeros(14, 0), x).sum(), x)
    assert float(g.abs().max()) < 0.5
    with torch.no_grad():
        assert float((fitted_1d(obs[:14], x) - exact(obs[:14], x)).abs().max()) > 0.5


# ---------------------------------------------------------------- the sampler's contract


@pytest.mark.parametrize("problem", [tri_modal_1d(), mixture_2d()], ids=["1d", "2d"])
@pytest.mark.parametrize("critic_kind", ["exact", "fitted"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_usable_as_velocity_and_q_with_every_estimator(problem, critic_kind, dtype):
    flow = problem.flow()
    if critic_kind == "exact":
        q = problem.exact_critic()
    else:
        q = fit_critic(problem.mixture, problem.exact_critic(), n_samples=128, steps=20)
    for obs_dim in (0, 1):
        obs = torch.zeros(6, obs_dim, dtype=dtype)
        for name in ESTIMATORS:
            trace = guided_sample(
                flow, q, obs, estimator=name, weight=0.5, steps=4, generator=torch.Generator()
            )
            assert trace.actions.shape == (6, problem.dim)
            assert trace.actions.dtype == dtype
            assert torch.isfinite(trace.a_t).all() and not trace.nonfinite.any(), name


# ---------------------------------------------------------------- Fig. 2


@pytest.mark.parametrize("problem", [tri_modal_1d(), mixture_2d()], ids=["1d", "2d"])
def test_weight_zero_reproduces_the_mode_proportions(problem):
    """Unguided sampling lands on each mode as often as the data does.

    The reference is the fraction of data samples assigned to each mode (by the same rule),
    from 400k direct draws (its own error, ~0.0007, is negligible). With n = 20000 flow
    samples the tolerance is 4 binomial stds. T = 100: Euler with T = 10 shifts ~1% of the
    mass between modes, at T = 100 the bias is ~0.003, within one std."""
    m = problem.mixture
    ref = m.mode_mass(m.sample(400_000, torch.Generator().manual_seed(11), F64)[0])
    n = 20_000
    trace = _sample(problem, problem.exact_critic(), "qgf", 0.0, steps=100, n=n, seed=5)
    got = m.mode_mass(trace.actions)
    for k in range(m.n_components):
        tol = 4 * _binom_std(float(ref[k]), n)
        assert abs(float(got[k]) - float(ref[k])) < tol, (k, got, ref)
    assert torch.allclose(ref, m.weights, atol=0.005)


def test_weight_zero_is_the_same_for_every_estimator():
    """So the proportions above hold for all of them (the sampler applies 0 * G exactly)."""
    problem = tri_modal_1d()
    base = _sample(problem, problem.exact_critic(), "none", 0.0, steps=10, n=200).actions
    for name in ESTIMATORS:
        trace = _sample(problem, problem.exact_critic(), name, 0.0, steps=10, n=200)
        assert torch.equal(trace.actions, base), name


@pytest.mark.slow  # fits a critic
def test_qgf_and_bptt_move_the_mass_to_a_star(fitted_1d):
    problem = tri_modal_1d()
    exact = problem.exact_critic()
    base = _star_share(problem, _sample(problem, exact, "none", 0.0))
    assert base < 0.2
    for critic in (exact, fitted_1d):
        assert _star_share(problem, _sample(problem, critic, "qgf", 2.0)) > 0.95
        assert _star_share(problem, _sample(problem, critic, "bptt", 4.0)) > 0.75
        # and the final actions are near a* itself: with the kinked exact critic the last
        # step still moves by w * dt * |G| = 2 / 25, so that is how far they may chatter.
        trace = _sample(problem, critic, "qgf", 2.0)
        gap = float((trace.actions - problem.a_star).abs().median())
        assert gap < 2.0 / 25


def test_2d_qgf_moves_the_mass_to_a_star():
    problem = mixture_2d()
    assert _star_share(problem, _sample(problem, problem.exact_critic(), "qgf", 2.0)) > 0.95


@pytest.mark.slow  # fits a critic
@pytest.mark.parametrize("critic_kind", ["exact", "fitted"])
def test_ood_is_misdirected_at_small_weights(critic_kind, fitted_1d):
    """At w = 0.1 and 0.3, QGF raises a*'s share well above the unguided one while OOD does
    not raise it at all; at w = 0.3 OOD sends extra mass to the heavy suboptimal mode."""
    problem = tri_modal_1d()
    critic = problem.exact_critic() if critic_kind == "exact" else fitted_1d
    n, heavy = 1000, 0
    unguided = problem.mixture.mode_mass(_sample(problem, critic, "none", 0.0, n=n).actions)
    base = float(unguided[problem.star_component()])
    for w in (0.1, 0.3):
        ood = _sample(problem, critic, "ood", w, n=n)
        assert _star_share(problem, ood) <= base + 3 * _binom_std(base, n), w
    ood = problem.mixture.mode_mass(_sample(problem, critic, "ood", 0.3, n=n).actions)
    base_heavy = float(unguided[heavy])
    assert float(ood[heavy]) > base_heavy + 3 * _binom_std(base_heavy, n)
    assert _star_share(problem, _sample(problem, critic, "qgf", 0.3, n=n)) > 2 * base


@pytest.mark.slow  # fits a critic
def test_ood_with_fitted_critic_is_stranded_at_moderate_weight(fitted_1d):
    """With the fitted critic at w = 1, QGF puts ~90% on a*'s mode; OOD leaves most particles
    between the heavy mode and a* (around a = -0.43, 3 stds of a*'s mode away), where the
    fitted critic's weaker slope no longer beats the flow's pull towards the heavy mode."""
    problem = tri_modal_1d()
    qgf = _sample(problem, fitted_1d, "qgf", 1.0)
    ood = _sample(problem, fitted_1d, "ood", 1.0)
    assert _star_share(problem, qgf) > 0.8
    assert _star_share(problem, ood) < 0.35
    gap = (ood.actions - problem.a_star).abs()
    assert float(gap.median()) > 0.06
    assert float((qgf.actions - problem.a_star).abs().median()) < 0.04


@pytest.mark.slow  # fits a critic
@pytest.mark.parametrize("critic_kind", ["exact", "fitted"])
def test_ood_reaches_a_star_at_large_weight(critic_kind, fitted_1d):
    """The paper says OOD misdirects at every weight; we find it does not: at w = 2 (T = 25)
    gradient ascent on Q at a_t overrides the flow and reaches a* (see core/toy.py)."""
    problem = tri_modal_1d()
    critic = problem.exact_critic() if critic_kind == "exact" else fitted_1d
    assert _star_share(problem, _sample(problem, critic, "ood", 2.0)) > 0.85


def test_misdirected_fraction():
    """BPTT with the true critic is the reference direction itself: never misdirected. OOD
    is misdirected more often than QGF while the noise is large (first half of the steps)."""
    problem = tri_modal_1d()
    flow, exact = problem.flow(), problem.exact_critic()
    fractions = {}
    for name in ("bptt", "ood", "qgf"):
        fractions[name] = misdirected_fraction(flow, exact, _sample(problem, exact, name, 0.3))
    assert float(fractions["bptt"].max()) == 0.0
    early = slice(0, 12)
    assert float(fractions["ood"][early].mean()) > float(fractions["qgf"][early].mean()) + 0.03
    unguided = misdirected_fraction(flow, exact, _sample(problem, exact, "none", 0.0, n=50))
    assert torch.isnan(unguided).all()  # zero gradient: no opinion, nothing counted


# ---------------------------------------------------------------- Fig. 14


def test_bptt_gradient_is_unstable_at_large_weight():
    """BPTT's gradient spans orders of magnitude (tiny where the flow contracts into a mode,
    huge near the boundaries between modes); at a large weight it throws particles off the
    data, where QGF (whose gradient has unit size for this critic) does not."""
    problem = tri_modal_1d()
    exact = problem.exact_critic()
    bptt = _sample(problem, exact, "bptt", 10.0)
    qgf = _sample(problem, exact, "qgf", 10.0)
    g = bptt.grad.abs().flatten()
    assert float(g.max()) > 20 * float(g.median())
    assert torch.allclose(qgf.grad.abs(), torch.ones_like(qgf.grad))
    off = problem.mixture.off_data
    assert float(off(bptt.actions).double().mean()) > 0.3
    assert float(off(qgf.actions).double().mean()) < 0.1


def test_path_to_is_the_unguided_path_that_ends_there():
    """Integrating the exact flow from the path's start lands on the target; the path is
    the quantile path (its CDF level is the target's at every t)."""
    problem = tri_modal_1d()
    times = torch.linspace(0, 1, 11, dtype=F64)
    for target in (-0.35, -0.7, 0.1):
        path = path_to(problem.mixture, target, times)
        assert float(path[-1]) == pytest.approx(target, abs=1e-9)
        start = path[:1, None]
        end = euler(problem.flow(), torch.zeros(1, 0, dtype=F64), start, 2000, clip=False)
        assert float(end) == pytest.approx(target, abs=2e-3)
        level = problem.mixture.cdf(torch.tensor([target], dtype=F64))
        for t, x in zip(times, path, strict=True):
            got = problem.mixture.marginal(float(t)).cdf(x.reshape(1))
            assert float(got) == pytest.approx(float(level), abs=1e-9)
