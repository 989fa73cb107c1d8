"""The UI monkey at length: thousands of random events per app over several seeds.

Run: ``python -m benchmarks.monkey`` (starts Xvfb if there is no display); ``--events``
per seed, ``--seeds``. ``tests/monkey.py`` is the walk and says what each event is and
what is checked after it; ``tests/test_monkey.py`` runs a short one in the test suite.

Every seed walks in a process of its own (one Dear PyGui window per process), so a seed
that kills its window does not take the others with it. The table, one row per app:

- events: events sent over all seeds;
- errors shown: errors the app caught and the status bar showed (refused hostile values,
  bad paths: expected, and each was checked to be on screen);
- deaths: processes that ended without their summary (a crash, a hang past the limit);
- failures: walks stopped by a failed check (an error not shown, a poisoned control or
  setting, an escaped exception), each printed with its seed and events to replay;
- replays exact: ``Session.replay`` checks exact / run, over every branch (debugger).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HELP = "UI monkey: random events on the debugger and the demo (never dies, errors shown)"
ROOT = Path(__file__).resolve().parent.parent
APPS = ("debugger", "demo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--apps", nargs="+", choices=APPS, default=list(APPS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="walk seeds")
    parser.add_argument("--events", type=int, default=1000, help="events per seed")
    parser.add_argument("--timeout", type=float, default=7200.0, help="seconds per seed")
    parser.add_argument("--quick", action="store_true", help="one seed of 100 events")


def walk(app: str, seed: int, events: int, timeout: float) -> dict:
    """One seed's walk in a child process: its JSON summary, or a death."""
    cmd = [sys.executable, str(ROOT / "tests" / "monkey.py"), app, "--seeds", str(seed)]
    cmd += ["--events", str(events)]
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path)
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"death": f"seed {seed}: no summary within {timeout:.0f} s"}
    lines = done.stdout.strip().splitlines()
    try:
        out = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return {"death": f"seed {seed}: exit {done.returncode}: {done.stderr[-2000:]}"}
    out["seconds"] = time.perf_counter() - t0
    return out


def run(args) -> int:
    from viewer.display import ensure_display

    if ensure_display() is None:
        print("no DISPLAY and Xvfb is not installed", file=sys.stderr)
        return 2
    seeds, events = (args.seeds[:1], 100) if args.quick else (args.seeds, args.events)
    rows, problems = [], []
    for app in args.apps:
        results = [walk(app, seed, events, args.timeout) for seed in seeds]
        deaths = [r["death"] for r in results if "death" in r]
        ok = [r for r in results if "death" not in r]
        failures = [r["failure"] for r in ok if r["failure"]]
        problems += deaths + failures
        rows.append(
            (
                app,
                len(seeds),
                sum(r["events"] for r in ok),
                sum(r["errors_shown"] for r in ok),
                len(deaths),
                len(failures),
                f"{sum(r['replays_exact'] for r in ok)}/{sum(r['replays'] for r in ok)}",
                sum(r["seconds"] for r in ok),
            )
        )
    head = ("app", "seeds", "events", "errors shown", "deaths", "failures", "replays exact", "s")
    print(" | ".join(f"{h:>13}" for h in head))
    for row in rows:
        *cells, seconds = row
        print(" | ".join(f"{c!s:>13}" for c in cells) + f" | {seconds:13.0f}")
    for problem in problems:
        print("\n" + problem)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.monkey", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
