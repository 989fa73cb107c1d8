"""The toy mode: its session without a window (viewer/toy_session.py), and the window under
Xvfb driven through its own callbacks (viewer/toy_app.py)."""

from __future__ import annotations

import math
import os
import threading

import numpy as np
import pytest
import torch

from core.guidance import ESTIMATORS
from core.toy import PROBLEMS
from viewer.toy_session import (
    HEAT_POINTS,
    PLOT_LIMIT,
    ToySession,
    ToySettings,
    slider_from_weight,
    weight_from_slider,
)

SMALL = {"steps": 8, "samples": 64}


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize("log_scale", [True, False])
def test_weight_slider_round_trip(log_scale):
    assert weight_from_slider(0.0, log_scale) == 0.0
    for w in (0.01, 0.3, 1.0, 4.9):
        assert weight_from_slider(slider_from_weight(w, log_scale), log_scale) == pytest.approx(w)
    assert weight_from_slider(1.0, True) == pytest.approx(100.0)
    assert weight_from_slider(0.51, True) == pytest.approx(1.0)
    assert weight_from_slider(0.01, True) == 0.0  # the bottom of the log track is "off"
    assert weight_from_slider(2.0, log_scale) == weight_from_slider(1.0, log_scale)  # clamped


@pytest.mark.parametrize(
    "change",
    [
        {"dim": 3},
        {"critic": "learned"},
        {"estimators": ("qgf", "nope")},
        {"weight": -1.0},
        {"weight": math.nan},
        {"steps": 0},
        {"samples": 0},
        {"a_star": (0.1, 0.2)},  # 1-D needs one coordinate
    ],
)
def test_invalid_settings_are_refused_and_old_ones_kept(change):
    session = ToySession(ToySettings(**SMALL))
    before = session.settings
    with pytest.raises(ValueError):
        session.update(**change)
    assert session.settings == before


def test_switching_dimension_resets_a_star():
    session = ToySession(ToySettings(**SMALL))
    session.update(a_star=(0.5,))
    assert session.a_star() == (0.5,)
    session.update(dim=2)
    assert session.a_star() == tuple(float(a) for a in PROBLEMS[2]().a_star)


# ---------------------------------------------------------------- views


def test_1d_view():
    session = ToySession(ToySettings(weight=1.0, estimators=("none", "qgf", "ood"), **SMALL))
    view = session.compute()
    assert list(view.runs) == ["none", "qgf", "ood"]
    t, n = SMALL["steps"], SMALL["samples"]
    for run in view.runs.values():
        assert run.a_t.shape == (t + 1, n, 1)
        assert run.grad.shape == (t, n, 1)
        assert run.misdirected.shape == (t,)
        assert run.component.shape == (n,)
        assert np.isfinite(run.a_t).all()
    # The same noise for every estimator.
    assert np.array_equal(view.runs["none"].a_t[0], view.runs["qgf"].a_t[0])
    assert view.runs["none"].star_share == pytest.approx(view.unguided_share[view.star_component])
    assert view.runs["qgf"].star_share > view.runs["none"].star_share
    # Densities on the grid are the closed-form p_t: each integrates to p_t's mass there.
    assert view.density.shape == (t + 1, view.density_grid.size)
    lo, hi = view.density_grid[0], view.density_grid[-1]
    for time, row in zip(view.times, view.density, strict=True):
        m = view.problem.mixture.marginal(float(time))
        mass = sum(
            float(w)
            * 0.5
            * (
                math.erf((hi - float(mu)) / (float(sd) * math.sqrt(2)))
                - math.erf((lo - float(mu)) / (float(sd) * math.sqrt(2)))
            )
            for w, mu, sd in zip(m.weights, m.means[:, 0], m.stds, strict=True)
        )
        assert np.trapezoid(row, view.density_grid) == pytest.approx(mass, abs=1e-3)
    assert np.allclose(view.background.max(axis=0), 1.0)
    assert view.times[0] == 0.0 and view.times[-1] == 1.0


def test_2d_view():
    session = ToySession(ToySettings(dim=2, weight=0.0, estimators=("none", "qgf"), **SMALL))
    view = session.compute()
    assert view.heat_critic.shape == (HEAT_POINTS, HEAT_POINTS)
    assert view.heat_density.shape == (SMALL["steps"] + 1, HEAT_POINTS, HEAT_POINTS)
    # Row 0 is the top of the picture: the critic's maximum sits at a*.
    row, col = np.unravel_index(np.argmax(view.heat_critic), view.heat_critic.shape)
    spacing = 2 * PLOT_LIMIT / (HEAT_POINTS - 1)
    assert view.heat_axis[col] == pytest.approx(view.a_star[0], abs=spacing)
    assert view.heat_axis[::-1][row] == pytest.approx(view.a_star[1], abs=spacing)
    fields = [run.field for run in view.runs.values()]
    assert fields[0].shape == (SMALL["steps"], view.field_points.shape[0], 2)
    # At weight 0 the guided field is the plain velocity field, for every estimator.
    assert np.array_equal(fields[0], fields[1])


def test_2d_arrows_are_the_guided_velocity():
    session = ToySession(ToySettings(dim=2, weight=2.0, estimators=("ood",), **SMALL))
    view = session.compute()
    problem = PROBLEMS[2]()
    points = torch.as_tensor(view.field_points)
    k = 3
    t = torch.full((points.shape[0],), k / SMALL["steps"], dtype=torch.float64)
    v = problem.flow()(points.new_zeros(points.shape[0], 0), points, t)
    to_star = torch.as_tensor(view.a_star) - points
    expected = v + 2.0 * to_star / to_star.norm(dim=-1, keepdim=True)
    assert np.allclose(view.runs["ood"].field[k], expected.numpy())


@pytest.mark.slow  # fits two critics
def test_fitted_critics_are_cached_by_a_star():
    session = ToySession(ToySettings(critic="fitted", estimators=("qgf",), **SMALL))
    session.compute()
    first = session._fits.get(session.problem(), session.a_star())
    session.compute()
    assert session._fits.get(session.problem(), session.a_star()) is first
    session.update(a_star=(0.0,))
    view = session.compute()
    assert session._fits.get(session.problem(), (0.0,)) is not first
    assert "fitted on" in view.critic_note


def test_every_registered_estimator_draws():
    view = ToySession(ToySettings(dim=2, estimators=tuple(ESTIMATORS), **SMALL)).compute()
    assert set(view.runs) == set(ESTIMATORS)
    for run in view.runs.values():
        assert np.isfinite(run.field).all() and np.isfinite(run.a_t).all()


# ---------------------------------------------------------------- background work


def test_views_come_before_their_diagnostics():
    session = ToySession(ToySettings(estimators=("none", "ood"), **SMALL))
    early, traces = session._compute(session.settings)
    assert all(np.isnan(run.misdirected).all() for run in early.runs.values())
    full = session._with_diagnostics(early, traces)
    assert np.isfinite(full.runs["ood"].misdirected).all()
    assert np.isnan(full.runs["none"].misdirected).all()  # G = 0: no opinion
    assert np.array_equal(full.runs["ood"].a_t, early.runs["ood"].a_t)
    try:
        session.request()
        assert np.isfinite(session.wait(timeout=120).runs["ood"].misdirected).all()
    finally:
        session.close()


def test_requests_are_coalesced_and_the_latest_settings_win():
    session = ToySession(ToySettings(estimators=("qgf",), **SMALL))
    try:
        session.request()
        for w in (0.1, 0.2, 0.3):
            session.update(weight=w)
            session.request()
        view = session.wait(timeout=120)
        assert view is not None and view.settings.weight == 0.3
        assert not session.busy
    finally:
        session.close()


def test_a_failing_computation_is_reported_once_and_the_session_recovers(monkeypatch):
    session = ToySession(ToySettings(estimators=("qgf",), **SMALL))
    original = session._compute
    gate = threading.Event()

    def broken(settings):
        gate.set()
        raise RuntimeError("boom")

    try:
        monkeypatch.setattr(session, "_compute", broken)
        session.request()
        assert gate.wait(30)
        with pytest.raises(RuntimeError, match="boom"):
            session.wait(timeout=30)
        assert session.poll() is False  # reported once
        monkeypatch.setattr(session, "_compute", original)
        session.request()
        assert session.wait(timeout=120) is not None
    finally:
        session.close()


# ---------------------------------------------------------------- the window


# The window runs in a child pytest process of its own (tests/xvfb.py says why): a Dear
# PyGui window leaves GL state behind that breaks the MuJoCo EGL contexts and windows of the
# tests after it.
CHILD_FLAG = "QGF_TOY_WINDOW_TEST"
IN_CHILD = os.environ.get(CHILD_FLAG) == "1"


@pytest.mark.gui
@pytest.mark.slow
@pytest.mark.skipif(IN_CHILD, reason="this is the child")
def test_window_in_its_own_process():
    from xvfb import in_child_process

    in_child_process(
        f"{__file__}::{test_window_runs_survives_errors_and_saves_a_screenshot.__name__}",
        CHILD_FLAG,
        1,
    )


@pytest.mark.gui
@pytest.mark.slow
@pytest.mark.skipif(not IN_CHILD, reason="runs in its own process (test_window_in_its_own_process)")
def test_window_runs_survives_errors_and_saves_a_screenshot(tmp_path):
    from xvfb import require_display

    require_display()
    import dearpygui.dearpygui as dpg
    import imageio.v3 as iio

    from viewer.toy_app import run_app

    seen: dict[str, object] = {}

    def drive(app, i):
        if i == 1:
            # A callback that raises: reported in the status bar, the app keeps running.
            app.guard(lambda *_: 1 / 0)()
            seen["error"] = app.status_error
        if i == 2:
            seen["shares_before"] = {n: r.star_share for n, r in app.session.view.runs.items()}
            app._on_weight(None, slider_from_weight(1.0, app.log_scale), None)  # the slider's
            app.session.wait(timeout=120)
        if i == 4:
            seen["shares_after"] = {n: r.star_share for n, r in app.session.view.runs.items()}
            seen["layout_1d"] = app._layout
            app._on_dim(None, "2-D", None)  # the radio button's callback
            app.session.wait(timeout=120)
        if i == 7:
            seen["layout_2d"] = app._layout
            # Drag a* in the first panel (the drag point's own callback): the session and
            # the other panels follow.
            first, second = (app._panels[n]["star"] for n in ("none", "ood"))
            dpg.set_value(first, [0.5, -0.5])
            app._on_drag_star_2d(first, None, None)
            seen["a_star"] = app.session.settings.a_star
            seen["other_point"] = dpg.get_value(second)[:2]

    shot = tmp_path / "toy.png"
    settings = ToySettings(weight=0.1, estimators=("none", "ood", "qgf"), **SMALL)
    app = run_app(
        ToySession(settings),
        width=1000,
        height=700,
        frames=10,
        screenshot=str(shot),
        on_frame=drive,
    )
    assert "ZeroDivisionError" in seen["error"]
    assert app.errors == 1  # nothing else went wrong
    assert seen["shares_after"]["qgf"] > seen["shares_before"]["qgf"]
    assert seen["layout_1d"][0] == 1 and seen["layout_2d"][0] == 2
    assert app.session.settings.weight == pytest.approx(1.0)
    assert seen["a_star"] == (0.5, -0.5)
    assert seen["other_point"] == pytest.approx([0.5, -0.5])

    image = iio.imread(shot)
    assert image.shape[0] >= 600 and image.shape[1] >= 900
    rgb = image[..., :3].astype(int)
    assert rgb.std() > 20  # not blank
    # Particles on a*'s mode are drawn in the star colour (240, 228, 66).
    star = (np.abs(rgb - np.array([240, 228, 66])).sum(-1) < 40).sum()
    assert star > 50
