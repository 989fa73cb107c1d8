"""A display for GUI tests: the existing ``DISPLAY``, or an Xvfb server started once per run.

GUI test modules use it as::

    from xvfb import require_display

    @pytest.fixture(scope="module", autouse=True)
    def _display():
        require_display()

``require_display`` skips the test (with the reason) only when there is no display and Xvfb
is not installed; CI installs Xvfb (``.ci/run``), so there the GUI tests always run. The
server (``viewer.display``) is stopped when the test process exits.
"""

from __future__ import annotations

import pytest

from viewer.display import ensure_display


def require_display() -> str:
    """The display to use, or skip the calling test when none can be had."""
    display = ensure_display()
    if display is None:
        pytest.skip("no DISPLAY and Xvfb is not installed (apt-get install xvfb)")
    return display
