"""A display for the window when there is none: start Xvfb once, for scripts and benchmarks.

``ensure_display()`` returns ``DISPLAY`` when it is set; otherwise it starts an Xvfb server
on a free display number, sets ``DISPLAY`` for this process and its children, and stops the
server when the process exits. No Dear PyGui import: call it before the window is created.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import time
from pathlib import Path

SCREEN = "1280x800x24"
_STARTUP_TIMEOUT = 15.0
_ATTEMPTS = 10
_server: subprocess.Popen | None = None


def _free_display() -> int:
    """A display number with no X socket or lock file (searching upwards from :90)."""
    for n in range(90, 190):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            return n
    raise RuntimeError("no free X display number in :90..:189")


def stop_xvfb() -> None:
    """Stop the Xvfb server this process started, if any."""
    global _server
    if _server is not None and _server.poll() is None:
        _server.terminate()
        try:
            _server.wait(5)
        except subprocess.TimeoutExpired:
            _server.kill()
    _server = None


def ensure_display(screen: str = SCREEN) -> str | None:
    """``DISPLAY`` if set; otherwise start Xvfb (``screen`` = WIDTHxHEIGHTxDEPTH), set
    ``DISPLAY`` and return it. None when there is no display and Xvfb is not installed.

    Raises:
        RuntimeError: Xvfb is installed but did not come up.
    """
    if os.environ.get("DISPLAY"):
        return os.environ["DISPLAY"]
    binary = shutil.which("Xvfb")
    if binary is None:
        return None
    # Two processes starting at once can pick the same free number; the one whose server
    # did not get the display's lock tries the next number.
    for _ in range(_ATTEMPTS):
        number = _start(binary, _free_display(), screen)
        if number is not None:
            os.environ["DISPLAY"] = f":{number}"
            return os.environ["DISPLAY"]
    raise RuntimeError(f"Xvfb found no free display in {_ATTEMPTS} attempts")


def _start(binary: str, number: int, screen: str) -> int | None:
    """Start Xvfb on ``number``; the number once this server holds it, None when another
    server took it first."""
    global _server
    _server = subprocess.Popen(
        [binary, f":{number}", "-screen", "0", screen, "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    atexit.register(stop_xvfb)
    lock = Path(f"/tmp/.X{number}-lock")
    end = time.monotonic() + _STARTUP_TIMEOUT
    while not (Path(f"/tmp/.X11-unix/X{number}").exists() and _lock_pid(lock) == _server.pid):
        if _server.poll() is not None:
            err = _server.stderr.read().decode(errors="replace") if _server.stderr else ""
            _server = None
            if "already active" in err or _lock_pid(lock) is not None:
                return None  # another server holds this display
            raise RuntimeError(f"Xvfb :{number} exited at start: {err.strip()[-500:]}")
        if time.monotonic() > end:
            stop_xvfb()
            raise RuntimeError(f"Xvfb :{number} did not start within {_STARTUP_TIMEOUT:.0f} s")
        time.sleep(0.05)
    return number


def _lock_pid(lock: Path) -> int | None:
    """The process id in an X server's lock file (None: no file, or not written yet)."""
    try:
        return int(lock.read_text().strip())
    except (OSError, ValueError):
        return None
