"""viewer/app.py's distance-to-data parts under Xvfb: the sweep plot, off-manifold counts.

Like tests/test_viewer_app.py, the window tests run in a child pytest process of their own
(``tests/xvfb.py`` says why).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from viewer_window import open_app, pump, shown
from xvfb import window_tests

pytestmark = [pytest.mark.gui, pytest.mark.slow]

ENV = "cube-single-play-singletask-task2-v0"
# Every window test below runs in a fresh process of its own (tests/xvfb.py says why).
window, test_window_tests = window_tests(__file__, "QGF_VIEWER_MANIFOLD_WINDOW_TESTS", globals())


@pytest.fixture(scope="module")
def app():
    from core.defaults import default_checkpoint
    from viewer.session import Settings

    path = default_checkpoint()
    if path is None:
        pytest.skip("no shipped checkpoint for the default env")
    yield from open_app(Settings(env_name=ENV, steps=6, candidates=6, weight=0.03), path)


def settle(app) -> None:
    assert app.worker.wait_idle(60)
    pump(app, lambda: shown(app))
    app.frame()
    assert app.worker.wait_idle(60)  # the sweep the frame asked for
    pump(app, lambda: app._sweep_shown is app.sweep and app.sweep is not None)


@window
def test_sweep_plot_has_data_and_status_counts_off_manifold(app):
    import dearpygui.dearpygui as dpg

    from viewer.manifold_view import SWEEP_WEIGHTS

    settle(app)
    t = app._tags
    assert dpg.does_item_exist(t["plot_sweep"])
    assert dpg.get_item_configuration(t["plot_sweep"])["show"]
    x, q = dpg.get_value(t["sw_q"])[:2]
    np.testing.assert_allclose(x, SWEEP_WEIGHTS, rtol=1e-6)
    np.testing.assert_allclose(q, app.sweep.q_mean, rtol=1e-5)
    xd, d = dpg.get_value(t["sw_d"])[:2]
    np.testing.assert_allclose(d, app.sweep.distance_mean, rtol=1e-5)
    assert all(math.isfinite(v) and v >= 0 for v in d)
    threshold = dpg.get_value(t["sw_thr"])[0][0]
    assert threshold == pytest.approx(app.manifold.manifold.threshold)
    assert dpg.get_value(t["sw_w"])[0][0] == pytest.approx(0.03)
    assert dpg.get_item_label(t["sw_x"]) and dpg.get_item_label(t["sw_y2"])
    dist = app.session.current.sample.distances
    n = len(dist.off_manifold)
    assert f"off-manifold {int(dist.off_manifold.sum())}/{n}" in app.status_text()
    # Q-along-denoising marks each flagged candidate's final Q.
    assert len(dpg.get_value(t["q_off"])[1]) == int(dist.off_manifold.sum())


@window
def test_new_estimator_refreshes_the_sweep(app):
    settle(app)
    before = app.sweep
    app.command("estimator", lambda s: s.update(estimator="ood"))
    settle(app)
    assert app.sweep is not before and app.sweep.sweep.estimator == "ood"
