"""The guided sampler against docs/ALGORITHM.md, computed independently in float64.

Every estimator's G is recomputed here from its written definition, at the iterate the
sampler recorded, by autograd through an explicit formula (``torch.func``) and by central
finite differences; the sampler's own update rule, clipping, best-of selection, weight-0
identity, batch independence, determinism, non-finite handling and graph hygiene are
checked on the trace it returns.
"""

from __future__ import annotations

import gc
import warnings

import pytest
import torch
from torch.func import grad as func_grad
from torch.func import jacfwd, jacrev

from core.guidance import (
    ESTIMATOR_DOCS,
    ESTIMATORS,
    CriticGrad,
    GuidanceStep,
    critic_grad,
    euler,
    fast_velocity,
    guided_sample,
    register_estimator,
)
from core.models import Critic, EnsembleLayerNorm, VelocityField

F64 = torch.float64
OBS, ACT, T = 3, 2, 6
BUILTIN = ("none", "qgf", "qgf_jacobian", "qgf_chain", "ood", "bptt")


# --------------------------------------------------------------------------- networks


def _randomize_norms(module: torch.nn.Module) -> torch.nn.Module:
    """LayerNorm affines start at (1, 0); random ones make the tests see them."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (torch.nn.LayerNorm, EnsembleLayerNorm)):
                m.weight.copy_(1.0 + 0.5 * torch.randn_like(m.weight))
                m.bias.copy_(0.2 * torch.randn_like(m.bias))
    return module


def _nets(horizon: int = 1, dtype: torch.dtype = F64, seed: int = 0):
    """Small random networks. The velocity's last layer is scaled up so that a_hat leaves
    [-1, 1] in places and the clip is exercised."""
    torch.manual_seed(seed)
    velocity = _randomize_norms(VelocityField(OBS, ACT, hidden=(16, 16), horizon=horizon))
    with torch.no_grad():
        velocity.mlp.net[-1].weight.mul_(4.0)
    critic = _randomize_norms(Critic(OBS, ACT * horizon, hidden=(16, 16)))
    return velocity.to(dtype), critic.to(dtype)


class LambdaVelocity:
    """A smooth closed-form velocity field (no core.models), with ``.action_dim``."""

    action_dim = ACT

    def __init__(self, dtype: torch.dtype = F64) -> None:
        g = torch.Generator().manual_seed(1)
        self.m = torch.randn(ACT, ACT, generator=g, dtype=dtype)
        self.n = torch.randn(OBS, ACT, generator=g, dtype=dtype)

    def __call__(self, obs, a, t):
        return 2.5 * torch.tanh(a @ self.m + obs @ self.n + 3.0 * t[:, None]) - 0.5 * a


def lambda_q(obs, a):
    """A smooth closed-form Q: a bump around an obs-dependent target, plus a ripple."""
    target = torch.tanh(obs[:, :ACT])
    return -((a - target) ** 2).sum(-1) + 0.3 * torch.sin(3.0 * a).sum(-1) * obs[:, -1]


def _cases():
    """(velocity, q) pairs: small core.models networks (the critic's explicit backward
    pass), the same critic behind a lambda (autograd), and closed-form lambdas."""
    velocity, critic = _nets()
    return {
        "models": (velocity, critic),
        "models-autograd-critic": (velocity, lambda o, a: critic(o, a)),
        "lambdas": (LambdaVelocity(), lambda_q),
    }


CASES = list(_cases())


@pytest.fixture(params=CASES)
def case(request):
    velocity, q = _cases()[request.param]
    g = torch.Generator().manual_seed(3)
    obs = torch.randn(4, OBS, generator=g, dtype=F64)
    noise = torch.randn(4, ACT, generator=g, dtype=F64)
    return velocity, q, obs, noise


# ------------------------------------------------------------------- the definitions, written out


def _t(k, n):
    return torch.full((n,), k / T, dtype=F64)


def v_at(velocity, obs, a, k):
    return velocity(obs, a, _t(k, a.shape[0]))


def a_hat_of(velocity, obs, a, k):
    """docs/ALGORITHM.md: a_hat = clip(a_t + (1 - t) v(s, a_t, t), -1, 1)."""
    return torch.clamp(a + (1 - k / T) * v_at(velocity, obs, a, k), -1.0, 1.0)


def ode(velocity, obs, a, k):
    """ODE(a_t): the remaining unguided Euler steps from t = k / T, then the final clip."""
    for j in range(k, T):
        a = a + v_at(velocity, obs, a, j) / T
    return torch.clamp(a, -1.0, 1.0)


def grad_q(q, obs, a):
    """grad_a Q(s, a) by torch.func (rows independent: the sum's gradient is per row)."""
    return func_grad(lambda x: q(obs, x).sum())(a)


def central_diff(f, a, h=1e-6):
    """``[B, A]`` d f(a)[b] / d a[b, i] by central differences; f: [B, A] -> [B]."""
    out = torch.empty_like(a)
    for i in range(a.shape[1]):
        e = torch.zeros_like(a)
        e[:, i] = h
        out[:, i] = (f(a + e) - f(a - e)) / (2 * h)
    return out


def close(x, y, tol=1e-10):
    torch.testing.assert_close(x, y, rtol=tol, atol=tol)


def _definition(name, velocity, q, obs, a, k):
    """(G, Q where it was taken) from the written definition, by autograd."""
    if name == "none":
        return torch.zeros_like(a), q(obs, a_hat_of(velocity, obs, a, k))
    if name == "qgf":
        a_hat = a_hat_of(velocity, obs, a, k)
        return grad_q(q, obs, a_hat), q(obs, a_hat)
    if name == "qgf_jacobian":
        a_hat = a_hat_of(velocity, obs, a, k)
        g_hat = grad_q(q, obs, a_hat)
        # J = d a_hat / d a_t per row, by reverse mode through v and the clip.
        rows = []
        for b in range(a.shape[0]):
            jac = jacrev(lambda x, b=b: a_hat_of(velocity, obs[b : b + 1], x[None], k)[0])(a[b])
            rows.append(jac.T @ g_hat[b])
        return torch.stack(rows), q(obs, a_hat)
    if name == "qgf_chain":
        a_1 = ode(velocity, obs, a, k)
        return grad_q(q, obs, a_1), q(obs, a_1)
    if name == "ood":
        return grad_q(q, obs, a), q(obs, a)
    if name == "bptt":
        return func_grad(lambda x: q(obs, ode(velocity, obs, x, k)).sum())(a), q(
            obs, ode(velocity, obs, a, k)
        )
    raise KeyError(name)


def _finite_difference(name, velocity, q, obs, a, k):
    """G by central differences of Q (None where the definition has no scalar to difference)."""
    if name == "qgf":
        return central_diff(lambda x: q(obs, x), a_hat_of(velocity, obs, a, k))
    if name == "qgf_jacobian":
        return central_diff(lambda x: q(obs, a_hat_of(velocity, obs, x, k)), a)
    if name == "qgf_chain":
        return central_diff(lambda x: q(obs, x), ode(velocity, obs, a, k))
    if name == "ood":
        return central_diff(lambda x: q(obs, x), a)
    if name == "bptt":
        return central_diff(lambda x: q(obs, ode(velocity, obs, x, k)), a)
    return None


# --------------------------------------------------------------------- estimators = definitions


@pytest.mark.parametrize("name", BUILTIN)
def test_estimator_equals_definition_autograd_and_finite_differences(case, name):
    velocity, q, obs, noise = case
    trace = guided_sample(velocity, q, obs, name, weight=0.4, steps=T, noise=noise)
    for k in range(T):
        a = trace.a_t[k]
        g_def, q_def = _definition(name, velocity, q, obs, a, k)
        close(trace.grad[k], g_def)
        close(trace.q_hat[k], q_def)
        g_fd = _finite_difference(name, velocity, q, obs, a, k)
        if g_fd is not None:
            close(trace.grad[k], g_fd, tol=1e-6)
    if name != "none":
        assert trace.grad.abs().max() > 1e-2  # the comparisons are not 0 == 0


def test_qgf_jacobian_is_jt_grad_with_func_jacobians(case):
    """J from jacrev and jacfwd of a_hat(a_t) (through v and the clip) times grad Q(a_hat)."""
    velocity, q, obs, noise = case
    trace = guided_sample(velocity, q, obs, "qgf_jacobian", weight=0.4, steps=T, noise=noise)
    clipped_somewhere = False
    for k in range(T):
        a = trace.a_t[k]
        a_hat = a_hat_of(velocity, obs, a, k)
        g_hat = grad_q(q, obs, a_hat)
        for b in range(a.shape[0]):
            f = lambda x, b=b, k=k: a_hat_of(velocity, obs[b : b + 1], x[None], k)[0]  # noqa: E731
            j_rev, j_fwd = jacrev(f)(a[b]), jacfwd(f)(a[b])
            close(j_rev, j_fwd)
            close(trace.grad[k, b], j_rev.T @ g_hat[b])
            # A clipped coordinate of a_hat has a zero row in J: no gradient through it.
            clipped = a_hat[b].abs() == 1.0
            clipped_somewhere |= bool(clipped.any())
            assert torch.all(j_rev[clipped] == 0)
    if q is not lambda_q:
        assert clipped_somewhere, "the clip was never active: the test lost its point"


def test_qgf_ignores_jacobian_and_differs_from_it(case):
    """qgf's G is grad Q(a_hat) itself; the exact-Jacobian variant really is another number."""
    velocity, q, obs, noise = case
    a = noise
    step = GuidanceStep.at(velocity, q, obs, a, 2, T)
    g_qgf, _ = ESTIMATORS["qgf"](step)
    g_jac, _ = ESTIMATORS["qgf_jacobian"](step)
    close(g_qgf, grad_q(q, obs, a_hat_of(velocity, obs, a, 2)))
    assert (g_qgf - g_jac).abs().max() > 1e-3


def test_chain_and_bptt_differ_only_by_the_jacobian(case):
    """Both take Q at ODE(a_t); bptt backpropagates through the steps, qgf_chain does not."""
    velocity, q, obs, noise = case
    step = GuidanceStep.at(velocity, q, obs, noise, 1, T)
    g_chain, q_chain = ESTIMATORS["qgf_chain"](step)
    g_bptt, q_bptt = ESTIMATORS["bptt"](step)
    close(q_chain, q_bptt)
    assert (g_chain - g_bptt).abs().max() > 1e-3
    # At the last step ODE(a_t) is one Euler step: chain = grad Q(clip(a + v / T)).
    last = GuidanceStep.at(velocity, q, obs, noise, T - 1, T)
    a_1 = torch.clamp(noise + v_at(velocity, obs, noise, T - 1) / T, -1, 1)
    close(ESTIMATORS["qgf_chain"](last)[0], grad_q(q, obs, a_1))


def test_update_rule_and_recorded_trajectory(case):
    """a_{k+1} = a_k + (v + w G) / T, a_hat as defined, actions = clip(a_T), q_final."""
    velocity, q, obs, noise = case
    w = torch.tensor([0.0, 0.1, 0.5, 1.5], dtype=F64)
    trace = guided_sample(velocity, q, obs, "qgf", weight=w, steps=T, noise=noise)
    assert torch.equal(trace.a_t[0], noise)
    for k in range(T):
        a = trace.a_t[k]
        v = v_at(velocity, obs, a, k)
        close(trace.a_hat[k], torch.clamp(a + (1 - k / T) * v, -1, 1))
        close(trace.a_t[k + 1], a + (v + w[:, None] * trace.grad[k]) / T)
    close(trace.actions, torch.clamp(trace.a_t[-1], -1, 1))
    close(trace.q_final, q(obs, trace.actions))
    assert torch.equal(trace.weight, w)
    assert not trace.nonfinite.any()


def test_no_clip_leaves_a_hat_and_actions_unclipped():
    velocity, critic = _nets()
    obs = torch.randn(8, OBS, dtype=F64)
    noise = 2.0 * torch.randn(8, ACT, dtype=F64)
    trace = guided_sample(velocity, critic, obs, "qgf", 0.1, T, noise=noise, clip=False)
    assert trace.a_hat.abs().max() > 1 and trace.actions.abs().max() > 1
    v0 = v_at(velocity, obs, noise, 0)
    close(trace.a_hat[0], noise + v0)
    assert torch.equal(trace.actions, trace.a_t[-1])
    step = GuidanceStep.at(velocity, critic, obs, noise, 0, T, clip=False)
    close(step.rollout(noise), euler(velocity, obs, noise, T, clip=False))


def test_critic_explicit_backward_matches_autograd():
    """The explicit backward pass equals autograd for every aggregation, ensemble size,
    depth and LayerNorm setting, when the rows' minimising heads differ and at batch 1."""
    mixed = 0
    for aggregate in ("min", "mean"):
        for ensemble in (1, 2, 3):
            for hidden in ((), (8,), (16, 16, 16)):
                for layer_norm in (True, False):
                    torch.manual_seed(ensemble)
                    critic = Critic(OBS, ACT, hidden, ensemble, aggregate, layer_norm)
                    critic = _randomize_norms(critic).to(F64)
                    fast = critic_grad(critic)
                    assert type(fast) is not CriticGrad  # the explicit path is the one tested
                    for batch in (1, 33):
                        obs = torch.randn(batch, OBS, dtype=F64)
                        a = torch.randn(batch, ACT, dtype=F64)
                        g, value = fast(obs, a)
                        close(value, critic(obs, a).detach(), tol=1e-13)
                        close(fast.value(obs, a), value, tol=1e-13)
                        close(g, grad_q(critic, obs, a), tol=1e-13)
                        if aggregate == "min" and batch > 1:
                            mixed += critic.q_all(obs, a).argmin(0).unique().numel() > 1
    assert mixed >= 6  # the path where rows take different heads ran, with and without LN


def test_critic_grad_falls_back_to_autograd_for_other_callables():
    velocity, critic = _nets()

    class Scaled(Critic):
        def forward(self, obs, a):
            return 2.0 * super().forward(obs, a)

    scaled = Scaled(OBS, ACT, hidden=(16, 16)).to(F64)
    scaled.load_state_dict(critic.state_dict())
    hooked = Critic(OBS, ACT, hidden=(16, 16)).to(F64)
    hooked.load_state_dict(critic.state_dict())
    hooked.q_ensemble.net[1].register_forward_hook(lambda m, i, o: o * 0.5)
    obs, a = torch.randn(5, OBS, dtype=F64), torch.randn(5, ACT, dtype=F64)
    for q in (scaled, hooked, lambda_q):
        fast = critic_grad(q)
        assert type(fast) is CriticGrad
        g, value = fast(obs, a)
        close(g, grad_q(q, obs, a))
        close(value, q(obs, a).detach())


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_fast_velocity_is_the_module_bit_for_bit(dtype):
    """The sampler's module-call-free velocity gives the module's numbers exactly, and its
    gradients; anything that is not a plain VelocityField is left as it is."""
    for layer_norm in (True, False):
        torch.manual_seed(3)
        velocity = VelocityField(OBS, ACT, hidden=(16, 16), layer_norm=layer_norm).to(dtype)
        velocity = _randomize_norms(velocity)
        fast = fast_velocity(velocity)
        assert fast is not velocity and fast.action_dim == velocity.action_dim
        obs, a = torch.randn(7, OBS, dtype=dtype), torch.randn(7, ACT, dtype=dtype)
        t = torch.rand(7, dtype=dtype)
        assert torch.equal(fast(obs, a, t), velocity(obs, a, t))
        a1, a2 = a.clone().requires_grad_(True), a.clone().requires_grad_(True)
        (g1,) = torch.autograd.grad(fast(obs, a1, t).square().sum(), a1)
        (g2,) = torch.autograd.grad(velocity(obs, a2, t).square().sum(), a2)
        assert torch.equal(g1, g2)
    hooked = VelocityField(OBS, ACT, hidden=(16,))
    hooked.mlp.net[1].register_forward_hook(lambda m, i, o: o * 0.5)

    class Shifted(VelocityField):
        def forward(self, obs, a_t, t):
            return super().forward(obs, a_t, t) + 1.0

    for other in (hooked, Shifted(OBS, ACT, hidden=(16,)), LambdaVelocity()):
        assert fast_velocity(other) is other


# --------------------------------------------------------------------------- best-of-N


@pytest.mark.parametrize("name", ["none", "qgf"])
def test_best_of_picks_argmax_with_the_documented_layout(name):
    velocity, critic = _nets()
    n, batch = 5, 3
    obs = torch.randn(batch, OBS, dtype=F64)
    noise = torch.randn(batch * n, ACT, dtype=F64)
    w = torch.tensor([0.0, 0.2, 0.7], dtype=F64)
    trace = guided_sample(velocity, critic, obs, name, w, T, noise=noise, best_of=n)
    assert trace.a_t.shape == (T + 1, batch * n, ACT) and trace.q_final.shape == (batch * n,)
    assert torch.equal(trace.weight, w.repeat_interleave(n))
    for i in range(batch):
        rows = slice(i * n, (i + 1) * n)
        # Candidate c of row i is the single-row sample of obs[i] from noise[i*n + c].
        alone = guided_sample(
            velocity, critic, obs[i : i + 1].expand(n, -1), name, w[i].item(), T, noise=noise[rows]
        )
        close(trace.final[rows], alone.actions, tol=1e-12)
        close(trace.q_final[rows], critic(obs[i : i + 1].expand(n, -1), alone.actions))
        c = int(trace.chosen[i])
        assert c == int(trace.q_final[rows].argmax())
        assert torch.equal(trace.actions[i], trace.final[i * n + c])
        assert int(trace.executed[i]) == i * n + c


def test_best_of_draws_its_candidates_from_the_generator():
    velocity, critic = _nets()
    obs = torch.randn(2, OBS, dtype=F64)
    trace = guided_sample(
        velocity, critic, obs, "qgf", best_of=4, steps=T, generator=torch.Generator().manual_seed(0)
    )
    expected = torch.randn(8, ACT, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert torch.equal(trace.a_t[0], expected)


# --------------------------------------------------------------- weight 0, batches, determinism


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_weight_zero_is_unguided_bit_for_bit_for_every_estimator(dtype):
    velocity, critic = _nets(dtype=dtype)
    obs = torch.randn(6, OBS, dtype=dtype)
    noise = torch.randn(12, ACT, dtype=dtype)
    unguided = euler(velocity, obs.repeat_interleave(2, 0), noise, T)
    reference = guided_sample(velocity, critic, obs, "none", 0.3, T, noise=noise, best_of=2)
    names = list(ESTIMATORS)
    assert set(BUILTIN) <= set(names)
    for name in names:
        for weight in (0.0, torch.zeros(6, dtype=dtype)):
            trace = guided_sample(velocity, critic, obs, name, weight, T, noise=noise, best_of=2)
            assert torch.equal(trace.final, unguided), name
            assert torch.equal(trace.a_t, reference.a_t), name
    # Per-row weights: the rows with w = 0 are unguided exactly, the others are not.
    w = torch.tensor([0.0, 0.5, 0.0, 0.5, 0.0, 0.5], dtype=dtype)
    trace = guided_sample(velocity, critic, obs, "qgf", w, T, noise=noise, best_of=2)
    zero = (w == 0).repeat_interleave(2)
    assert torch.equal(trace.final[zero], unguided[zero])
    assert not torch.equal(trace.final[~zero], unguided[~zero])


@pytest.mark.parametrize("name", BUILTIN)
def test_rows_do_not_depend_on_the_other_rows(name):
    """Each row alone gives what it gives inside a batch. Equality is to rounding: BLAS may
    block a matrix product differently for another number of rows."""
    velocity, critic = _nets()
    obs = torch.randn(5, OBS, dtype=F64)
    noise = torch.randn(5, ACT, dtype=F64)
    w = torch.linspace(0.0, 1.0, 5, dtype=F64)
    batch = guided_sample(velocity, critic, obs, name, w, T, noise=noise)
    for i in range(5):
        one = guided_sample(
            velocity, critic, obs[i : i + 1], name, w[i : i + 1], T, noise[i : i + 1]
        )
        close(one.a_t[:, 0], batch.a_t[:, i], tol=1e-12)
        close(one.grad[:, 0], batch.grad[:, i], tol=1e-12)
        close(one.q_final, batch.q_final[i : i + 1], tol=1e-12)
    # The batch is not trivially the same row repeated.
    assert (batch.actions[0] - batch.actions[1]).abs().max() > 1e-3


def test_generator_makes_it_deterministic():
    velocity, critic = _nets()
    obs = torch.randn(3, OBS, dtype=F64)
    runs = [
        guided_sample(
            velocity, critic, obs, "qgf", steps=T, generator=torch.Generator().manual_seed(s)
        )
        for s in (7, 7, 8)
    ]
    for field in ("actions", "a_t", "a_hat", "grad", "q_hat", "q_final"):
        assert torch.equal(getattr(runs[0], field), getattr(runs[1], field)), field
    assert not torch.equal(runs[0].actions, runs[2].actions)


def test_chunked_actions_are_flat_to_the_sampler():
    """Horizon 3 x 2 dims: the sampler sees 6-dim actions; G is still its definition."""
    velocity, critic = _nets(horizon=3)
    assert velocity.action_dim == 3 * ACT
    obs = torch.randn(2, OBS, dtype=F64)
    trace = guided_sample(
        velocity, critic, obs, "qgf", 0.3, T, generator=torch.Generator().manual_seed(0)
    )
    assert trace.actions.shape == (2, 6) and trace.a_t.shape == (T + 1, 2, 6)
    assert trace.grad.shape == (T, 2, 6) and trace.q_hat.shape == (T, 2)
    for k in (0, T - 1):
        a_hat = a_hat_of(velocity, obs, trace.a_t[k], k)
        close(trace.grad[k], grad_q(critic, obs, a_hat))
        close(trace.grad[k], central_diff(lambda x: critic(obs, x), a_hat), tol=1e-6)
    chunks = trace.actions.view(2, 3, ACT)  # [B, H, action_dim]: one env action per row
    assert torch.equal(chunks[:, 1], trace.actions[:, ACT : 2 * ACT])


# --------------------------------------------------------------------------- the registry


def test_register_estimator_adds_one_the_sampler_uses():
    name = "test_double_qgf"
    try:

        @register_estimator(name)
        def double_qgf(step):
            """Twice the QGF gradient (a test estimator)."""
            g, q = ESTIMATORS["qgf"](step)
            return 2.0 * g, q

        assert ESTIMATORS[name] is double_qgf
        assert ESTIMATOR_DOCS[name] == "Twice the QGF gradient (a test estimator)."
        with pytest.raises(ValueError, match="already registered"):
            register_estimator(name)(double_qgf)
        velocity, critic = _nets()
        obs = torch.randn(3, OBS, dtype=F64)
        noise = torch.randn(3, ACT, dtype=F64)
        mine = guided_sample(velocity, critic, obs, name, 0.25, T, noise=noise)
        qgf = guided_sample(velocity, critic, obs, "qgf", 0.5, T, noise=noise)
        # G doubled at half the weight is the same guided trajectory.
        close(mine.a_t, qgf.a_t, tol=1e-12)
        close(mine.grad, 2.0 * qgf.grad, tol=1e-12)

        register_estimator(name, replace=True)(lambda step: ESTIMATORS["ood"](step))
        ood = guided_sample(velocity, critic, obs, "ood", 0.25, T, noise=noise)
        assert torch.equal(guided_sample(velocity, critic, obs, name, 0.25, T, noise).a_t, ood.a_t)
    finally:
        ESTIMATORS.pop(name, None)
        ESTIMATOR_DOCS.pop(name, None)


def test_bad_estimator_output_and_bad_arguments_are_refused():
    velocity, critic = _nets()
    obs = torch.randn(2, OBS, dtype=F64)
    noise = torch.randn(2, ACT, dtype=F64)
    name = "test_wrong_shape"
    try:
        register_estimator(name)(lambda step: (step.a_t[:, :1], step.q_value(step.a_t)))
        with pytest.raises(ValueError, match="returned G"):
            guided_sample(velocity, critic, obs, name, 0.1, T, noise=noise)
    finally:
        ESTIMATORS.pop(name, None)
        ESTIMATOR_DOCS.pop(name, None)
    with pytest.raises(ValueError, match="unknown estimator"):
        guided_sample(velocity, critic, obs, "nope", noise=noise)
    with pytest.raises(ValueError, match="weight must be"):
        guided_sample(velocity, critic, obs, "qgf", torch.zeros(3), noise=noise)
    with pytest.raises(ValueError, match="weight must be finite"):
        guided_sample(velocity, critic, obs, "qgf", float("nan"), noise=noise)
    with pytest.raises(ValueError, match="noise must have shape"):
        guided_sample(velocity, critic, obs, "qgf", noise=noise, best_of=2)
    with pytest.raises(ValueError, match="noise must be finite"):
        guided_sample(velocity, critic, obs, "qgf", noise=noise.clone().fill_(float("inf")))
    with pytest.raises(ValueError, match="action_dim"):
        guided_sample(lambda o, a, t: a, critic, obs, "qgf")


# --------------------------------------------------------------------------- non-finite values


def test_nan_gradient_is_flagged_on_its_rows_and_never_drawn():
    """A critic that is NaN (value and gradient) on some rows: exactly those rows are
    flagged, take no guidance, stay finite; the other rows are as without the NaN."""
    velocity, critic = _nets()
    obs = torch.randn(6, OBS, dtype=F64)
    noise = torch.randn(6, ACT, dtype=F64)
    bad = torch.tensor([False, True, False, False, True, False])

    def nan_q(o, a):
        return critic(o, a) * torch.where(bad, float("nan"), 1.0).to(a)

    clean = guided_sample(velocity, critic, obs, "qgf", 0.5, T, noise=noise)
    for name in ("qgf", "qgf_jacobian", "qgf_chain", "ood", "bptt"):
        trace = guided_sample(velocity, nan_q, obs, name, 0.5, T, noise=noise)
        assert torch.equal(trace.nonfinite, bad), name
        assert torch.isfinite(trace.a_t).all() and torch.isfinite(trace.actions).all()
        # Kept as computed, so that they can be shown (a clipped coordinate's G is 0).
        assert torch.isnan(trace.q_hat[:, bad]).all() and torch.isnan(trace.grad[:, bad]).any()
        # The flagged rows took no guidance: they are the unguided rows.
        unguided = euler(velocity, obs, noise, T)
        close(trace.actions[bad], unguided[bad], tol=0)
        if name == "qgf":
            close(trace.a_t[:, ~bad], clean.a_t[:, ~bad], tol=1e-12)


def test_nan_only_at_some_steps_keeps_the_guidance_of_the_others():
    """G is NaN only where a_hat's first coordinate is above 0.5: those steps are skipped,
    the row is flagged, and every other step of it is guided as usual."""
    velocity, critic = _nets()
    obs = torch.randn(16, OBS, dtype=F64)
    noise = torch.randn(16, ACT, dtype=F64)

    def spiky_q(o, a):
        return critic(o, a) + torch.where(a[:, 0] > 0.5, float("nan"), 0.0)

    trace = guided_sample(velocity, spiky_q, obs, "qgf", 0.5, T, noise=noise)
    hit = (trace.a_hat[..., 0] > 0.5).any(0)
    assert hit.any() and (~hit).any()
    assert torch.equal(trace.nonfinite, hit | ~torch.isfinite(trace.q_final))
    for k in range(T):
        a = trace.a_t[k]
        v = v_at(velocity, obs, a, k)
        skip = trace.a_hat[k, :, 0] > 0.5
        g = torch.where(skip[:, None], 0.0, trace.grad[k])
        close(trace.a_t[k + 1], a + (v + 0.5 * g) / T)


def test_nan_velocity_rows_stay_put_and_are_never_chosen():
    """A velocity that is NaN for some candidates: they are flagged, their iterates stay at
    a_0 (finite), and best-of never keeps them, though the critic would rate them best."""
    velocity, _ = _nets()
    n = 4
    obs = torch.randn(2, OBS, dtype=F64)
    noise = torch.randn(2 * n, ACT, dtype=F64)
    noise[1, 0] = noise[6, 0] = 50.0  # marks candidates 1 and 6 (rows 0 and 1)

    def broken(o, a, t):
        return torch.where(a[:, :1] > 40.0, float("nan"), velocity(o, a, t))

    def q(o, a):  # prefers the first coordinate large: the broken candidates' a_0 most
        return a[:, 0]

    trace = guided_sample(broken, q, obs, "qgf", 0.1, T, noise=noise, best_of=n, clip=False)
    flagged = torch.zeros(2 * n, dtype=torch.bool)
    flagged[[1, 6]] = True
    assert torch.equal(trace.nonfinite, flagged)
    assert torch.equal(trace.nonfinite_rows, torch.tensor([True, True]))
    assert torch.isfinite(trace.a_t).all()
    for k in range(T + 1):
        assert torch.equal(trace.a_t[k, flagged], noise[flagged])
    assert trace.q_final[flagged].min() > trace.q_final[~flagged].max()
    assert int(trace.chosen[0]) != 1 and int(trace.chosen[1]) != 2


# --------------------------------------------------------------------------- dtype, device, graphs


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_dtype_and_device_are_kept(device, dtype):
    velocity, critic = _nets(dtype=dtype)
    velocity, critic = velocity.to(device), critic.to(device)
    obs = torch.randn(3, OBS, dtype=dtype, device=device)
    weight = torch.tensor([0.1, 0.2, 0.3], dtype=F64)  # another dtype, on the CPU
    for name in BUILTIN:
        trace = guided_sample(
            velocity, critic, obs, name, weight, 4, generator=torch.Generator().manual_seed(0)
        )
        for field in ("actions", "a_t", "a_hat", "grad", "q_hat", "q_final", "weight"):
            tensor = getattr(trace, field)
            assert tensor.dtype == dtype and tensor.device.type == device, (name, field)
        assert trace.chosen.device.type == device and trace.nonfinite.dtype == torch.bool


def test_no_graph_is_kept_and_parameters_get_no_grad():
    velocity, critic = _nets()
    obs = torch.randn(3, OBS, dtype=F64)
    for name in BUILTIN:
        trace = guided_sample(velocity, critic, obs, name, 0.2, T, torch.randn(3, ACT, dtype=F64))
        for field in ("actions", "a_t", "a_hat", "grad", "q_hat", "q_final", "weight"):
            tensor = getattr(trace, field)
            assert tensor.grad_fn is None and not tensor.requires_grad, (name, field)
    for p in [*velocity.parameters(), *critic.parameters()]:
        assert p.grad is None


def test_works_under_no_grad_and_inference_mode():
    velocity, critic = _nets()
    obs = torch.randn(3, OBS, dtype=F64)
    noise = torch.randn(3, ACT, dtype=F64)
    for name in BUILTIN:
        plain = guided_sample(velocity, critic, obs, name, 0.3, T, noise=noise)
        with torch.no_grad():
            under_no_grad = guided_sample(velocity, critic, obs, name, 0.3, T, noise=noise)
        with torch.inference_mode():
            obs_i, noise_i = obs.clone(), noise.clone()  # inference tensors
            under_inference = guided_sample(velocity, critic, obs_i, name, 0.3, T, noise=noise_i)
        assert torch.equal(plain.a_t, under_no_grad.a_t), name
        assert torch.equal(plain.a_t, under_inference.a_t), name
        assert torch.equal(plain.grad, under_inference.grad), name


def _live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # some of torch's deprecated objects warn when inspected
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def test_memory_is_flat_over_many_calls():
    """No graph or buffer survives a call: the number of live tensors does not grow."""
    velocity, critic = _nets()
    obs = torch.randn(4, OBS, dtype=F64)
    for name in BUILTIN:
        guided_sample(velocity, critic, obs, name, 0.2, T, generator=torch.Generator())
    before = _live_tensors()
    for _ in range(5):
        for name in BUILTIN:
            trace = guided_sample(velocity, critic, obs, name, 0.2, T, generator=torch.Generator())
            del trace
    assert _live_tensors() <= before


def test_row_is_the_rows_candidates_as_a_one_row_trace():
    torch.manual_seed(0)
    velocity = VelocityField(3, 2, (8,))
    critic = Critic(3, 2, (8,))
    obs = torch.randn(3, 3)
    trace = guided_sample(velocity, critic, obs, "qgf", weight=0.1, best_of=4)
    one = guided_sample(
        velocity, critic, obs[1:2], "qgf", weight=0.1, best_of=4, noise=trace.a_t[0, 4:8]
    )
    row = trace.row(1)
    assert row.best_of == 4 and row.actions.shape == (1, 2)
    assert torch.equal(row.a_t, trace.a_t[:, 4:8])
    assert torch.equal(row.chosen, trace.chosen[1:2])
    torch.testing.assert_close(row.actions, one.actions)
    torch.testing.assert_close(row.q_hat, one.q_hat)
