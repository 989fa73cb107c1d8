"""benchmarks/soak.py: its figures from samples, and a short soak of both windows.

The soak test runs the debugger (with "loop" on) and the 2-pane demo, each in a child
process of its own, side by side, for ``QGF_SOAK_SECONDS`` (default 300: five minutes),
playing episode after episode while the tools are used, and asserts that resident memory
grew by less than 50 MB after the warm-up, that nothing raised, and that episodes followed
each other by themselves. The fps at the start and at the end (per wall second and per CPU
second) are printed, not asserted: both move with the load of other processes on a shared
machine. ``qgf bench soak`` runs the long version.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.soak import GROWTH_LIMIT_MB, Sample, drift, slope_per_hour, summarize

ROOT = Path(__file__).resolve().parent.parent
SECONDS = float(os.environ.get("QGF_SOAK_SECONDS", "300"))


def _sample(t: float, rss: float, play: float, frames: int, cpu: float, steps: int = 0):
    return Sample(
        t=t, rss_mb=rss, cpu=cpu, frames=frames, steps=steps, episodes=1, play_wall=play,
        play_cpu=cpu, play_frames=frames, items=10, threads=3, timeline_mb=0.0,
        episode_steps=0, errors=0,
    )  # fmt: skip


def test_slope_is_per_hour_and_zero_without_a_trend():
    assert slope_per_hour([0, 1800, 3600], [100, 105, 110]) == pytest.approx(10.0)
    assert slope_per_hour([0, 60], [5, 5]) == 0.0
    assert slope_per_hour([10], [5]) == 0.0


def test_summary_measures_from_the_end_of_the_warm_up():
    # 100 MB at the start, 300 MB once warm (t >= 60), then +6 MB; 5 fps, then 4 fps.
    samples = [_sample(0, 100, 0, 0, 0)]
    for i in range(1, 13):
        t = 30.0 * i
        rss = 300.0 + (0.5 * (i - 2) if i >= 2 else -150)
        frames = 5 * t if t <= 180 else 900 + 4 * (t - 180)
        samples.append(_sample(t, rss, t, int(frames), t / 2, steps=int(t)))
    r = summarize(samples, warmup=60, window=60)
    assert r["rss_warm_mb"] == 300 and r["rss_end_mb"] == 305
    assert r["growth_mb"] == pytest.approx(5.0)
    assert r["slope_mb_per_hour"] == pytest.approx(60.0)
    assert r["slope_mb_per_1000_steps"] == pytest.approx(1000 / 60)
    assert r["fps_wall_start"] == pytest.approx(5.0) and r["fps_wall_end"] == pytest.approx(4.0)
    assert r["fps_cpu_start"] == pytest.approx(10.0) and r["fps_cpu_end"] == pytest.approx(8.0)
    assert drift(5.0, 4.0) == pytest.approx(-0.2)


def _start(demo: bool, seconds: float) -> subprocess.Popen:
    """``benchmarks.soak``'s child for one window, its JSON result on stdout."""
    warmup = min(60.0, seconds / 4)
    cmd = [
        sys.executable, "-m", "benchmarks.soak", "--child", "--json",
        "--seconds", str(seconds), "--warmup", str(warmup), "--window", str(warmup),
        "--sample", "5", "--every", str(max(5.0, seconds / 15)),
        "--candidates", "6", "--denoise-steps", "6", "--width", "1024", "--height", "640",
    ] + ["--demo"] * demo  # fmt: skip
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _result(proc: subprocess.Popen, timeout: float) -> dict:
    out, err = proc.communicate(timeout=timeout)
    line = next((x for x in out.splitlines()[::-1] if x.startswith("{")), None)
    assert proc.returncode == 0 and line is not None, (out + err)[-6000:]
    return json.loads(line)


@pytest.mark.slow
@pytest.mark.gui
def test_soak_memory_stays_flat_and_nothing_raises():
    from xvfb import require_display

    require_display()
    started = time.monotonic()
    procs = {"debugger": _start(False, SECONDS), "demo": _start(True, SECONDS)}
    try:
        results = {name: _result(p, timeout=SECONDS + 600) for name, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    print(
        f"\nsoak of {SECONDS:.0f} s, both windows side by side: {time.monotonic() - started:.0f} s"
    )
    for name, r in results.items():
        print(
            f"{name}: {r['steps']} steps, {r['episodes']} episodes, {r['frames']} frames; RSS "
            f"{r['rss_warm_mb']:.1f} -> {r['rss_end_mb']:.1f} MB ({r['growth_mb']:+.1f}, "
            f"{r['slope_mb_per_hour']:+.1f} MB/h); fps wall {r['fps_wall_start']:.2f} -> "
            f"{r['fps_wall_end']:.2f}, per CPU s {r['fps_cpu_start']:.2f} -> "
            f"{r['fps_cpu_end']:.2f}; items {r['items_warm']} -> {r['items_end']}; "
            f"tools {r['actions']}; episodes ended by play {r['episodes_ended']}"
        )
    for name, r in results.items():
        assert r["errors"] == 0 and r["driver_errors"] == [], (name, r["driver_errors"])
        assert r["growth_mb"] < GROWTH_LIMIT_MB, (name, r["growth_mb"])
        assert r["threads_end"] <= r["threads_warm"], name
    # An episode played to its end is followed by the next without a reset from outside:
    # the debugger's loop box (the demo loops by itself; the soak also moves it on).
    debugger = results["debugger"]
    if debugger["episodes_ended"]:
        assert debugger["episodes"] >= 2, debugger["episodes"]
    assert results["demo"]["episodes"] >= 2
    tools = results["debugger"]["actions"]
    assert set(tools) == {"branch", "compare", "sweep", "save+open"}, tools
