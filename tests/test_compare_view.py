"""viewer/compare_view.py without a window: what a comparison of a viewer step holds, where
its paths lie, and when it stops applying."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from core import envs
from core.compare import best_of_label
from core.guidance import ESTIMATORS
from core.manifold import DataManifold
from viewer.compare_view import (
    CompareView,
    acting_label,
    cells,
    compare_key,
    compare_polylines,
    compare_step,
)
from viewer.session import Session, Settings

pytestmark = pytest.mark.slow

ENV = "cube-single-play-singletask-task2-v0"
T, N = 4, 3
BASE = Settings(env_name=ENV, weight=0.5, steps=T, candidates=N, seed=2)


@pytest.fixture(scope="module")
def session() -> Session:
    s = Session(settings=BASE)
    yield s
    s.close()


@pytest.fixture(scope="module")
def manifold(session) -> DataManifold:
    rng = np.random.default_rng(0)
    obs = session.current.obs + 0.1 * rng.normal(size=(200, session.current.obs.shape[0]))
    return DataManifold.fit(obs, np.tanh(rng.normal(size=(200, 5))), k=8)


@pytest.fixture()
def live(session) -> Session:
    session.settings = BASE
    session.reset()
    return session


def test_compares_the_shown_sample_from_its_noise(live, manifold):
    result = compare_step(live, manifold)
    rec = live.current
    c = result.comparison
    assert c.labels == [*ESTIMATORS, best_of_label(N)]
    assert result.index == 0 and result.settings == rec.sample.settings
    assert torch.equal(c.noise, rec.sample.noise) and c.weight == BASE.weight and c.steps == T
    # The acting estimator's row is what the viewer sampled (the same noise and settings).
    qgf = c.row("qgf")
    torch.testing.assert_close(qgf.final, rec.sample.guided.final, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(qgf.q_denoise.numpy(), rec.sample.q_denoise, rtol=1e-4, atol=1e-4)
    assert c.threshold == manifold.threshold and qgf.distance is not None
    assert np.allclose(result.origin, rec.sample.origin)
    assert list(cells(qgf)) == [
        "estimator", "Q exec", "Q mean", "dist", "d mean", "off", "NaN", "cos", "ms/act", "MFLOP",
    ]  # fmt: skip
    assert cells(qgf)["Q exec"] == f"{qgf.q_executed:.3f}" and cells(qgf)["NaN"] == "0"


def test_paths_are_the_effector_targets_of_a_hat_then_the_final_action(live):
    result = compare_step(live)
    c = result.comparison
    h = live.horizon
    assert result.paths.shape == (len(c.rows), N, T + h, 3)
    for i, row in enumerate(c.rows):
        a_hat = envs.action_to_ee_targets(live.env, row.a_hat.numpy().reshape(T * N, h, 5))
        final = envs.action_to_ee_targets(live.env, row.final.numpy().reshape(N, h, 5))
        np.testing.assert_allclose(
            result.paths[i, :, :T], a_hat.xyz[:, 0].reshape(T, N, 3).transpose(1, 0, 2)
        )
        np.testing.assert_allclose(result.paths[i, :, T:], final.xyz)


def test_polylines_are_magnified_like_the_candidates(live):
    result = compare_step(live)
    rows = len(result.comparison.rows)
    o = result.origin
    lines = compare_polylines(result, path_scale=2.5)
    assert len(lines) == 2 * rows  # per row: a ray to the executed action, its a_hat path
    for i, row in enumerate(result.comparison.rows):
        ray, path = lines[2 * i], lines[2 * i + 1]
        expected = o + 2.5 * (result.paths[i, row.executed] - o)
        np.testing.assert_allclose(path.points, expected)
        np.testing.assert_allclose(ray.points, [o, expected[T]])
        assert path.rgba == ray.rgba
    colours = {lines[2 * i + 1].rgba for i in range(rows)}
    assert len(colours) == rows  # one colour per row
    everything = compare_polylines(result, path_scale=1.0, all_candidates=True)
    assert len(everything) == 2 * rows + rows * (N - 1)


def test_acting_row():
    c = SimpleNamespace(
        rows=[SimpleNamespace(label=name, estimator=name, pick_best=False) for name in ESTIMATORS]
        + [SimpleNamespace(label=best_of_label(N), estimator="none", pick_best=True)]
    )
    assert acting_label(Settings(estimator="ood"), c) == "ood"
    assert acting_label(Settings(estimator="none", pick_best=True), c) == best_of_label(N)
    assert acting_label(Settings(estimator="qgf", pick_best=True), c) is None


def test_key_follows_state_noise_and_settings_not_the_estimator(live):
    key = compare_key(live.frame().view, live.current)
    live.update(estimator="ood")
    assert compare_key(live.frame().view, live.current) == key  # same state, noise and weight
    live.update(weight=0.25)
    assert compare_key(live.frame().view, live.current) != key
    live.update(weight=BASE.weight)
    assert compare_key(live.frame().view, live.current) == key
    live.step()
    assert compare_key(live.frame().view, live.current) != key


def test_a_past_step_is_compared_at_its_own_state(live):
    live.step()
    live.step()
    live.view_step(1)
    rec = live.history[1]
    result = compare_step(live)
    assert result.index == 1 and result.key == compare_key(live.frame().view, rec)
    assert torch.equal(result.comparison.noise, rec.sample.noise)
    # Its paths start from that step's effector, not from the live one.
    assert np.allclose(result.origin, rec.sample.origin)
    assert not np.allclose(result.origin, envs.effector_state(live.env)[0])
    qgf = result.paths[list(ESTIMATORS).index("qgf"), 0]
    np.testing.assert_allclose(qgf[T:], rec.sample.ee_final[0], atol=1e-4)


def test_the_paths_are_a_layer_drawn_only_on_the_compared_step(live):
    published = []
    frames = SimpleNamespace(path_scale=2.0, set_layer=published.append)
    view = CompareView(SimpleNamespace(session=live, frames=frames))
    plain = live.frame()
    view._publish()
    assert published == [None]  # nothing compared yet
    view._shown = view.result = compare_step(live)
    view._publish()
    layer = published[-1]
    rows = len(view.result.comparison.rows)
    spec = layer.applied(plain)
    assert spec.version == plain.version and spec.record is plain.record
    assert len(spec.overlay.polylines) == len(plain.overlay.polylines) + 2 * rows
    assert spec.overlay.candidates == 0  # the step's own candidates are hidden meanwhile
    view._publish()
    assert len(published) == 2  # published again only when something changed
    view.set_paths(only_compared=False)
    spec = published[-1].applied(plain)
    assert spec.overlay.candidates == N and len(spec.overlay.polylines) == 2 * rows
    np.testing.assert_array_equal(spec.overlay.final, plain.overlay.final)
    view.set_paths(show=False)
    assert published[-1] is None
    view.set_paths(show=True)
    live.step()
    assert published[-1].applied(live.frame()) is live.frame()  # another state
