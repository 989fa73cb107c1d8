"""Saving and opening timelines in the window (viewer/app.py) and with ``qgf view --open``.

Like tests/test_viewer_app.py, the window tests run in a child pytest process of their own
(``tests/xvfb.py`` says why).
"""

from __future__ import annotations

import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
from viewer_window import invoke, open_app, pump, shown
from xvfb import window_tests

pytestmark = [pytest.mark.gui, pytest.mark.slow]

ENV = "cube-single-play-singletask-task2-v0"
# Every window test below runs in a fresh process of its own (tests/xvfb.py says why).
window, test_window_tests = window_tests(__file__, "QGF_TIMELINE_FILE_WINDOW_TESTS", globals())


@pytest.fixture(scope="module")
def app():
    from viewer.session import Settings

    yield from open_app(Settings(env_name=ENV, steps=4, candidates=4, weight=0.03))


def settle(app, timeout: float = 60.0) -> None:
    """Let the worker finish and the newest state reach the screen."""
    assert app.worker.wait_idle(timeout)
    pump(app, lambda: shown(app), timeout)
    app.frame()


def branch_pixels(png: np.ndarray, branch_id: int) -> int:
    from viewer.session import branch_rgba

    rgb = (np.asarray(branch_rgba(branch_id)[:3]) * 255).astype(int)
    return int((np.abs(png[..., :3].astype(int) - rgb).max(axis=-1) < 40).sum())


@window
def test_save_button_writes_the_timeline_and_the_open_dialog_restores_it(
    app, tmp_path, monkeypatch
):
    import dearpygui.dearpygui as dpg

    from viewer.timeline_file import SUFFIX, read_timeline

    monkeypatch.chdir(tmp_path)  # the default path is timelines/ under the CWD
    session, t = app.session, app._tags
    for _ in range(4):
        app.single_step()
        settle(app)
    invoke(t["timeline"], 2)
    settle(app)
    invoke(t["weight_input"], 0.4)  # at a past step: a branch from it
    settle(app)
    for _ in range(2):
        app.single_step()
        settle(app)
    invoke(t["timeline"], 3)
    settle(app)
    assert len(session.branches) == 2 and session.viewing == 3
    branches, active, viewing = session.branches, session.active, session.viewing

    invoke(t["save_timeline"])
    settle(app)
    files = list((tmp_path / "timelines").glob(f"{ENV}-*{SUFFIX}"))
    assert len(files) == 1
    assert f"saved {files[0]}" in dpg.get_value(t["rec"])
    saved = read_timeline(files[0])
    assert [len(b.history) for b in saved.branches] == [len(b.history) for b in branches]

    # Something else happens, then the file is opened through the dialog's callback.
    app.reset()
    settle(app)
    invoke(t["weight_input"], 0.1)
    settle(app)
    assert len(session.branches) == 1
    dialog = t["timeline_dialog"]
    dpg.get_item_callback(dialog)(dialog, {"file_path_name": str(files[0])}, None)
    settle(app)
    pump(app, lambda: not app._resync)
    assert [len(b.history) for b in session.branches] == [len(b.history) for b in branches]
    assert (session.active, session.viewing) == (active, viewing)
    for old, new in zip(branches, session.branches, strict=True):
        for a, b in zip([*old.history, old.current], [*new.history, new.current], strict=True):
            assert np.array_equal(a.obs, b.obs) and a.settings == b.settings
            assert np.array_equal(a.sample.guided.a_t.numpy(), b.sample.guided.a_t.numpy())
    assert session.replay().exact
    # The controls and plots show the opened timeline: its weight, the step shown, both
    # branches.
    assert dpg.get_value(t["weight_input"]) == pytest.approx(0.4)
    assert dpg.get_value(t["timeline"]) == 3
    assert dpg.get_item_configuration(t["branch"])["items"] == [b.label for b in branches]
    assert app.frame_spec.record is session.viewed
    assert "ERROR" not in app.status_text()

    # A file that is not a timeline: an error in the status bar, the session untouched.
    bad = tmp_path / f"bad{SUFFIX}"
    bad.write_bytes(b"not a timeline")
    dpg.get_item_callback(dialog)(dialog, {"file_path_name": str(bad)}, None)
    settle(app)
    assert "is not a qgf timeline" in app.status_text()
    assert [len(b.history) for b in session.branches] == [len(b.history) for b in branches]


@window
def test_qgf_view_open_shows_the_saved_timeline(tmp_path):
    from viewer.session import Session, Settings
    from viewer.timeline_file import save_timeline

    s = Session(settings=Settings(env_name=ENV, steps=4, candidates=4, weight=0.03))
    for _ in range(6):
        s.step()
    s.branch_from(2, weight=0.5)
    for _ in range(5):
        s.step()
    path = save_timeline(s, tmp_path / "shared.timeline.safetensors")
    s.close()
    out = tmp_path / "open.png"
    cmd = [sys.executable, "-m", "core.cli", "view", "--open", str(path)]
    cmd += ["--frames", "5", "--screenshot", str(out)]
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    png = iio.imread(out)
    # Two branches: both effector paths and the branch plot's curves, in their colours.
    assert branch_pixels(png, 0) > 20 and branch_pixels(png, 1) > 20
