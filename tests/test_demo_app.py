"""viewer/demo_app.py, the live demo window, under Xvfb: lockstep panes, the live slider,
the presenter's keys, full screen, auto-loop, render scale, recording, and a callback that
raises.

Like tests/test_viewer_app.py, the window tests run in a child pytest process of their own
(``tests/xvfb.py`` says why).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import time_limit
from viewer_window import invoke, pump
from xvfb import require_display, window_tests

pytestmark = [pytest.mark.gui, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
window, test_window_tests = window_tests(__file__, "QGF_DEMO_WINDOW_TESTS", globals())


@pytest.fixture(scope="module")
def app():
    require_display()
    from viewer.demo_app import DemoApp
    from viewer.demo_session import DemoSession, default_preset

    preset = replace(default_preset(), steps=3, candidates=4, seeds=(0, 1, 2), hold=0.2)
    a = DemoApp(DemoSession(preset), width=1280, height=720)
    a.build()
    a._wait_first_frame()
    yield a
    a.close()


def settle(app, timeout: float = 120.0) -> None:
    """Let the worker finish and the newest state reach the screen."""
    assert app.worker.wait_idle(timeout)
    pump(app, lambda: app.frame_spec is not None and app.frame_spec.version == app.session.version)


def pause(app) -> None:
    app.worker.pause()
    settle(app)


def status(app) -> str:
    import dearpygui.dearpygui as dpg

    return dpg.get_value(app._tags["status_text"]) + dpg.get_value(app._tags["status_error"])


@window
def test_panes_are_tiled_and_step_in_lockstep(app):
    app.worker.play()
    start = app.session.steps_taken
    pump(app, lambda: app.session.steps_taken >= start + 4)
    pause(app)
    spec = app.frame_spec
    steps = {p.step for p in spec.panes}
    assert len(steps) == 1 and steps.pop() >= 4
    a, b = app.session.panes
    assert (a.noise == b.noise).all()
    # One texture: both panes side by side, with the gap between them.
    h, w = app.frames.shape[:2]
    from viewer.demo_app import GAP

    assert app._buffer.shape[:2] == (h, 2 * w + GAP)


@window
def test_slider_changes_only_the_live_pane(app):
    pause(app)
    left, right = app.session.panes
    left_trace = left.trace
    invoke(app._tags["slider"], math.log10(0.3))
    settle(app)
    assert left.spec.weight == 0 and left.trace is left_trace
    assert right.spec.weight == pytest.approx(0.3)
    assert app.frame_spec.panes[1].caption == "qgf  w = 0.3"
    assert app.frame_spec.panes[0].caption == "unguided  w = 0"
    # The far left of the slider is w = 0.
    invoke(app._tags["slider"], -3.2)
    settle(app)
    assert right.spec.weight == 0


@window
def test_keys_step_the_weight_on_the_grid_and_switch_the_estimator(app):
    pause(app)
    app.set_weight(0.03)
    settle(app)
    invoke(app._tags["key_up"])
    settle(app)
    assert app.session.live.spec.weight == 0.05
    invoke(app._tags["key_minus"])
    invoke(app._tags["key_minus"])
    settle(app)
    assert app.session.live.spec.weight == 0.02
    app._on_wheel(None, 1)
    settle(app)
    assert app.session.live.spec.weight == 0.03
    from core.guidance import ESTIMATORS

    invoke(app._tags["key_2"])
    settle(app)
    assert app.session.live.spec.estimator == list(ESTIMATORS)[1]
    assert app.session.panes[0].spec.estimator == "qgf"
    invoke(app._tags["key_3"])
    invoke(app._tags["key_1"])
    settle(app)
    assert app.session.live.spec.estimator == list(ESTIMATORS)[0]


@window
def test_overlays_camera_and_full_screen_toggle(app):
    pause(app)
    invoke(app._tags["key_o"])
    assert app.frames.overlays is False
    invoke(app._tags["key_o"])
    assert app.frames.overlays is True
    before = app.frames.preset
    invoke(app._tags["key_c"])
    pump(app, lambda: app.frames.served >= app.frames.requested)
    assert app.frames.preset != before
    errors = app.errors
    invoke(app._tags["key_f11"])
    for _ in range(3):
        app.frame()
    assert app.fullscreen
    invoke(app._tags["key_f11"])
    for _ in range(3):
        app.frame()
    assert not app.fullscreen and app.errors == errors


@window
def test_next_episode_and_auto_loop_advance_the_seed(app):
    pause(app)
    session = app.session
    invoke(app._tags["key_n"])
    settle(app)
    assert app.frame_spec.seed == session.preset.seeds[session.seed_index]
    seed_index = session.seed_index
    app.worker.submit(
        "short", lambda s: [setattr(time_limit(p.env), "_max_episode_steps", 2) for p in s.panes]
    )
    settle(app)
    app.worker.play()
    pump(app, lambda: session.seed_index != seed_index, timeout=120)
    pause(app)
    assert session.seed_index == (seed_index + 1) % len(session.preset.seeds)
    assert all(p.episodes >= 1 for p in app.frame_spec.panes)
    app.worker.submit(
        "long", lambda s: [setattr(time_limit(p.env), "_max_episode_steps", 200) for p in s.panes]
    )
    settle(app)


@window
def test_render_scale_drops_and_recovers_when_paused(app):
    pause(app)
    # Earlier tests played: on a loaded machine the scale may have dropped then. Paused, it
    # returns to full; the full size is read once that frame is served.
    app.frame()
    pump(app, lambda: app.frames.served >= app.frames.requested)
    assert app.render_scale == 1.0
    h, w = app.frames.shape[:2]
    assert app.frames.wait_served(app.set_render_scale(0.5))
    assert app.frames.shape[1] < w and app.render_scale == 0.5
    app._status()
    assert "render scale 50%" in status(app)
    app.frame()
    assert app.render_scale == 1.0  # paused: back to full
    pump(app, lambda: app.frames.served >= app.frames.requested)
    assert app.frames.shape[:2] == (h, w)
    # While playing below the target with the renderer the bottleneck, it drops.
    app.target_fps = 1000.0
    app._scale_changed = 0.0
    app.worker.play()
    pump(app, lambda: app.render_scale < 1.0, timeout=60)
    pause(app)
    app.target_fps = app.preset.target_fps
    app.frame()
    assert app.render_scale == 1.0


@window
def test_v_records_the_tiled_panes(app, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pause(app)
    invoke(app._tags["key_v"])
    assert app.recorder.is_recording
    app.worker.play()
    pump(app, lambda: app.recorder.frame_count >= 3)
    pause(app)
    invoke(app._tags["key_v"])
    assert not app.recorder.is_recording
    path = app._saved
    assert path.exists() and path.parent == tmp_path / "recordings"
    import imageio.v3 as iio

    frame = iio.imread(path, index=0)
    assert frame.shape[:2] == app.frames.latest_shape()[:2]  # the tiled frame, captions in it


@window
def test_a_raising_callback_shows_in_the_status_bar_and_the_demo_keeps_running(app):
    def boom(*_):
        raise RuntimeError("deliberate")

    app.callback("boom", boom)()
    app.frame()
    assert "boom: RuntimeError: deliberate" in status(app)
    # A failing command on the worker is shown too, and play goes on.
    app.worker.submit("bad", lambda s: s.set_weight(-1))
    settle(app)
    app.frame()
    assert "weight must be" in status(app)
    start, shown = app.session.steps_taken, app.frames_shown
    app.worker.play()
    pump(app, lambda: app.session.steps_taken >= start + 2 and app.frames_shown > shown + 1)
    pause(app)


def test_a_bad_preset_is_refused_before_any_window(tmp_path, capsys):
    from core.cli import main

    path = tmp_path / "bad.toml"
    path.write_text(
        f"checkpoint = '{ROOT / 'checkpoints' / 'cube-single-task2'}'\n"
        "[[pane]]\nweight = 0\n[[pane]]\nweight = 'high'\n"
    )
    assert main(["view", "--demo", "--demo-preset", str(path)]) == 2
    err = capsys.readouterr().err
    assert "field 'pane[1].weight'" in err and "bad.toml" in err


@window
def test_tab_opens_the_debugger_at_this_state_and_comes_back(app):
    import time

    pause(app)
    invoke(app._tags["key_tab"])
    pump(app, lambda: app.debugger is not None, timeout=120)
    child = app.debugger
    assert "debugger open" in status(app)
    end = time.monotonic() + 8
    while time.monotonic() < end:  # the debugger window runs (a failing one would exit)
        app.frame()
    assert child.poll() is None
    invoke(app._tags["key_tab"])
    assert app.debugger is None and child.poll() is not None
    app.frame()
    assert "back from the debugger" in status(app)
