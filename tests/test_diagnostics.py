"""The estimator diagnostics: FLOPs against layer sizes, cosine similarities against their
definition, Q optimisation against an independently computed best-of-N oracle."""

from __future__ import annotations

import math

import pytest
import torch

from core.diagnostics import (
    FlopCount,
    NoiseSensitivity,
    QOptimisation,
    count_flops,
    flops_per_action,
    gradient_estimators,
    noise_sensitivity,
    q_optimisation,
)
from core.guidance import ESTIMATORS, GuidanceStep, euler, guided_sample
from core.models import Critic, VelocityField

F64 = torch.float64
OBS, ACT, H1, H2, T, HEADS = 5, 3, 8, 6, 4, 2


def _nets(dtype=F64):
    torch.manual_seed(0)
    velocity = VelocityField(OBS, ACT, hidden=(H1, H2)).to(dtype)
    critic = Critic(OBS, ACT, hidden=(H1, H2), ensemble=HEADS).to(dtype)
    return velocity, critic


# --------------------------------------------------------------------------- FLOPs


def _analytic():
    """Matrix-product FLOPs per row, from the layer sizes (2 per multiply-add)."""
    emb = 16
    v_fwd = 2 * ((OBS + ACT + emb) * H1 + H1 * H2 + H2 * ACT)
    # Autograd's input gradient of the velocity: every layer's input, all columns.
    v_bwd = 2 * (H2 * ACT + H1 * H2 + H1 * (OBS + ACT + emb))
    q_fwd = HEADS * 2 * ((OBS + ACT) * H1 + H1 * H2 + H2)
    # The explicit backward: one head per row, the output layer's gradient is its weight row
    # (no product), and only the action rows of the first layer.
    q_bwd = 2 * (H2 * H1 + H1 * ACT)
    # Autograd through the ensemble: every head, every column of every layer's input.
    q_bwd_autograd = HEADS * 2 * (H2 + H1 * H2 + (OBS + ACT) * H1)
    return v_fwd, v_bwd, q_fwd, q_bwd, q_bwd_autograd


def test_flops_per_action_match_the_layer_sizes():
    velocity, critic = _nets()
    v_fwd, v_bwd, q_fwd, q_bwd, _ = _analytic()
    remaining = sum(T - k for k in range(T))  # Euler steps from each step to t = 1
    expected = {
        "unguided": T * v_fwd,
        # Every sampler call adds Q of the final action; 'none' reads Q at a_hat too.
        "none": T * (v_fwd + q_fwd) + q_fwd,
        "qgf": T * (v_fwd + q_fwd + q_bwd) + q_fwd,
        "ood": T * (v_fwd + q_fwd + q_bwd) + q_fwd,
        # ODE(a_t) reuses the step's velocity for its first Euler step.
        "qgf_chain": T * (v_fwd + q_fwd + q_bwd) + (remaining - T) * v_fwd + q_fwd,
        # a_hat(a_t) again with a graph; Q's gradient at a_hat by the explicit pass, then
        # autograd back through v only (the chain rule, J^T grad Q).
        "qgf_jacobian": T * (2 * v_fwd + q_fwd + q_bwd + v_bwd) + q_fwd,
        "bptt": T * (v_fwd + q_fwd + q_bwd) + remaining * (v_fwd + v_bwd) + q_fwd,
    }
    expected["none+best_of_16"] = 16 * expected["none"]
    expected["qgf+best_of_16"] = 16 * expected["qgf"]
    for states in (1, 3):
        obs = torch.randn(states, OBS, dtype=F64)
        rows = flops_per_action(
            velocity, critic, obs, steps=T, generator=torch.Generator().manual_seed(0)
        )
        assert all(isinstance(r, FlopCount) for r in rows)
        got = {r.label: r.flops for r in rows}
        assert set(expected) <= set(got)
        for label, flops in expected.items():
            assert got[label] == flops, (label, states)
    # The paper's point in numbers: QGF costs one critic forward and backward per step.
    assert got["qgf"] - got["unguided"] == T * (q_fwd + q_bwd) + q_fwd


def test_flops_count_autograd_backward_for_other_critics():
    """A critic behind a lambda goes through autograd: every head's backward is counted."""
    velocity, critic = _nets()
    v_fwd, v_bwd, q_fwd, _, q_bwd_ag = _analytic()
    obs = torch.randn(2, OBS, dtype=F64)
    rows = flops_per_action(
        velocity, lambda o, a: critic(o, a), obs, ["qgf", "qgf_jacobian"], T, best_of=()
    )
    assert [r.label for r in rows] == ["unguided", "qgf", "qgf_jacobian"]
    assert rows[1].flops == T * (v_fwd + q_fwd + q_bwd_ag) + q_fwd
    assert rows[2].flops == T * (2 * v_fwd + q_fwd + q_bwd_ag + v_bwd) + q_fwd


def test_count_flops_counts_backward():
    w = torch.randn(4, 7, requires_grad=True)
    x = torch.randn(3, 4)

    def fwd_bwd():
        (x @ w).sum().backward()

    assert count_flops(lambda: x @ w) == 2 * 3 * 4 * 7
    assert count_flops(fwd_bwd) == 2 * (2 * 3 * 4 * 7)  # forward + weight gradient


# --------------------------------------------------------------------------- noise sensitivity


def test_cosine_is_one_without_perturbation():
    velocity, critic = _nets()
    obs = torch.randn(4, OBS, dtype=F64)
    for weight in (0.0, 0.3):
        result = noise_sensitivity(
            velocity, critic, obs, eps=0.0, steps=T, weight=weight, perturbations=2,
            generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        assert isinstance(result, NoiseSensitivity)
        assert result.estimators == gradient_estimators()
        assert result.cosine.shape == (len(result.estimators), T, 2, 4)
        assert result.defined.min() > 0.5
        defined = ~result.cosine.isnan()
        torch.testing.assert_close(
            result.cosine[defined], torch.ones_like(result.cosine[defined]), rtol=0, atol=1e-12
        )


def test_none_has_no_gradient_and_is_left_out():
    velocity, critic = _nets()
    obs = torch.randn(2, OBS, dtype=F64)
    assert "none" not in gradient_estimators()
    assert set(gradient_estimators()) == set(ESTIMATORS) - {"none"}
    with pytest.raises(ValueError, match="'none' has no gradient"):
        noise_sensitivity(velocity, critic, obs, estimators=["none", "qgf"], steps=T)
    with pytest.raises(ValueError, match="unknown estimators"):
        noise_sensitivity(velocity, critic, obs, estimators=["nope"], steps=T)


def test_cosine_matches_its_definition():
    """Recomputed one estimator and step at a time, unbatched, from the same draws."""
    velocity, critic = _nets()
    states, perturbations, eps = 3, 2, 0.1
    obs = torch.randn(states, OBS, dtype=F64)
    result = noise_sensitivity(
        velocity, critic, obs, eps=eps, steps=T, perturbations=perturbations,
        generator=torch.Generator().manual_seed(5),
    )  # fmt: skip
    g = torch.Generator().manual_seed(5)
    a0 = torch.randn(states, ACT, generator=g, dtype=F64)
    xi = torch.randn(perturbations, states, ACT, generator=g, dtype=F64)
    a_t = euler_path(velocity, obs, a0)
    for i, name in enumerate(result.estimators):
        for k in range(T):
            base = ESTIMATORS[name](GuidanceStep.at(velocity, critic, obs, a_t[k], k, T))[0]
            for p in range(perturbations):
                moved = a_t[k] + eps * xi[p]
                g_p = ESTIMATORS[name](GuidanceStep.at(velocity, critic, obs, moved, k, T))[0]
                cos = torch.nn.functional.cosine_similarity(base, g_p, dim=-1)
                torch.testing.assert_close(result.cosine[i, k, p], cos, rtol=1e-9, atol=1e-9)
    assert (result.cosine < 0.999).any()  # a real perturbation moved something


def euler_path(velocity, obs, a):
    """``[T+1, S, A]`` the unguided iterates, written out."""
    path = [a]
    for k in range(T):
        a = a + velocity(obs, a, torch.full((a.shape[0],), k / T, dtype=F64)) / T
        path.append(a)
    return torch.stack(path)


def test_cosine_of_a_known_gradient_field():
    """With Q = -|a - c|^2, ood's G is -2 (a_t - c): the cosine is that of a_t - c and
    a_t + eps xi - c, whatever the velocity."""
    velocity, _ = _nets()
    c = torch.tensor([0.3, -0.2, 0.1], dtype=F64)

    def q(o, a):
        return -((a - c) ** 2).sum(-1)

    obs = torch.randn(6, OBS, dtype=F64)
    result = noise_sensitivity(
        velocity, q, obs, ["ood"], eps=0.5, steps=T, generator=torch.Generator().manual_seed(1)
    )
    g = torch.Generator().manual_seed(1)
    a0 = torch.randn(6, ACT, generator=g, dtype=F64)
    xi = torch.randn(1, 6, ACT, generator=g, dtype=F64)
    a_t = euler_path(velocity, obs, a0)
    for k in range(T):
        expected = torch.nn.functional.cosine_similarity(a_t[k] - c, a_t[k] + 0.5 * xi[0] - c)
        torch.testing.assert_close(result.cosine[0, k, 0], expected)


def test_zero_gradients_are_undefined_not_counted_as_similar():
    """A critic flat for half the states: their cosines are NaN, left out of the mean."""
    velocity, critic = _nets()
    obs = torch.randn(6, OBS, dtype=F64)
    flat = torch.tensor([True, False, True, False, True, False])
    obs[:, 0] = torch.where(flat, 1.0, -1.0)

    def q(o, a):  # flat where obs[:, 0] > 0
        return torch.where(o[:, 0] > 0, 0.0, critic(o, a))

    result = noise_sensitivity(
        velocity, q, obs, ["qgf"], eps=0.1, steps=T, generator=torch.Generator().manual_seed(0)
    )
    assert result.cosine[..., flat].isnan().all()
    assert not result.cosine[..., ~flat].isnan().any()
    torch.testing.assert_close(result.defined, torch.full((1, T), 0.5, dtype=F64))
    torch.testing.assert_close(result.mean, result.cosine[..., ~flat].flatten(2).mean(-1))


def test_smaller_perturbations_turn_the_gradient_less():
    velocity, critic = _nets()
    obs = torch.randn(16, OBS, dtype=F64)
    means = [
        noise_sensitivity(
            velocity, critic, obs, ["qgf", "bptt"], eps=eps, steps=T,
            generator=torch.Generator().manual_seed(2),
        ).mean.mean()
        for eps in (1e-4, 0.5)
    ]  # fmt: skip
    assert means[0] > 0.99 and means[0] > means[1]


# --------------------------------------------------------------------------- Q optimisation


def test_q_optimisation_against_an_independent_oracle():
    velocity, critic = _nets()
    states, n = 5, 8
    obs = torch.randn(states, OBS, dtype=F64)
    weights = {"none": 0.0, "qgf": 0.5, "ood": 0.2}
    result = q_optimisation(
        velocity, critic, obs, list(weights), weights, best_of=n, steps=T,
        generator=torch.Generator().manual_seed(4),
    )  # fmt: skip
    assert isinstance(result, QOptimisation)
    assert result.q.shape == (3, states) and result.oracle_q.shape == (states,)
    noise = torch.randn(states * n, ACT, generator=torch.Generator().manual_seed(4), dtype=F64)
    # The oracle: best of n unguided samples, computed here with euler and the critic.
    candidates = euler(velocity, obs.repeat_interleave(n, 0), noise, T)
    q_all = critic(obs.repeat_interleave(n, 0), candidates).detach().view(states, n)
    torch.testing.assert_close(result.oracle_q, q_all.max(dim=1).values)
    torch.testing.assert_close(result.candidate_q, q_all)
    best = candidates.view(states, n, ACT)[torch.arange(states), q_all.argmax(dim=1)]
    torch.testing.assert_close(result.oracle_actions, best)
    for i, name in enumerate(result.estimators):
        trace = guided_sample(velocity, critic, obs, name, weights[name], T, noise[::n])
        torch.testing.assert_close(result.q[i], trace.q_final)
        torch.testing.assert_close(result.actions[i], trace.actions)
        rms = (trace.actions - best).norm(dim=-1) / math.sqrt(ACT)
        torch.testing.assert_close(result.distance_to_oracle[i], rms)
    # Plain BC from candidate 0 is one of the oracle's candidates: never better than it.
    none = result.estimators.index("none")
    assert (result.gap[none] <= 1e-12).all()
    summary = result.summary()
    assert summary[f"best_of_{n}"]["q"] == pytest.approx(float(result.oracle_q.mean()))
    assert summary["qgf"]["gap"] == pytest.approx(float(result.gap[1].mean()))


def test_guidance_raises_q_on_a_simple_critic():
    """Q = -|a - c|^2 with c inside [-1, 1]: QGF at a real weight ends with higher Q than
    unguided sampling from the same noise, for every state."""
    velocity, _ = _nets()
    c = torch.tensor([0.5, -0.5, 0.2], dtype=F64)

    def q(o, a):
        return -((a - c) ** 2).sum(-1)

    obs = torch.randn(8, OBS, dtype=F64)
    result = q_optimisation(
        velocity, q, obs, ["none", "qgf"], {"none": 0.0, "qgf": 2.0}, best_of=4, steps=T,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert (result.q[1] > result.q[0]).all()


def test_q_optimisation_needs_a_weight_per_estimator():
    velocity, critic = _nets()
    obs = torch.randn(2, OBS, dtype=F64)
    with pytest.raises(ValueError, match="no weight given"):
        q_optimisation(velocity, critic, obs, ["qgf", "ood"], {"qgf": 0.1}, best_of=2, steps=T)
