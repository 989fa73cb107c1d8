"""viewer/app.py's "Compare estimators" panel and window under Xvfb (viewer/compare_view.py):
the table shows the computed numbers, the plot the computed curves, the scene the paths, and
"use" switches the acting estimator.

Like tests/test_viewer_app.py, the window tests run in a child pytest process of their own
(``tests/xvfb.py`` says why).
"""

from __future__ import annotations

import numpy as np
import pytest
from viewer_window import invoke, open_app, pump, shown
from xvfb import window_tests

pytestmark = [pytest.mark.gui, pytest.mark.slow]

ENV = "cube-single-play-singletask-task2-v0"
N = 4
# Every window test below runs in a fresh process of its own (tests/xvfb.py says why).
window, test_window_tests = window_tests(__file__, "QGF_VIEWER_COMPARE_WINDOW_TESTS", globals())


@pytest.fixture(scope="module")
def app():
    from core.defaults import default_checkpoint
    from viewer.session import Settings

    # The shipped checkpoint (distances to its data), random weights without one.
    settings = Settings(env_name=ENV, steps=5, candidates=N, weight=0.3)
    yield from open_app(settings, default_checkpoint())


def settle(app, timeout: float = 120.0) -> None:
    """Let the worker finish and the newest state (and any new comparison) reach the screen."""
    assert app.worker.wait_idle(timeout)
    pump(app, lambda: shown(app) and app.frames.started_version >= app.session.version, timeout)
    pump(app, lambda: app.compare.result is app.compare._shown, timeout)
    app.frame()


def compare(app) -> None:
    """Press the panel's button and wait for the result to be shown, scene included."""
    invoke(app.compare.tags["compute"])
    settle(app)
    pump(app, lambda: app.frames.served >= app.frames.requested)
    settle(app)
    assert app.compare._shown is not None


def scene_pixels(app, png: np.ndarray) -> np.ndarray:
    import dearpygui.dearpygui as dpg

    x, y = (int(v) for v in dpg.get_item_rect_min(app._tags["image"]))
    w, h = (int(v) for v in dpg.get_item_rect_size(app._tags["image"]))
    return png[y : y + h, x : x + w, :3]


def count_hue(img: np.ndarray, rgba, tol: float = 0.1) -> int:
    """Pixels of ``rgba``'s hue at any brightness (overlay geoms are shaded by the light)."""
    px = img.astype(np.float64)
    top = px.max(axis=-1)
    target = np.asarray(rgba[:3], dtype=np.float64) / max(rgba[:3])
    close = np.abs(px / np.maximum(top, 1.0)[..., None] - target).max(axis=-1) < tol
    return int((close & (top > 60)).sum())


def vivid(comparison) -> list:
    """The rows' colours that no grey of the robot or the floor can be mistaken for."""
    from viewer.compare_view import row_rgba

    colours = [row_rgba(comparison, i) for i in range(len(comparison.rows))]
    return [c for c in colours if (max(c[:3]) - min(c[:3])) / max(c[:3]) > 0.5]


@window
def test_the_table_and_plot_show_the_computed_values(app):
    import dearpygui.dearpygui as dpg

    from core.compare import best_of_label
    from core.guidance import ESTIMATORS
    from viewer.compare_view import cells

    settle(app)
    compare(app)
    view, session = app.compare, app.session
    result = view.result
    c = result.comparison
    assert c.labels == [*ESTIMATORS, best_of_label(N)]
    assert result.key[1] == session.current.index and result.settings.weight == 0.3
    assert dpg.is_item_shown(view.tags["window"])
    for row in c.rows:
        shown_cells = {name: dpg.get_value(tag) for name, tag in view.cell_tags[row.label].items()}
        expected = cells(row)
        assert {k: shown_cells[k] for k in expected} == expected
        # ... and those texts are the computed numbers.
        assert float(shown_cells["Q exec"]) == pytest.approx(row.q_executed, abs=6e-4)
        assert float(shown_cells["Q mean"]) == pytest.approx(row.q_mean, abs=6e-4)
        assert float(shown_cells["ms/act"]) == pytest.approx(row.ms_per_action, abs=0.06)
        assert float(shown_cells["MFLOP"]) == pytest.approx(row.flops_per_action / 1e6, abs=6e-3)
        if row.distance is not None:
            assert float(shown_cells["dist"]) == pytest.approx(row.distance_executed, abs=6e-4)
            assert float(shown_cells["d mean"]) == pytest.approx(row.distance_mean, abs=6e-4)
    # The acting estimator (qgf, best-of-N off) is marked; every other row offers "use".
    assert dpg.get_value(view.cell_tags["qgf"]["mark"]) == "\u25b6"
    labels = {lb: dpg.get_item_label(tag) for lb, tag in view.use_tags.items()}
    assert labels.pop("qgf") == "acting" and set(labels.values()) == {"use"}
    # One Q-along-denoising curve per row: the executed candidate's, k = 0..T.
    series = dpg.get_item_children(view.tags["y"], 1)
    assert [dpg.get_item_label(s) for s in series] == c.labels
    for s, row in zip(series, c.rows, strict=True):
        x, y = dpg.get_value(s)[:2]
        assert x == list(range(c.steps + 1))
        np.testing.assert_allclose(y, row.q_denoise[:, row.executed].double().numpy(), rtol=1e-6)
    assert dpg.get_value(view.tags["note"]).startswith(f"step {result.index}: {len(c.rows)} rows")


@window
def test_the_paths_are_drawn_in_the_scene_and_toggle(app, tmp_path):
    import imageio.v3 as iio

    settle(app)
    if app.compare._shown is None:
        compare(app)
    view = app.compare
    c = view.result.comparison
    rows = len(c.rows)
    spec = app.frame_spec
    assert spec.record is app.session.current
    assert len(spec.overlay.polylines) == 2 * rows and spec.overlay.candidates == 0
    png = iio.imread(app.screenshot(tmp_path / "with.png"))
    scene = scene_pixels(app, png)
    colours = vivid(c)
    assert len(colours) >= 6
    drawn = [count_hue(scene, rgba) for rgba in colours]
    # Most rows' paths show in their own colours (some may hide behind others).
    assert sum(n > 5 for n in drawn) >= 3 and sum(drawn) > 100, drawn
    # Off: the step's own overlay is back and none of the rows' colours is left.
    invoke(view.tags["paths"], False)
    pump(app, lambda: app.frames.served >= app.frames.requested)
    settle(app)
    assert app.frame_spec.overlay.candidates == N
    png = iio.imread(app.screenshot(tmp_path / "without.png"))
    scene = scene_pixels(app, png)
    assert sum(count_hue(scene, rgba) for rgba in colours) < sum(drawn) / 10
    invoke(view.tags["paths"], True)
    pump(app, lambda: app.frames.served >= app.frames.requested)
    settle(app)
    assert len(app.frame_spec.overlay.polylines) == 2 * rows


@window
def test_use_makes_a_row_the_acting_estimator(app):
    import dearpygui.dearpygui as dpg

    from core.compare import best_of_label

    settle(app)
    if app.compare._shown is None:
        compare(app)
    view, session = app.compare, app.session
    result = view.result
    invoke(view.use_tags["ood"])
    settle(app)
    assert session.settings.estimator == "ood" and not session.settings.pick_best
    assert session.current.sample.settings.estimator == "ood"
    # Same state, noise and weight: the comparison still holds, the mark moved.
    assert view._shown is result
    assert dpg.get_value(view.cell_tags["ood"]["mark"]) == "\u25b6"
    assert dpg.get_value(view.cell_tags["qgf"]["mark"]) == ""
    assert dpg.get_value(app._tags["estimator"]) == "ood"
    best = best_of_label(N)
    invoke(view.use_tags[best])
    settle(app)
    s = session.settings
    assert s.estimator == "none" and s.pick_best
    assert dpg.get_value(app._tags["pick_best"]) is True
    assert dpg.get_item_label(view.use_tags[best]) == "acting"
    # The executed action is best-of-N's: the argmax-Q candidate of the unguided samples.
    sample = session.current.sample
    oracle = result.comparison.row(best)
    assert sample.executed == oracle.executed
    assert sample.q_executed == pytest.approx(oracle.q_executed, abs=1e-4)


@window
def test_a_new_state_clears_the_comparison(app):
    import dearpygui.dearpygui as dpg

    settle(app)
    if app.compare._shown is None:
        compare(app)
    view = app.compare
    rows = len(view.result.comparison.rows)
    assert len(dpg.get_item_children(view.tags["table"], 1)) == rows
    app.single_step()
    settle(app)
    assert view.result is None and view._shown is None
    assert dpg.get_item_children(view.tags["table"], 1) == []
    assert dpg.get_item_children(view.tags["y"], 1) == []
    assert app.frame_spec.overlay.polylines == [] and "cleared" in view.note
    # The C key compares the new step.
    invoke(app._tags["key_c"])
    settle(app)
    assert view.result is not None and view.result.index == app.session.current.index
