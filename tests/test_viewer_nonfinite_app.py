"""A critic that returns NaN, in the viewer under Xvfb: the flagged candidates are said in
the status bar and counted in the comparison's table, the app reports no error of its own,
and the episode goes on (on finite actions: ``core.envs.FiniteActions`` would raise).

Like tests/test_viewer_app.py, the window tests run in a child pytest process of their own
(``tests/xvfb.py`` says why).
"""

from __future__ import annotations

import pytest
from helpers import nan_critic_checkpoint
from viewer_window import invoke, open_app, pump, shown
from xvfb import window_tests

pytestmark = [pytest.mark.gui, pytest.mark.slow]

N = 4
window, test_window_tests = window_tests(__file__, "QGF_VIEWER_NONFINITE_WINDOW_TESTS", globals())


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from viewer.session import Settings

    path = nan_critic_checkpoint(tmp_path_factory.mktemp("nan") / "ck", flow_steps=3)
    yield from open_app(Settings(steps=3, candidates=N, weight=0.3), path)


@window
def test_nan_critic_is_flagged_in_status_and_table_and_the_episode_goes_on(app):
    import dearpygui.dearpygui as dpg

    for _ in range(3):
        app.single_step()
        assert app.worker.wait_idle(120)
    pump(app, lambda: shown(app) and app.frame_spec.record.index >= 2, 120)
    app.frame()
    assert f"NON-FINITE guidance {N}/{N}" in app.status_text()

    invoke(app.compare.tags["compute"])
    assert app.worker.wait_idle(300)
    pump(app, lambda: app.compare.result is not None and app.compare._shown is app.compare.result)
    for label, tags in app.compare.cell_tags.items():
        assert dpg.get_value(tags["NaN"]) == str(N), label
    # A non-finite action would have raised at the env (a worker error, counted here).
    assert app.errors == 0, [m.text for m in app.messages]
