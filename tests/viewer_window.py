"""Helpers shared by the window tests (tests/test_viewer*_app.py), which run in a child
process of their own (``tests/xvfb.py`` says why)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

from xvfb import require_display


def open_app(settings, checkpoint: Path | None = None) -> Iterator:
    """Build a ``ViewerApp`` on a new session, wait for its first frame, close it after.

    For module fixtures: ``yield from open_app(Settings(...), path)``.
    """
    require_display()
    from viewer.app import ViewerApp
    from viewer.session import Session

    app = ViewerApp(Session(checkpoint, settings=settings))
    app.build()
    app._wait_first_frame()
    yield app
    app.close()


def pump(app, until: Callable[[], bool], timeout: float = 60.0) -> None:
    """Run GUI frames until ``until()`` holds (fails the test on timeout)."""
    end = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < end, "condition not reached in time"
        app.frame()


def shown(app) -> bool:
    """The session's newest state has reached the plots."""
    return app.frame_spec is not None and app.frame_spec.version == app.session.version


def invoke(tag, value=None) -> None:
    """Set a widget's value and call its callback, as Dear PyGui does on user input."""
    import dearpygui.dearpygui as dpg

    if value is not None and dpg.get_item_info(tag)["type"] != "mvAppItemType::mvKeyPressHandler":
        dpg.set_value(tag, value)
    cb = dpg.get_item_callback(tag)
    cb(tag, value, dpg.get_item_user_data(tag))
