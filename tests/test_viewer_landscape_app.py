"""viewer/landscape_view.py under Xvfb: the heatmap and the path colours reach the panel's
pixels, the weight moves the paths but not the heatmap, a click-probe reaches the status bar
and the scene, and the slice and layer choices survive a saved timeline.

Like the other window tests, these run in a child pytest process of their own
(``tests/xvfb.py`` says why).
"""

from __future__ import annotations

import numpy as np
import pytest
from viewer_window import open_app, pump, shown
from xvfb import window_tests

pytestmark = [pytest.mark.gui, pytest.mark.slow]

ENV = "cube-single-play-singletask-task2-v0"
window, test_window_tests = window_tests(__file__, "QGF_VIEWER_LANDSCAPE_WINDOW_TESTS", globals())


@pytest.fixture(scope="module")
def app():
    from core.defaults import default_checkpoint
    from viewer.session import Settings

    settings = Settings(env_name=ENV, steps=5, candidates=4, weight=0.03)
    yield from open_app(settings, default_checkpoint())


def settle(app, timeout: float = 120.0) -> None:
    assert app.worker.wait_idle(timeout)
    pump(app, lambda: shown(app) and app.frames.started_version >= app.session.version, timeout)
    view = app.landscape

    def ready() -> bool:
        r = view.result
        return (
            r is not None
            and not view.busy
            and app.worker.wait_idle(0.01)
            and (r.key == view._wanted)
        )

    pump(app, ready, timeout)
    for _ in range(4):
        app.frame()


def plot_pixels(app, path) -> np.ndarray:
    import dearpygui.dearpygui as dpg
    import imageio.v3 as iio

    png = iio.imread(app.screenshot(path))
    x, y = (int(v) for v in dpg.get_item_rect_min(app.landscape.tags["plot"]))
    w, h = (int(v) for v in dpg.get_item_rect_size(app.landscape.tags["plot"]))
    return png[y : y + h, x : x + w, :3]


def near(img: np.ndarray, rgb, tol: int = 12) -> int:
    return int((np.abs(img.astype(int) - np.asarray(rgb)).max(axis=-1) <= tol).sum())


@window
def test_heatmap_and_paths_are_drawn_and_the_weight_moves_only_the_paths(app, tmp_path):
    from viewer.landscape_view import time_rgb

    app.worker.pause()
    app.landscape.toggle_window()
    settle(app)
    first = app.landscape.result
    assert first.landscape.q.shape == (64, 64)
    img = plot_pixels(app, tmp_path / "a.png")
    # Viridis spans violet to yellow: the heatmap fills most of the plot with saturated
    # colours; the paths' late-denoising gold is there.
    saturated = (img.max(axis=-1).astype(int) - img.min(axis=-1)) > 60
    assert saturated.mean() > 0.3
    gold = time_rgb(1.0)
    before = near(img, gold, 40)
    assert before > 0

    app.set_weight(1.0)
    settle(app)
    second = app.landscape.result
    # The slice is held at the w = 0 candidates' action: the same grid, not recomputed.
    assert second is first
    rec = app.frame_spec.record
    assert rec.sample.settings.weight == 1.0
    img2 = plot_pixels(app, tmp_path / "b.png")
    assert not np.array_equal(img, img2)  # the paths moved


@window
def test_a_click_probe_reaches_the_status_bar_and_the_scene(app):
    view = app.landscape
    if not view.shown():
        view.toggle_window()
    settle(app)
    view.request_probe((0.5, -0.4))
    assert app.worker.wait_idle(60)
    pump(app, lambda: view.probe is not None, 60)
    for _ in range(4):
        app.frame()
    text = app.status_text()
    assert "probe (+0.50, -0.40): Q" in text
    probe = view.probe
    # The probe's Q is the critic's at that action.
    import torch

    land = view.result.landscape
    a = torch.as_tensor(land.base, dtype=torch.float32).clone()
    dx, dy = land.spec.flat_dims(view.result.env_action_dim)
    a[dx], a[dy] = 0.5, -0.4
    obs = torch.as_tensor(app.frame_spec.record.obs, dtype=torch.float32)[None]
    with torch.no_grad():
        assert probe.q == pytest.approx(float(app.session.critic(obs, a[None])[0]), abs=1e-5)
    assert "landscape" in app.frames.scene_layers


@window
def test_slice_and_layer_choices_survive_a_saved_timeline(app, tmp_path):
    view = app.landscape
    view.set_slice(dims=(0, 2), hold="mean", resolution=32)
    view.set_layer("gradients", False)
    view._set_heat("head std")
    path = app.save_timeline(tmp_path / "l.timeline.safetensors")
    assert app.worker.wait_idle(60)
    saved = view.prefs()
    view.set_slice(dims=(1, 3), hold="ghost", resolution=64)
    view.set_layer("gradients", True)
    view._set_heat("Q")
    app.open_timeline(path)
    assert app.worker.wait_idle(120)
    assert view.prefs() == saved
    assert view.spec.dims == (0, 2) and view.spec.resolution == 32 and view.heat == "head std"
