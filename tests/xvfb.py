"""A display for GUI tests: the existing ``DISPLAY``, or an Xvfb server started once per run.

GUI test modules use it as::

    from xvfb import require_display

    @pytest.fixture(scope="module", autouse=True)
    def _display():
        require_display()

``require_display`` skips the test (with the reason) only when there is no display and Xvfb
is not installed; CI installs Xvfb (``.ci/run``), so there the GUI tests always run. The
server (``viewer.display``) is stopped when the test process exits.

A Dear PyGui window leaves the process's GL state behind: a later MuJoCo EGL context made
on the same thread fails (EGL_BAD_ACCESS), and a later window crashes if the first ran
next to MuJoCo. ``in_child_process`` runs a module's window tests in a fresh pytest process,
so they cannot break the tests that come after them::

    IN_CHILD = os.environ.get("MY_WINDOW_TESTS") == "1"
    window = pytest.mark.skipif(not IN_CHILD, reason="runs in its own process")

    @pytest.mark.skipif(IN_CHILD, reason="this is the child")
    def test_window_tests():
        in_child_process(__file__, "MY_WINDOW_TESTS", expected=5)

    @window
    def test_something_with_a_window(): ...
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from viewer.display import ensure_display


def require_display() -> str:
    """The display to use, or skip the calling test when none can be had."""
    display = ensure_display()
    if display is None:
        pytest.skip("no DISPLAY and Xvfb is not installed (apt-get install xvfb)")
    return display


def in_child_process(path: str, flag: str, expected: int, timeout: float = 1200) -> None:
    """Run the tests of module ``path`` in a new pytest process with ``flag=1`` set in its
    environment; fail with its output unless exactly ``expected`` tests passed."""
    require_display()
    env = dict(os.environ, **{flag: "1"})
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", path]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    lines = done.stdout.strip().splitlines()
    summary = lines[-1] if lines else ""
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    assert f"{expected} passed" in summary, summary
