"""viewer/app.py's timeline under Xvfb: the slider scrubs recorded steps, Live returns.

Like tests/test_viewer_app.py, the window tests run in a child pytest process of their own
(``tests/xvfb.py`` says why).
"""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
from viewer_window import invoke, open_app, pump, shown
from xvfb import window_tests

pytestmark = [pytest.mark.gui, pytest.mark.slow]

ENV = "cube-single-play-singletask-task2-v0"
# Every window test below runs in a fresh process of its own (tests/xvfb.py says why).
window, test_window_tests = window_tests(__file__, "QGF_VIEWER_TIMELINE_WINDOW_TESTS", globals())


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


@window
def test_branch_from_a_past_step_is_drawn_plotted_and_switchable(app, tmp_path):
    import dearpygui.dearpygui as dpg

    from viewer.session import branch_rgba

    session, t = app.session, app._tags
    app.reset()
    settle(app)
    for _ in range(6):
        app.single_step()
        settle(app)
    assert not dpg.is_item_shown(t["plot_branches"])  # one line of play: nothing to compare
    invoke(t["timeline"], 3)
    settle(app)
    # Moving the weight while step 3 is shown branches from it.
    invoke(t["weight_input"], 0.4)
    settle(app)
    assert len(session.branches) == 2 and session.branch.fork == 3
    assert session.current.index == 3 and session.current.settings.weight == pytest.approx(0.4)
    for _ in range(3):
        app.single_step()
        settle(app)
    # The branch plot appears with a Q and a return curve per branch, as computed.
    assert dpg.is_item_shown(t["plot_branches"])
    assert len(app._branch_series) == 2
    for b, (q, ret) in zip(session.branches, app._branch_series, strict=True):
        curves = session.episode_curves(b.id)
        assert np.allclose(dpg.get_value(q)[1], curves["q"])
        assert np.allclose(dpg.get_value(ret)[1], curves["return"])
    labels = dpg.get_item_configuration(t["branch"])["items"]
    assert labels == [b.label for b in session.branches]
    assert dpg.get_value(t["branch"]) == session.branch.label
    # Both effector paths are in the scene in their branch colours.
    shot = iio.imread(app.screenshot(tmp_path / "b.png"))
    x, y = (int(v) for v in dpg.get_item_rect_min(t["image"]))
    w, h = (int(v) for v in dpg.get_item_rect_size(t["image"]))
    scene = shot[y : y + h, x : x + w, :3].astype(int)
    for i in (0, 1):
        rgb = (np.asarray(branch_rgba(i)[:3]) * 255).astype(int)
        assert (np.abs(scene - rgb).max(axis=-1) < 40).sum() > 20, f"branch {i} not drawn"
    # Switching back through the selector continues the first line where it was.
    invoke(t["branch"], labels[0])
    settle(app)
    assert session.active == 0 and session.step_index == 6
    assert dpg.get_value(t["branch"]) == "main"
    # "Branch here" at the live step makes a third branch with unchanged settings.
    invoke(t["branch_here"])
    settle(app)
    assert len(session.branches) == 3 and session.branch.fork == 6
