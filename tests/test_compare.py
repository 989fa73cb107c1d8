"""core/compare.py: every row's numbers against the functions that define them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.compare import ONESTEP, Comparison, best_of_label, compare_estimators
from core.diagnostics import flops_per_action, gradient_estimators, noise_sensitivity
from core.guidance import ESTIMATOR_DOCS, ESTIMATORS, guided_sample, register_estimator
from core.manifold import DataManifold
from core.models import Critic, OneStepPolicy, VelocityField

OBS, ACT, T, N = 6, 3, 4, 5
WEIGHT = 0.5


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    velocity = VelocityField(OBS, ACT, hidden=(16, 16))
    critic = Critic(OBS, ACT, hidden=(16, 16), ensemble=2)
    for net in (velocity, critic):
        net.eval().requires_grad_(False)
    return velocity, critic


@pytest.fixture(scope="module")
def manifold():
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(400, OBS)).astype(np.float32)
    actions = np.tanh(rng.normal(size=(400, ACT))).astype(np.float32)
    return DataManifold.fit(obs, actions, k=8)


@pytest.fixture(scope="module")
def state():
    g = torch.Generator().manual_seed(1)
    return torch.randn(OBS, generator=g), torch.randn(N, ACT, generator=g)


@pytest.fixture(scope="module")
def comparison(nets, manifold, state) -> Comparison:
    obs, noise = state
    return compare_estimators(
        *nets, obs, noise, weight=WEIGHT, steps=T, manifold=manifold, seed=3, repeats=1
    )


def test_one_row_per_registered_estimator_then_best_of_n(comparison):
    assert comparison.labels == [*ESTIMATORS, best_of_label(N)] and best_of_label(N) == "best-of-5"
    oracle = comparison.rows[-1]
    assert oracle.pick_best and oracle.estimator == "none"
    assert not any(r.pick_best for r in comparison.rows[:-1])
    assert comparison.row("qgf").estimator == "qgf"
    with pytest.raises(KeyError):
        comparison.row("nope")


def test_every_row_starts_from_the_same_noise_and_is_the_samplers_trace(nets, comparison, state):
    obs, noise = state
    for row in comparison.rows:
        assert torch.equal(row.trace.a_t[0], noise), row.label
        assert row.a_hat.shape == (T, N, ACT) and row.q_denoise.shape == (T + 1, N)
        w = 0.0 if row.pick_best else WEIGHT
        again = guided_sample(*nets, obs[None], row.estimator, w, T, noise, best_of=N)
        torch.testing.assert_close(row.trace.a_t, again.a_t)


def test_final_q_and_q_along_denoising_are_the_critics(nets, comparison, state):
    _, critic = nets
    obs = state[0][None]
    with torch.no_grad():
        for row in comparison.rows:
            e = row.executed
            q_exec = float(critic(obs, row.final[e][None])[0])
            assert row.q_executed == pytest.approx(q_exec, rel=1e-5, abs=1e-6), row.label
            q_all = critic(obs.expand(N, -1), row.final)
            assert row.q_mean == pytest.approx(float(q_all.double().mean()), rel=1e-5)
            torch.testing.assert_close(row.q_denoise[-1], q_all)
            for k in range(T):
                torch.testing.assert_close(
                    row.q_denoise[k], critic(obs.expand(N, -1), row.a_hat[k])
                )


def test_best_of_n_executes_the_argmax_and_estimators_candidate_0(comparison):
    oracle = comparison.rows[-1]
    assert oracle.executed == int(oracle.trace.q_final.argmax())
    assert oracle.q_executed == pytest.approx(float(oracle.trace.q_final.max()))
    # Unguided: its candidates are those of 'none' (G = 0) from the same noise.
    torch.testing.assert_close(oracle.final, comparison.row("none").final)
    for row in comparison.rows[:-1]:
        assert row.executed == 0


def test_distances_are_the_manifolds(comparison, manifold, state):
    obs = state[0][None].expand(N, -1)
    assert comparison.threshold == manifold.threshold
    for row in comparison.rows:
        found = manifold.query(obs, row.final)
        torch.testing.assert_close(row.distance, found.distance)
        assert torch.equal(row.off_manifold, found.off_manifold)
        assert row.distance_executed == pytest.approx(float(found.distance[row.executed]))
        assert row.distance_mean == pytest.approx(float(found.distance.double().mean()))
        assert row.off_fraction == pytest.approx(float(found.off_manifold.double().mean()))


def test_flops_and_noise_sensitivity_are_the_diagnostics(nets, comparison, state):
    obs, noise = state
    counted = flops_per_action(
        *nets,
        obs[None],
        list(ESTIMATORS),
        steps=T,
        best_of=(("none", N),),
        weight=WEIGHT,
        generator=torch.Generator().manual_seed(3),
    )
    by_label = {f.label: f.flops for f in counted}
    for row in comparison.rows:
        key = f"none+best_of_{N}" if row.pick_best else row.label
        assert row.flops_per_action == by_label[key]
    assert comparison.rows[-1].flops_per_action > comparison.row("none").flops_per_action

    sens = noise_sensitivity(
        *nets,
        obs[None].expand(N, -1),
        gradient_estimators(),
        eps=comparison.eps,
        steps=T,
        perturbations=comparison.perturbations,
        noise=noise,
        generator=torch.Generator().manual_seed(3),
    )
    for i, name in enumerate(sens.estimators):
        row = comparison.row(name)
        torch.testing.assert_close(row.cosine, sens.mean[i])
        assert row.sensitivity == pytest.approx(float(sens.mean[i].nanmean()))
        assert -1.0 <= row.sensitivity <= 1.0
    # G = 0 has no direction: no cosine for 'none' and the unguided oracle.
    for row in (comparison.row("none"), comparison.rows[-1]):
        assert row.cosine is None and math.isnan(row.sensitivity)


def test_times_are_measured_and_flops_can_be_reused(nets, comparison, state):
    assert all(r.ms_per_action > 0 for r in comparison.rows)
    assert set(comparison.flops) >= {*ESTIMATORS, f"none+best_of_{N}"}
    obs, noise = state
    again = compare_estimators(
        *nets, obs, noise, weight=WEIGHT, steps=T, flops=comparison.flops, seed=3, repeats=1
    )
    assert [r.flops_per_action for r in again.rows] == [r.flops_per_action for r in comparison.rows]
    # Without a manifold, distances are left out.
    assert all(r.distance is None and math.isnan(r.distance_mean) for r in again.rows)
    assert again.threshold == math.inf


def test_a_newly_registered_estimator_appears(nets, state):
    obs, noise = state

    @register_estimator("test_compare_reversed")
    def reversed_qgf(step):
        """QGF pointing down the critic (a test estimator)."""
        g, q = ESTIMATORS["qgf"](step)
        return -g, q

    try:
        c = compare_estimators(*nets, obs, noise, weight=WEIGHT, steps=T, repeats=1)
        row = c.row("test_compare_reversed")
        assert c.labels[-2:] == ["test_compare_reversed", best_of_label(N)]
        assert row.cosine is not None and row.flops_per_action > 0
        # Going down Q ends no higher than going up, from the same noise.
        assert row.q_mean <= c.row("qgf").q_mean
    finally:
        ESTIMATORS.pop("test_compare_reversed")
        ESTIMATOR_DOCS.pop("test_compare_reversed")


def test_a_subset_and_bad_arguments(nets, state):
    obs, noise = state
    c = compare_estimators(*nets, obs, noise, weight=WEIGHT, steps=T, estimators=["qgf"])
    assert c.labels == ["qgf", best_of_label(N)]
    with pytest.raises(ValueError, match="unknown estimators"):
        compare_estimators(*nets, obs, noise, weight=WEIGHT, steps=T, estimators=["nope"])
    with pytest.raises(ValueError, match="noise must be"):
        compare_estimators(*nets, obs, noise[0], weight=WEIGHT, steps=T)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_on_cuda_matches_the_cpu(nets, state):
    obs, noise = state
    cpu = compare_estimators(*nets, obs, noise, weight=WEIGHT, steps=T, repeats=1)
    velocity, critic = (VelocityField(OBS, ACT, hidden=(16, 16)), Critic(OBS, ACT, hidden=(16, 16)))
    velocity.load_state_dict(nets[0].state_dict())
    critic.load_state_dict(nets[1].state_dict())
    velocity, critic = velocity.cuda().eval(), critic.cuda().eval()
    gpu = compare_estimators(velocity, critic, obs, noise, weight=WEIGHT, steps=T, device="cuda")
    for a, b in zip(cpu.rows, gpu.rows, strict=True):
        assert b.trace.a_t.device.type == "cpu"
        torch.testing.assert_close(a.q_denoise, b.q_denoise, rtol=1e-4, atol=1e-4)
        assert a.flops_per_action == b.flops_per_action


def test_a_one_step_policy_is_one_more_row_from_the_same_noise(nets, manifold, state):
    obs, noise = state
    torch.manual_seed(5)
    onestep = OneStepPolicy(OBS, ACT, hidden=(16, 16)).eval().requires_grad_(False)
    c = compare_estimators(
        *nets, obs, noise, weight=WEIGHT, steps=T, manifold=manifold, repeats=1, onestep=onestep
    )
    assert c.labels == [*ESTIMATORS, best_of_label(N), ONESTEP]
    row = c.row(ONESTEP)
    with torch.no_grad():
        action = onestep(obs.expand(N, -1), noise).clamp(-1, 1)
        q = nets[1](obs.expand(N, -1), action)
    torch.testing.assert_close(row.final, action)
    torch.testing.assert_close(row.trace.q_final, q)
    assert row.q_executed == pytest.approx(float(q[0]))
    # No denoising: the action at every step, a flat Q curve, no gradient to probe.
    assert row.a_hat.shape == (T, N, ACT) and torch.equal(row.a_hat[0], row.a_hat[-1])
    torch.testing.assert_close(row.q_denoise, q.expand(T + 1, -1))
    assert row.cosine is None and math.isnan(row.sensitivity)
    expect = manifold.query(obs.expand(N, -1), action)
    torch.testing.assert_close(row.distance, expect.distance)
    assert row.flops_per_action > 0 and row.ms_per_action > 0
    # The other rows are those of a comparison without it.
    plain = compare_estimators(*nets, obs, noise, weight=WEIGHT, steps=T, repeats=1)
    for label in plain.labels:
        torch.testing.assert_close(c.row(label).final, plain.row(label).final)


def test_one_candidate_compares_with_best_of_one(nets, state):
    # Best-of-1 is counted under the estimator's own name ("none"), and the comparison
    # looked its FLOPs up as "none+best_of_1" (a KeyError at N = 1, found by the UI monkey).
    obs, noise = state
    c = compare_estimators(*nets, obs, noise[:1], weight=WEIGHT, steps=T, repeats=1)
    row = c.row(best_of_label(1))
    assert row.pick_best and row.flops_per_action == c.flops["none"]
