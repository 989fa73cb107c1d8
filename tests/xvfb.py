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
next to MuJoCo. ``window_tests`` runs a module's window tests in a fresh pytest process,
so they cannot break the tests that come after them::

    window, test_window_tests = window_tests(__file__, "MY_WINDOW_TESTS", globals())

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


def window_tests(path: str, flag: str, namespace: dict) -> tuple:
    """The ``window`` marker and the ``test_window_tests`` runner of a window test module.

    In the test run, the runner starts one child pytest process on the module with ``flag``
    set, and the ``window`` tests skip; in the child, they run and the runner skips. The
    runner expects every other ``test_*`` of ``namespace`` (the module's ``globals()``,
    read when it runs) to pass there.
    """
    in_child = os.environ.get(flag) == "1"
    window = pytest.mark.skipif(not in_child, reason="runs in its own process (test_window_tests)")

    @pytest.mark.skipif(in_child, reason="this is the child")
    def test_window_tests() -> None:
        """Every window test of the module, in a fresh process."""
        expected = sum(1 for n in namespace if n.startswith("test_") and n != "test_window_tests")
        in_child_process(path, flag, expected)

    return window, test_window_tests
