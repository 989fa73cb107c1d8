"""A display for GUI tests: the existing ``DISPLAY``, or an Xvfb server started once per run.

GUI test modules use it as::

    from xvfb import require_display

    @pytest.fixture(scope="module", autouse=True)
    def _display():
        require_display()

``require_display`` skips the test (with the reason) only when there is no display and Xvfb
is not installed; CI installs Xvfb (``.ci/run``), so there the GUI tests always run. The
server is stopped when the test process exits.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

SCREEN = "1280x800x24"
_STARTUP_TIMEOUT = 15.0
_server: subprocess.Popen | None = None


def _free_display() -> int:
    """A display number with no X socket or lock file (searching upwards from :90)."""
    for n in range(90, 190):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            return n
    raise RuntimeError("no free X display number in :90..:189")


def _stop() -> None:
    global _server
    if _server is not None and _server.poll() is None:
        _server.terminate()
        try:
            _server.wait(5)
        except subprocess.TimeoutExpired:
            _server.kill()
    _server = None


def ensure_display() -> str | None:
    """``DISPLAY`` if set; otherwise start Xvfb, set ``DISPLAY`` and return it.

    Returns None when there is no display and Xvfb is not installed.

    Raises:
        RuntimeError: Xvfb is installed but did not come up.
    """
    global _server
    if os.environ.get("DISPLAY"):
        return os.environ["DISPLAY"]
    binary = shutil.which("Xvfb")
    if binary is None:
        return None
    number = _free_display()
    _server = subprocess.Popen(
        [binary, f":{number}", "-screen", "0", SCREEN, "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    atexit.register(_stop)
    socket = Path(f"/tmp/.X11-unix/X{number}")
    end = time.monotonic() + _STARTUP_TIMEOUT
    while not socket.exists():
        if _server.poll() is not None:
            err = _server.stderr.read().decode(errors="replace") if _server.stderr else ""
            raise RuntimeError(f"Xvfb :{number} exited at start: {err.strip()[-500:]}")
        if time.monotonic() > end:
            _stop()
            raise RuntimeError(f"Xvfb :{number} did not start within {_STARTUP_TIMEOUT:.0f} s")
        time.sleep(0.05)
    os.environ["DISPLAY"] = f":{number}"
    return os.environ["DISPLAY"]


def require_display() -> str:
    """The display to use, or skip the calling test when none can be had."""
    display = ensure_display()
    if display is None:
        pytest.skip("no DISPLAY and Xvfb is not installed (apt-get install xvfb)")
    return display
