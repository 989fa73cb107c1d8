"""viewer/display.py: processes that start Xvfb at the same moment each get a server of
their own (they used to pick the same free number; the later one then drew on the first
one's server and lost its window when that process exited)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import sys, time
from pathlib import Path
from viewer import display
name = display.ensure_display()
number = int(name[1:])
own = display._lock_pid(Path(f"/tmp/.X{number}-lock")) == display._server.pid
print(name, own, flush=True)
sys.stdin.read()  # holds the server until the test has seen every process's
"""


@pytest.mark.gui
@pytest.mark.skipif(shutil.which("Xvfb") is None, reason="Xvfb is not installed")
def test_processes_starting_at_once_get_displays_of_their_own():
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD],
            cwd=ROOT,
            env=env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for _ in range(4)
    ]
    try:
        lines = [p.stdout.readline().split() for p in procs]
    finally:
        for p in procs:
            p.communicate("", timeout=30)
    assert all(len(x) == 2 for x in lines), lines
    names = [name for name, _ in lines]
    assert len(set(names)) == len(names), names
    assert all(own == "True" for _, own in lines), lines
