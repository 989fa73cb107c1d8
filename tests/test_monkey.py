"""The UI monkey (tests/monkey.py) on the debugger and the demo, under Xvfb.

Each app runs in a child process of its own (Dear PyGui allows one window per process,
``tests/xvfb.py`` says why): first the regression walks below, the minimal event lists of
the bugs the monkey found, each replayed with every check; then a seeded random walk of
``QGF_MONKEY_EVENTS`` events (default 40) per seed. ``QGF_MONKEY_EVENTS=5000`` is the full
run; ``benchmarks/monkey.py`` prints the table over several seeds.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from xvfb import require_display

pytestmark = [pytest.mark.gui, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
EVENTS = int(os.environ.get("QGF_MONKEY_EVENTS", "40"))
SEEDS = {"debugger": (0,), "demo": (0,)}

# The minimal event list of each bug the monkey found: [kind, target, value].
REGRESSIONS = {
    "debugger": {
        # A second comparison compared the two results by value (their tensors): every
        # frame's tick raised "Boolean value of Tensor ... is ambiguous".
        "compare twice": [["invoke", "compare.compute", None]] * 2,
        # A value the session refused (N = -1, T = 1000, NaN) stayed in its control; an
        # infinite seed or step number raised an OverflowError about floats.
        "refused values leave the controls": [
            ["invoke", "candidates", -1],
            ["invoke", "steps", 1000],
            ["invoke", "weight_input", math.nan],
            ["invoke", "weight_slider", "text"],
            ["invoke", "seed", math.inf],
            ["invoke", "steps", math.nan],
            ["invoke", "timeline", "text"],
        ],
        # Switching branch took over the branch's settings; the controls kept the others.
        "switch branch shows its settings": [
            ["invoke", "branch_here", None],
            ["invoke", "candidates", 7],
            ["invoke", "branch", "main"],
        ],
        # The weight slider's 10 ** 1e3 overflowed with an errno tuple for a message.
        "weight slider beyond its range": [
            ["invoke", "log", True],
            ["invoke", "weight_slider", 1e3],
        ],
        # Comparing at N = 1 looked up the best-of-N row's FLOP count as "none+best_of_1";
        # the count names it "none" (KeyError).
        "compare at N = 1": [
            ["invoke", "candidates", 1],
            ["invoke", "compare.compute", None],
        ],
        # A slice value the landscape refused stayed in its control ("tuple.index(x): x
        # not in tuple" for an unknown dimension).
        "landscape refusals": [
            ["invoke", "landscape.dim_x", "no such item"],
            ["invoke", "landscape.chunk", -1],
            ["invoke", "landscape.res", "text"],
        ],
    },
    "demo": {
        "hostile weights": [
            ["invoke", "slider", math.nan],
            ["invoke", "slider", math.inf],
            ["invoke", "slider", "text"],
            ["invoke", "slider", 1e3],
            ["invoke", "slider", 1e-9],
        ],
    },
}


def run_monkey(app: str, tmp_path: Path, seeds, events: int, replays: dict) -> dict:
    """Run tests/monkey.py on ``app`` in a child process; its JSON summary."""
    require_display()
    files = []
    for i, walk in enumerate(replays.values()):
        files.append(tmp_path / f"replay{i}.json")
        files[-1].write_text(json.dumps(walk))
    cmd = [sys.executable, str(ROOT / "tests" / "monkey.py"), app, "--events", str(events)]
    cmd += ["--seeds", *map(str, seeds), "--replay", *map(str, files)]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr[-6000:]
    summary = json.loads(lines[-1])
    assert summary["failure"] is None, summary["failure"]
    assert done.returncode == 0, done.stderr[-6000:]
    return summary


@pytest.mark.parametrize("app", ["debugger", "demo"])
def test_monkey_walk(app, tmp_path):
    """The regression walks, then the seeded walks: the app never dies, every error shows in
    the status bar, no refused value poisons the session, replays stay exact."""
    replays = REGRESSIONS[app]
    summary = run_monkey(app, tmp_path, SEEDS[app], EVENTS, replays)
    assert summary["runs"] == len(replays) + len(SEEDS[app])
    assert summary["events"] >= EVENTS * len(SEEDS[app])
    assert summary["errors_shown"] >= 4  # the regressions' refused values, at least
    if app == "debugger":
        assert summary["replays"] > 0 and summary["replays_exact"] == summary["replays"]


def test_whole_number_refuses_what_is_not_one():
    from viewer.widgets import whole_number

    assert whole_number("seed", 3) == 3 and whole_number("grid", "64") == 64
    for bad in (math.nan, math.inf, "text", 2.5, None):
        with pytest.raises(ValueError, match="seed must be a whole number"):
            whole_number("seed", bad)
