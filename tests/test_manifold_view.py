"""viewer/manifold_view.py: off-manifold flags of a session's candidates and the sweep preview."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.defaults import default_checkpoint
from core.manifold import DataManifold, weight_sweep
from viewer.manifold_view import SWEEP_WEIGHTS, ManifoldAnalysis
from viewer.session import Session, Settings

pytestmark = pytest.mark.slow

ENV = "cube-single-play-singletask-task2-v0"
BASE = Settings(env_name=ENV, weight=0.03, steps=5, candidates=6, seed=0)


@pytest.fixture(scope="module")
def session() -> Session:
    path = default_checkpoint()
    if path is None:
        pytest.skip("no shipped checkpoint for the default env")
    s = Session(path, settings=BASE)
    analysis = ManifoldAnalysis()
    analysis.attach(s)
    s.analysis = analysis
    yield s
    s.close()


def test_flags_equal_manifold_query(session):
    session.update(weight=0.03)
    sample = session.current.sample
    d = sample.distances
    assert d is not None and session.analysis.unavailable is None
    manifold = session.analysis.manifold
    n = BASE.candidates
    obs = torch.as_tensor(session.current.obs, dtype=torch.float32)[None].expand(n, -1)
    for finals, dist, off in (
        (sample.guided.final, d.distance, d.off_manifold),
        (sample.unguided.final, d.ghost_distance, d.ghost_off_manifold),
    ):
        ref = manifold.query(obs, finals)
        np.testing.assert_allclose(dist, ref.distance.numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(off, ref.off_manifold.numpy())
    np.testing.assert_array_equal(sample.off_manifold, d.off_manifold)
    np.testing.assert_array_equal(sample.overlay().off_manifold, d.off_manifold)
    assert d.threshold == manifold.threshold
    # The manifold is built once per checkpoint, not per step.
    built = manifold
    session.step()
    assert session.analysis.manifold is built
    assert session.current.sample.distances is not None


def test_huge_weight_is_flagged_off_manifold(session):
    """A hand-made manifold whose data only ever took the action 0 in every state: the
    unguided candidates of a tiny weight are compared with a threshold just above their own
    distances, and a huge weight (which drives the clipped actions to the box's corners)
    must push every guided candidate past it, while the ghost stays on."""
    obs_dim = session.current.obs.shape[0]
    a_dim = session.policy.env_action_dim
    rng = np.random.default_rng(0)
    states = torch.as_tensor(rng.normal(size=(64, obs_dim)), dtype=torch.float32)
    manifold = DataManifold(
        states=states,
        actions=torch.zeros(64, a_dim),
        obs_mean=torch.zeros(obs_dim),
        obs_std=torch.ones(obs_dim),
        k=4,
    )
    analysis = session.analysis
    saved = analysis.manifold
    try:
        analysis.manifold = manifold  # the session's checkpoint keeps this manifold
        session.update(weight=0.0)
        ghost = session.current.sample.distances.ghost_distance
        manifold.threshold = float(ghost.max()) + 1e-3
        session.update(weight=1e4)
        d = session.current.sample.distances
        assert d.threshold == manifold.threshold
        assert not d.ghost_off_manifold.any()
        assert d.off_manifold.all(), (d.distance, d.threshold)
        assert (d.distance > d.ghost_distance).all()
        assert session.current.sample.overlay().off_manifold.all()
    finally:
        analysis.manifold = saved
        session.update(weight=0.03)


def test_sweep_preview_equals_weight_sweep(session):
    session.update(estimator="qgf", weight=0.03)
    preview = session.analysis.sweep(session)
    rec = session.current
    ref = weight_sweep(
        session.policy,
        session.critic,
        torch.as_tensor(rec.obs, dtype=torch.float32),
        list(SWEEP_WEIGHTS),
        session.analysis.manifold,
        estimator="qgf",
        steps=BASE.steps,
        noise=rec.sample.noise,
    )
    assert len(SWEEP_WEIGHTS) == 12
    assert math.isclose(SWEEP_WEIGHTS[0], 1e-3) and math.isclose(SWEEP_WEIGHTS[-1], 1.0)
    np.testing.assert_allclose(preview.weights, SWEEP_WEIGHTS, rtol=1e-6)
    torch.testing.assert_close(preview.sweep.q, ref.q)
    torch.testing.assert_close(preview.sweep.distance, ref.distance)
    assert torch.equal(preview.sweep.off_manifold, ref.off_manifold)
    np.testing.assert_allclose(preview.q_mean, ref.q_mean.numpy(), rtol=1e-6)
    np.testing.assert_allclose(preview.distance_mean, ref.distance_mean.numpy(), rtol=1e-6)
    assert preview.threshold == session.analysis.manifold.threshold
    assert np.isfinite(preview.distance_mean).all()
    # Its smallest weight is nearly unguided: it matches the sample's w = 0 ghost.
    np.testing.assert_allclose(
        preview.sweep.q[0].numpy(), rec.sample.unguided.q_final.numpy(), atol=0.05
    )


def test_random_weights_report_unavailable():
    s = Session(settings=BASE)
    try:
        analysis = ManifoldAnalysis()
        analysis.attach(s)
        sample = s.current.sample
        assert analysis.manifold is None
        assert "no dataset sample" in analysis.unavailable
        assert sample.distances is None and sample.off_manifold is None
        preview = analysis.sweep(s)
        assert np.isnan(preview.distance_mean).all()
        assert preview.threshold == math.inf
        assert np.isfinite(preview.q_mean).all()
    finally:
        s.close()
