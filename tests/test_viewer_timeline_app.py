"""viewer/app.py's timeline under Xvfb: the slider scrubs recorded steps, Live returns.

Like tests/test_viewer_app.py, the window tests run in a child pytest process of their own
(``tests/xvfb.py`` says why).
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")


import numpy as np  # noqa: E402
import pytest  # noqa: E402
from viewer_window import invoke, open_app, pump, shown  # noqa: E402
from xvfb import in_child_process  # noqa: E402

pytestmark = [pytest.mark.gui, pytest.mark.slow]

ENV = "cube-single-play-singletask-task2-v0"
CHILD_FLAG = "QGF_VIEWER_TIMELINE_WINDOW_TESTS"
IN_CHILD = os.environ.get(CHILD_FLAG) == "1"
window = pytest.mark.skipif(not IN_CHILD, reason="runs in its own process (test_window_tests)")


@pytest.mark.skipif(IN_CHILD, reason="this is the child")
def test_window_tests():
    """Every window test below, in a fresh process (see the module docstring)."""
    expected = sum(1 for n in globals() if n.startswith("test_") and n != "test_window_tests")
    in_child_process(__file__, CHILD_FLAG, expected)


@pytest.fixture(scope="module")
def app():
    from viewer.session import Settings

    yield from open_app(Settings(env_name=ENV, steps=4, candidates=4, weight=0.03))


def settle(app, timeout: float = 60.0) -> None:
    """Let the worker finish and the newest state reach the screen (plots and scene)."""
    assert app.worker.wait_idle(timeout)
    pump(app, lambda: shown(app) and app.frames.started_version >= app.session.version, timeout)
    app.frame()


@window
def test_slider_scrubs_to_a_recorded_step_and_live_returns(app):
    import dearpygui.dearpygui as dpg

    session, t = app.session, app._tags
    for _ in range(5):
        app.single_step()
        settle(app)
    assert dpg.get_value(t["timeline"]) == 5
    app.worker.play()
    invoke(t["timeline"], 2)
    settle(app)
    # Scrubbing paused playback (play may have taken a step before the scrub reached the
    # worker) and shows step 2 as recorded: state, overlay and plots.
    assert not app.worker.playing
    current, live = session.current, session.step_index
    assert live >= 5
    rec = session.history[2]
    spec = app.frame_spec
    assert spec.record is rec and np.array_equal(spec.physics, rec.snapshot.physics)
    assert "step 2/" in dpg.get_value(t["info"]) and f"live at {live}" in dpg.get_value(t["info"])
    assert dpg.get_value(t["ep_shown"])[0][0] == 2.0
    q_exec = dpg.get_value(t["q_exec"])[1]
    assert np.allclose(q_exec, rec.sample.q_denoise[:, rec.sample.executed], atol=1e-5)
    # Nothing ran while the past step was shown.
    for _ in range(5):
        app.frame()
    assert session.current is current and session.step_index == live
    invoke(t["live"])
    settle(app)
    assert app.frame_spec.record is session.current is current
    assert dpg.get_value(t["timeline"]) == live
    assert dpg.get_item_label(t["live"]) == "Live"
