"""viewer/app.py and ``qgf view``: the window under Xvfb, driven through its own callbacks.

The window tests run in a child pytest process of their own (``test_window_tests`` starts
it, ``tests/xvfb.py`` says why): Dear PyGui 2.3 segfaults in a process that opens a second
window after one that ran next to a MuJoCo EGL context (a stale GLFW focus event reaches the
new window), and a window's GL state breaks later EGL contexts on its thread.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from helpers import time_limit
from viewer_window import invoke, open_app, pump, shown
from xvfb import require_display, window_tests

from core.render import EXECUTED_RGBA, time_color

pytestmark = [pytest.mark.gui, pytest.mark.slow]

ENV = "cube-single-play-singletask-task2-v0"
# Every window test below runs in a fresh process of its own (tests/xvfb.py says why).
window, test_window_tests = window_tests(__file__, "QGF_VIEWER_WINDOW_TESTS", globals())


@pytest.fixture(scope="module")
def app():
    from core.defaults import default_checkpoint
    from viewer.session import Settings

    # What `qgf view` opens: the shipped default checkpoint, random weights without one.
    settings = Settings(env_name=ENV, steps=6, candidates=6, weight=0.03)
    yield from open_app(settings, default_checkpoint())


def settle(app, timeout: float = 60.0) -> None:
    """Let the worker finish and the newest state reach the screen."""
    assert app.worker.wait_idle(timeout)
    pump(app, lambda: shown(app))
    app.frame()


def scene_pixels(app, png: np.ndarray) -> np.ndarray:
    """The scene image's region of a window screenshot."""
    import dearpygui.dearpygui as dpg

    x, y = (int(v) for v in dpg.get_item_rect_min(app._tags["image"]))
    w, h = (int(v) for v in dpg.get_item_rect_size(app._tags["image"]))
    return png[y : y + h, x : x + w, :3]


def count_color(img: np.ndarray, rgba, tol: int = 30) -> int:
    rgb = (np.asarray(rgba[:3]) * 255).astype(int)
    return int((np.abs(img.astype(int) - rgb).max(axis=-1) < tol).sum())


@window
def test_opens_with_the_default_checkpoint(app):
    import dearpygui.dearpygui as dpg

    from core.defaults import default_checkpoint

    shipped = default_checkpoint()
    label = dpg.get_value(app._tags["checkpoint"])
    if shipped is None:
        assert app.session.label == "random weights"
        assert "RANDOM WEIGHTS" in dpg.get_value(app._tags["label"])
    else:
        assert app.session.checkpoint_path == shipped.resolve()
        assert shipped.name in label and dpg.get_value(app._tags["label"]) == ""


@window
def test_opens_and_renders_frames(app):
    assert app.frames_shown >= 1
    assert app.frames.stats.frames >= 1
    assert app._buffer.std() > 0.02  # the texture holds a real scene
    n = app.gui_frames
    for _ in range(5):
        app.frame()
    assert app.gui_frames == n + 5


@window
def test_screenshot_not_blank_with_overlay_colors(app, tmp_path):
    settle(app)
    shot = iio.imread(app.screenshot(tmp_path / "shot.png"))
    assert shot.ndim == 3 and shot.shape[0] >= 600 and shot[..., :3].std() > 10
    scene = scene_pixels(app, shot)
    assert scene.size and scene.std() > 10
    yellow = count_color(scene, time_color(1.0))
    white = count_color(scene, EXECUTED_RGBA, tol=12)
    assert yellow > 10 and white > 10
    # With every overlay layer off the same colours are gone from the scene.
    for name in ("denoise", "final", "executed", "ghost", "gripper"):
        app.toggle_layer(name)
    assert app.frames.wait_served(app.frames.requested, 60)
    app.frame()
    bare = scene_pixels(app, iio.imread(app.screenshot(tmp_path / "bare.png")))
    assert count_color(bare, time_color(1.0)) < yellow / 10
    for name in ("denoise", "final", "executed", "ghost", "gripper"):
        app.toggle_layer(name)


@window
def test_weight_slider_callback_redraws_candidates(app):
    import dearpygui.dearpygui as dpg

    settle(app)
    before = app.frame_spec.overlay.final.copy()
    assert dpg.get_value(app._tags["log"])  # log scale by default: slider holds log10 w
    invoke(app._tags["weight_slider"], math.log10(0.8))
    settle(app)
    assert app.session.settings.weight == pytest.approx(0.8)
    after = app.frame_spec.overlay.final
    assert not np.allclose(before, after)
    assert dpg.get_value(app._tags["weight_input"]) == pytest.approx(0.8, rel=1e-4)
    # Linear scale: the same slider now holds w itself.
    invoke(app._tags["log"], False)
    invoke(app._tags["weight_slider"], 0.03)
    settle(app)
    assert app.session.settings.weight == pytest.approx(0.03)
    assert np.allclose(app.frame_spec.overlay.final, before, atol=1e-5)
    invoke(app._tags["log"], True)


@window
def test_step_reset_and_keys(app):
    import dearpygui.dearpygui as dpg

    settle(app)
    start = app.session.step_index
    app.single_step()
    settle(app)
    assert app.session.step_index == start + 1
    assert app.frame_spec.record.index == start + 1
    episode = app.session.episode
    app.reset()
    settle(app)
    assert app.session.step_index == 0 and app.session.episode == episode + 1
    # Space plays, space pauses; H shows the help.
    key = app._tags["key_space"]
    invoke(key)
    assert app.worker.playing
    pump(app, lambda: app.session.step_index >= 2)
    invoke(key)
    assert not app.worker.playing
    invoke(app._tags["key_h"])
    assert dpg.is_item_shown(app._tags["help"])
    invoke(app._tags["key_escape"])
    assert not dpg.is_item_shown(app._tags["help"])


@window
def test_estimator_and_task_switch(app):
    import dearpygui.dearpygui as dpg

    settle(app)
    invoke(app._tags["estimator"], "ood")
    settle(app)
    assert app.frame_spec.record.sample.guided.estimator == "ood"
    assert "Critic queried" in dpg.get_value(app._tags["estimator_doc"])
    invoke(app._tags["estimator"], "qgf")
    settle(app)
    model = app.frame_spec.model
    other_task = "cube-single-play-singletask-task3-v0"
    invoke(app._tags["env"], other_task)
    settle(app, timeout=120)
    assert app.session.settings.env_name == other_task and app.session.step_index == 0
    assert app.frame_spec.model is not model  # the renderer follows the new env
    assert app._buffer.std() > 0.02
    # Another family: 37-dim observations. Random weights are rebuilt to fit; a checkpoint
    # trained on 28 refuses, says why, and nothing changes.
    invoke(app._tags["env"], "cube-double-play-singletask-task1-v0")
    settle(app, timeout=120)
    if app.session.config is None:
        assert app.session.current.obs.shape == (37,)
    else:
        pump(app, lambda: "37" in app.status_text())
        assert app.session.settings.env_name == other_task
        assert app.session.current.obs.shape == (28,)
    invoke(app._tags["env"], ENV)
    settle(app, timeout=120)
    assert app.session.current.obs.shape == (28,)
    assert dpg.get_value(app._tags["env"]) == ENV


@window
def test_failing_callbacks_do_not_kill_the_app(app):
    settle(app)
    errors = app.errors
    app.callback("boom", lambda *_: 1 / 0)()
    invoke(app._tags["weight_input"], -1.0)  # a real widget given a bad value
    app.command("bad command", lambda s: s.update(steps=-3))
    assert app.worker.wait_idle(30)
    pump(app, lambda: "bad command" in app.status_text())
    assert app.errors >= errors + 3
    assert "ERROR" in app.status_text()
    # Still alive: it steps and shows the new state.
    start = app.session.step_index
    app.single_step()
    settle(app)
    assert app.session.step_index == start + 1


@window
def test_cli_frames_and_screenshot(tmp_path):
    require_display()
    out = tmp_path / "cli.png"
    cmd = [
        sys.executable,
        "-m",
        "core.cli",
        "view",
        "--random-weights",
        "--frames",
        "5",
        "--screenshot",
        str(out),
    ]
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    img = iio.imread(out)
    assert img.shape[0] == 800 and img.shape[1] == 1280 and img[..., :3].std() > 10
    bad = subprocess.run(
        cmd[:-2] + ["--screenshot", str(Path("/nonexistent-dir/x.png"))],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "cannot write" in bad.stderr


@window
def test_record_button_writes_what_the_scene_shows(app, tmp_path, monkeypatch):
    import dearpygui.dearpygui as dpg

    settle(app)
    monkeypatch.chdir(tmp_path)  # the default path is recordings/ under the CWD
    dpg.set_value(app._tags["record_caption"], False)  # read when recording starts
    button = app._tags["record"]
    invoke(button)
    assert app.recorder.is_recording
    for _ in range(3):
        app.single_step()
        settle(app)
    app.frame()
    assert "REC" in dpg.get_value(app._tags["rec"])
    assert dpg.get_item_configuration(button)["label"] == "Stop"
    n = app.recorder.frame_count
    assert n >= 3
    invoke(button)
    app.frame()
    assert not app.recorder.is_recording and "REC" not in dpg.get_value(app._tags["rec"])
    files = list((tmp_path / "recordings").glob(f"{ENV}-*.mp4"))
    # The path stays in the status bar, beside any error message shown at the time.
    assert len(files) == 1 and str(files[0]) in dpg.get_value(app._tags["rec"])
    video = iio.imread(files[0])
    h, w = app._buffer.shape[:2]
    # Frames rendered between reading n and the stop are in the file too.
    assert video.shape[0] >= n and video.shape[1:] == (h, w, 3)
    # The key does the same: V starts, V stops; the GIF format comes from the combo.
    dpg.set_value(app._tags["record_format"], "gif")
    invoke(app._tags["key_v"])
    app.single_step()
    settle(app)
    invoke(app._tags["key_v"])
    gifs = list((tmp_path / "recordings").glob(f"{ENV}-*.gif"))
    assert len(gifs) == 1 and iio.imread(gifs[0], index=None).shape[1:3] == (h, w)
    dpg.set_value(app._tags["record_format"], "mp4")
    dpg.set_value(app._tags["record_caption"], True)


@window
def test_loop_plays_the_next_seeds_episode_and_gives_way_to_a_pause(app):
    limit = time_limit(app.session.env)
    app.worker.pause()
    app.reset()
    settle(app)
    seed, episode, steps = app.session.settings.seed, app.session.episode, limit._max_episode_steps
    limit._max_episode_steps = 3  # short episodes (reset keeps the limit)
    app.worker.set_speed(0)
    app.loop_hold = 1.0
    try:
        invoke(app._tags["loop"], True)
        app.play_pause()
        pump(app, lambda: app.session.episode >= episode + 2, timeout=120)
        assert app.session.settings.seed >= seed + 2
        settle(app)
        assert int(dpg_value(app._tags["seed"])) == app.session.settings.seed
        # A pause while the ended episode is held keeps it on screen.
        pump(app, lambda: app.session.done and not app.worker.playing, timeout=120)
        app.worker.pause()
        ended = app.session.episode
        end = time.monotonic() + 1.5 * app.loop_hold
        while time.monotonic() < end:
            app.frame()
        assert app.session.episode == ended and app.session.done
        # Play there (loop on) starts the next episode.
        app.play_pause()
        pump(app, lambda: app.session.episode == ended + 1, timeout=60)
    finally:
        invoke(app._tags["loop"], False)
        limit._max_episode_steps = steps
        app.worker.set_speed(20)
        app.worker.pause()
        app.command("reset", lambda s: s.reset(seed=seed))
        settle(app)


def dpg_value(tag):
    import dearpygui.dearpygui as dpg

    return dpg.get_value(tag)
