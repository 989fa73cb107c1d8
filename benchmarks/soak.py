"""Soak: a window left playing for a long time, episode after episode, while its tools are used.

Run: ``qgf bench soak`` (the debugger, ``qgf view``) or ``qgf bench soak --demo`` (the demo
with 2 panes, ``qgf view --demo``); ``python -m benchmarks.soak`` too. Starts Xvfb if there
is no display. The window runs in a child process (one Dear PyGui window per process); the
parent prints the table.

The window plays as fast as the machine allows (speed "max"), so a soak of an hour here
covers more episodes than an hour of a demo at its real pace of 20 steps/s would
(``--steps 144000`` is a 2-hour demo's worth; the run stops at ``--seconds`` or ``--steps``,
whichever comes first). Episodes follow each other by themselves: the debugger with its
"loop" box on (the next seed's episode when one ends, held 0 s here), the demo by its own
auto-loop over the preset's seeds. Every ``--every`` seconds the soak uses one tool, in
turn:

- debugger: branch at a past step (with another weight), compare every estimator at the step
  shown, the sweep plot (computed while paused), save the timeline to a file and open it;
- demo: a new live weight, the next camera, overlays off and on, the next episode.

Every ``--sample`` seconds it samples the process's resident memory (VmRSS), the CPU
seconds it used (all threads), frames shown, env steps, episodes, Dear PyGui items, Python
threads and, in the debugger, the bytes held by the episode's records. After ``--warmup``
seconds (torch, Mesa and the first textures allocate once) it reports:

- RSS growth (MB) from the end of the warm-up to the end, and its slope (MB/hour, least
  squares over the samples after the warm-up); the pass mark is growth < 50 MB;
- fps in the first and in the last window after the warm-up: frames shown per wall second
  and per CPU second of the process, both counted over play only (the tools pause play);
  the machine is shared, so wall fps swings with other processes' load and CPU fps is the
  steadier figure; the pass mark is the end within 10% of the start;
- exceptions: errors shown in the status bar (callbacks, per-frame parts, worker commands,
  the renderer) and any raised by the soak's own driving; the pass mark is 0.

The window's status-bar history, message and error queues are bounded (deques); the
debugger keeps the records of the current episode only (a reset drops them), so its
timeline bytes are per episode, not per soak.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from core.commands.args import positive_float, positive_int

HELP = "soak: the viewer (or --demo, 2 panes) playing episode after episode; RSS, fps, errors"

GROWTH_LIMIT_MB = 50.0
FPS_DRIFT_LIMIT = 0.10
REAL_TIME_STEPS = 20.0  # what a demo plays at (viewer.worker.REAL_TIME_STEPS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--demo", action="store_true", help="the demo (2 panes: w = 0 and the live weight)"
    )
    parser.add_argument(
        "--seconds",
        type=positive_float,
        default=7200.0,
        help="wall seconds to run (default 2 hours)",
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        help="stop after this many env steps (144000: 2 hours at 20/s)",
    )
    parser.add_argument(
        "--warmup", type=float, default=60.0, help="seconds before the memory baseline"
    )
    parser.add_argument(
        "--sample", type=positive_float, default=10.0, help="seconds between samples"
    )
    parser.add_argument(
        "--every", type=positive_float, default=30.0, help="seconds between uses of the tools"
    )
    parser.add_argument(
        "--window",
        type=float,
        default=60.0,
        help="seconds of play in the first and last fps windows",
    )
    parser.add_argument("--candidates", type=positive_int, default=8, help="candidates N")
    parser.add_argument("--denoise-steps", type=positive_int, default=10, help="denoising steps T")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--width", type=int, default=1280, help="window width")
    parser.add_argument("--height", type=int, default=800, help="window height")
    parser.add_argument(
        "--random-weights", action="store_true", help="untrained networks, not the checkpoint"
    )
    parser.add_argument("--quick", action="store_true", help="2 minutes, 30 s warm-up")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)


# --- measuring ----------------------------------------------------------------------------
def rss_mb() -> float:
    """Resident memory of this process now (VmRSS), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def cpu_seconds() -> float:
    """CPU seconds used by this process so far (every thread, Mesa's included)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class Sample:
    """One look at the process; ``play_*`` count play only (the tools pause it)."""

    t: float  # wall seconds since the start
    rss_mb: float
    cpu: float  # CPU seconds since the start
    frames: int  # frames shown since the start
    steps: int  # env steps since the start
    episodes: int
    play_wall: float
    play_cpu: float
    play_frames: int
    items: int  # Dear PyGui items alive
    threads: int
    timeline_mb: float  # the debugger's episode records; 0 for the demo
    episode_steps: int  # steps in the debugger's active branch
    errors: int


class Soak:
    """Drives one window: play, the tools in turn, samples; counts what went wrong."""

    def __init__(self, app, demo: bool, args: argparse.Namespace) -> None:
        self.app, self.demo, self.args = app, demo, args
        self.samples: list[Sample] = []
        self.driver_errors: list[str] = []
        self.actions: dict[str, int] = {}
        self.play_wall = self.play_cpu = 0.0
        self.play_frames = 0
        self._turn = 0
        self._folder = Path(tempfile.mkdtemp(prefix="qgf-soak-"))
        self._t0 = self._cpu0 = 0.0
        self._frames0 = self._steps0 = 0

    # --- the loop --------------------------------------------------------------------------
    def run(self) -> None:
        app, args = self.app, self.args
        self._t0, self._cpu0 = time.perf_counter(), cpu_seconds()
        self._frames0, self._steps0 = app.frames_shown, app.session.steps_taken
        next_sample, next_tool = args.sample, args.every
        self.sample()
        while True:
            elapsed = time.perf_counter() - self._t0
            steps = app.session.steps_taken - self._steps0
            if elapsed >= args.seconds or (args.steps is not None and steps >= args.steps):
                break
            if elapsed >= next_sample:
                self.sample()
                next_sample = elapsed + args.sample
            if elapsed >= next_tool:
                self.use_tool()
                next_tool = time.perf_counter() - self._t0 + args.every
            self.play_for(0.5)
        self.sample()

    def play_for(self, seconds: float) -> None:
        """Play (resumed if a tool paused it), counting frames, wall and CPU time."""
        app = self.app
        waiting = getattr(app, "_loop_at", None) is not None  # the debugger's loop moves on
        if not app.worker.playing and not app.worker.busy and not waiting:
            # As a presenter would: Play (at an ended episode with loop on: the next one,
            # where a tool used at the end made the loop give way).
            app.play_pause()
        w0, c0, f0 = time.perf_counter(), cpu_seconds(), app.frames_shown
        end = w0 + seconds
        while time.perf_counter() < end:
            app.paced_frame()
        self.play_wall += time.perf_counter() - w0
        self.play_cpu += cpu_seconds() - c0
        self.play_frames += app.frames_shown - f0

    def sample(self) -> None:
        import dearpygui.dearpygui as dpg

        app, session = self.app, self.app.session
        timeline = 0 if self.demo else session.timeline_nbytes()
        episode_steps = 0 if self.demo else session.step_index
        self.samples.append(
            Sample(
                t=time.perf_counter() - self._t0,
                rss_mb=rss_mb(),
                cpu=cpu_seconds() - self._cpu0,
                frames=app.frames_shown - self._frames0,
                steps=session.steps_taken - self._steps0,
                episodes=session.episode,
                play_wall=self.play_wall,
                play_cpu=self.play_cpu,
                play_frames=self.play_frames,
                items=len(dpg.get_all_items()),
                threads=threading.active_count(),
                timeline_mb=timeline / 2**20,
                episode_steps=episode_steps,
                errors=self.errors(),
            )
        )
        s = self.samples[-1]
        print(
            f"soak {s.t:7.0f} s  steps {s.steps:7d}  episodes {s.episodes:5d}  "
            f"RSS {s.rss_mb:7.1f} MB  items {s.items:5d}  threads {s.threads:3d}  "
            f"errors {s.errors}",
            file=sys.stderr,
            flush=True,
        )

    def errors(self) -> int:
        """Errors the window showed, plus any the soak's own driving raised."""
        return self.app.errors + len(self.driver_errors)

    # --- the tools -------------------------------------------------------------------------
    def use_tool(self) -> None:
        tools = self._demo_tools() if self.demo else self._debugger_tools()
        name, fn = tools[self._turn % len(tools)]
        self._turn += 1
        try:
            fn()
            self.actions[name] = self.actions.get(name, 0) + 1
        except Exception as e:  # counted and reported; the soak goes on
            traceback.print_exc()
            self.driver_errors.append(f"{name}: {type(e).__name__}: {e}")

    def _debugger_tools(self) -> list[tuple[str, object]]:
        return [
            ("branch", self._branch),
            ("compare", self._compare),
            ("sweep", self._sweep),
            ("save+open", self._save_open),
        ]

    def _demo_tools(self) -> list[tuple[str, object]]:
        app = self.app
        weights = (0.01, 0.03, 0.1)
        return [
            ("weight", lambda: app.set_weight(weights[self._turn % len(weights)])),
            ("camera", app.cycle_camera),
            ("overlays", lambda: (app.toggle_overlays(), self.pump(0.5), app.toggle_overlays())),
            ("next episode", app.next_episode),
        ]

    def pump(self, seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            self.app.frame()

    def settle(self, until=lambda: True, timeout: float = 120.0) -> None:
        """GUI frames until the worker is idle, its newest state is shown and ``until()``."""
        app = self.app
        end = time.monotonic() + timeout
        while not (
            not app.worker.busy
            and app.frame_spec is not None
            and app.frame_spec.version == app.session.version
            and until()
        ):
            if time.monotonic() > end:
                raise TimeoutError(f"the window did not settle within {timeout:.0f} s")
            app.frame()

    def _pause(self) -> None:
        self.app.worker.pause()
        self.settle()

    def _branch(self) -> None:
        """Back to a past step, branch there with another weight, switch back and forth."""
        app, session = self.app, self.app.session
        self._pause()
        if len(session.history) < 2:
            return
        app.view_step(len(session.history) // 2)
        self.settle()
        weight = 0.1 if session.settings.weight < 0.05 else 0.01
        app.command("branch", lambda s: s.branch_from(weight=weight))
        self.settle()
        app.switch_branch(0)
        self.settle()
        app.switch_branch(len(session.branches) - 1)
        self.settle()

    def _compare(self) -> None:
        compare = self.app.compare
        before = compare._shown
        compare.request()
        self.settle(lambda: not compare.busy and compare._shown is not before)

    def _sweep(self) -> None:
        """Paused, the sweep plot is computed for the live step and drawn."""
        from viewer.manifold_view import sweep_key

        app = self.app
        self._pause()

        def drawn() -> bool:
            view = app.frame_spec.view
            shown = app._sweep_shown
            return shown is not None and shown is app.sweep and shown.key == sweep_key(view)

        self.settle(drawn)

    def _save_open(self) -> None:
        app = self.app
        path = self._folder / "soak.timeline.safetensors"
        self._pause()
        app.save_timeline(path)
        self.settle(lambda: path.exists())
        app.open_timeline(path)
        self.settle(lambda: not app._resync)

    def close(self) -> None:
        for f in self._folder.iterdir():
            f.unlink()
        self._folder.rmdir()


# --- the report ---------------------------------------------------------------------------
def slope_per_hour(t: list[float], y: list[float]) -> float:
    """Least-squares slope of ``y`` against ``t`` (seconds), per hour; 0 for < 2 points."""
    n = len(t)
    if n < 2:
        return 0.0
    mt, my = sum(t) / n, sum(y) / n
    var = sum((a - mt) ** 2 for a in t)
    if var == 0:
        return 0.0
    return 3600 * sum((a - mt) * (b - my) for a, b in zip(t, y, strict=True)) / var


def window_fps(a: Sample, b: Sample) -> tuple[float, float]:
    """Frames shown per second of play, per wall second and per CPU second, from a to b."""
    frames = b.play_frames - a.play_frames
    wall, cpu = b.play_wall - a.play_wall, b.play_cpu - a.play_cpu
    return frames / wall if wall > 0 else math.nan, frames / cpu if cpu > 0 else math.nan


def summarize(samples: list[Sample], warmup: float, window: float) -> dict:
    """The figures of a soak from its samples (``samples[0]`` at the start)."""
    after = [s for s in samples if s.t >= warmup] or samples[-1:]
    base, last = after[0], samples[-1]

    def at_play(play: float, forward: bool) -> Sample:
        """The first sample (forward) or last (backward) at least ``window`` of play away."""
        seq = after if forward else after[::-1]
        for s in seq:
            if abs(s.play_wall - play) >= window:
                return s
        return seq[-1]

    first_end = at_play(base.play_wall, True)
    last_start = at_play(last.play_wall, False)
    start_wall, start_cpu = window_fps(base, first_end)
    end_wall, end_cpu = window_fps(last_start, last)
    return {
        "seconds": last.t,
        "frames": last.frames,
        "steps": last.steps,
        "episodes": last.episodes,
        "rss_start_mb": samples[0].rss_mb,
        "rss_warm_mb": base.rss_mb,
        "rss_end_mb": last.rss_mb,
        "rss_max_mb": max(s.rss_mb for s in after),
        "growth_mb": last.rss_mb - base.rss_mb,
        "slope_mb_per_hour": slope_per_hour([s.t for s in after], [s.rss_mb for s in after]),
        # Per 1000 env steps: what a demo at its real pace would grow by per 50 s.
        "slope_mb_per_1000_steps": slope_per_hour(
            [s.steps for s in after], [s.rss_mb for s in after]
        )
        / 3600
        * 1000,
        "fps_wall_start": start_wall,
        "fps_wall_end": end_wall,
        "fps_cpu_start": start_cpu,
        "fps_cpu_end": end_cpu,
        "items_warm": base.items,
        "items_end": last.items,
        "items_max": max(s.items for s in after),
        "threads_warm": base.threads,
        "threads_end": last.threads,
        "timeline_mb_max": max(s.timeline_mb for s in samples),
        "timeline_kb_per_step": max(
            (1024 * s.timeline_mb / s.episode_steps for s in samples if s.episode_steps >= 20),
            default=math.nan,
        ),
        "errors": last.errors,
    }


def drift(start: float, end: float) -> float:
    """Relative change from start to end (nan when start is not a positive number)."""
    return (end - start) / start if start > 0 else math.nan


# --- the child: one window -----------------------------------------------------------------
def _open_debugger(args: argparse.Namespace):
    from core.defaults import default_checkpoint
    from viewer.app import ViewerApp
    from viewer.session import Session, Settings

    checkpoint = None if args.random_weights else default_checkpoint()
    settings = Settings(candidates=args.candidates, steps=args.denoise_steps)
    app = ViewerApp(Session(checkpoint, settings=settings), width=args.width, height=args.height)
    app.loop, app.loop_hold = True, 0.0
    app.worker.set_speed(0.0)
    return app


def _open_demo(args: argparse.Namespace):
    from viewer.demo_app import DemoApp
    from viewer.demo_session import DemoSession, default_preset

    # Two panes: w = 0 beside the live weight.
    preset = default_preset()
    if args.random_weights:
        preset = replace(preset, checkpoint=None)
    preset = replace(preset, steps=args.denoise_steps, candidates=args.candidates, speed=0.0)
    return DemoApp(DemoSession(preset), width=args.width, height=args.height)


def child(args: argparse.Namespace) -> dict:
    """Run the soak in this process; its figures, samples and counts."""
    import torch

    torch.set_num_threads(args.threads)
    app = _open_demo(args) if args.demo else _open_debugger(args)
    try:
        app.build()
        app._wait_first_frame()
        soak = Soak(app, args.demo, args)
        try:
            soak.run()
        finally:
            soak.close()
        gl = app.frames.stats.gl
        ended = app.worker.episodes_ended
    finally:
        app.close()
    result = summarize(soak.samples, args.warmup, args.window)
    result.update(
        window="demo, 2 panes" if args.demo else "debugger",
        episodes_ended=ended,
        actions=soak.actions,
        driver_errors=soak.driver_errors,
        samples=[asdict(s) for s in soak.samples],
        gl=gl or "unknown GL",
        size=f"{args.width}x{args.height}",
    )
    return result


def print_table(r: dict, args: argparse.Namespace, load: tuple[float, float]) -> None:
    hours = r["steps"] / REAL_TIME_STEPS / 3600
    print(
        f"soak: {r['window']}, {r['size']} window, T={args.denoise_steps}, "
        f"N={args.candidates}, speed max, GL: {r['gl']}, {os.cpu_count()} CPUs, "
        f"load average {load[0]:.1f} before, {load[1]:.1f} after"
    )
    print(
        f"ran {r['seconds'] / 60:.1f} min: {r['frames']} frames shown, {r['steps']} env steps "
        f"({hours:.2f} h of play at {REAL_TIME_STEPS:.0f} steps/s), {r['episodes']} episodes; "
        "tools used: " + ", ".join(f"{k} {v}x" for k, v in r["actions"].items())
    )
    print(f"{'t s':>7} {'steps':>7} {'episodes':>8} {'RSS MB':>8} {'items':>6} {'threads':>7}")
    samples = r["samples"]
    stride = max(1, len(samples) // 12)
    for s in samples[::stride] + ([samples[-1]] if (len(samples) - 1) % stride else []):
        print(
            f"{s['t']:>7.0f} {s['steps']:>7d} {s['episodes']:>8d} {s['rss_mb']:>8.1f} "
            f"{s['items']:>6d} {s['threads']:>7d}"
        )
    ok = "ok" if r["growth_mb"] < GROWTH_LIMIT_MB else "ABOVE"
    print(
        f"RSS after warm-up {r['rss_warm_mb']:.1f} MB, at the end {r['rss_end_mb']:.1f} MB "
        f"(max {r['rss_max_mb']:.1f}): growth {r['growth_mb']:+.1f} MB "
        f"(limit {GROWTH_LIMIT_MB:.0f}) {ok}, slope {r['slope_mb_per_hour']:+.1f} MB/hour"
    )
    per_step = r["slope_mb_per_1000_steps"]
    real = REAL_TIME_STEPS * 7200 / 1000 * per_step
    print(
        f"RSS slope per env step: {per_step:+.3f} MB per 1000 steps, i.e. {real:+.1f} MB over "
        f"a 2-hour demo at {REAL_TIME_STEPS:.0f} steps/s ({REAL_TIME_STEPS * 7200:.0f} steps)"
    )
    for kind in ("wall", "cpu"):
        a, b = r[f"fps_{kind}_start"], r[f"fps_{kind}_end"]
        d = drift(a, b)
        ok = "ok" if abs(d) <= FPS_DRIFT_LIMIT else "OUTSIDE"
        unit = "per wall second" if kind == "wall" else "per CPU second"
        print(
            f"fps ({unit}): start {a:.2f}, end {b:.2f}, change {100 * d:+.1f}% "
            f"(limit {100 * FPS_DRIFT_LIMIT:.0f}%) {ok}"
        )
    print(
        f"Dear PyGui items {r['items_warm']} after warm-up, {r['items_end']} at the end "
        f"(max {r['items_max']}); threads {r['threads_warm']} -> {r['threads_end']}"
    )
    if not r["window"].startswith("demo"):
        kb = r["timeline_kb_per_step"]
        print(
            f"episode records (the timeline; a new episode drops the last one's): at most "
            f"{r['timeline_mb_max']:.1f} MB, {kb:.1f} KB per step; kept for every step of a "
            f"2-hour demo they would take {kb * REAL_TIME_STEPS * 7200 / 2**20:.1f} GB"
        )
    ok = "ok" if r["errors"] == 0 else "FAILED"
    print(f"exceptions: {r['errors']} {ok}")
    for e in r["driver_errors"]:
        print(f"  {e}")


def _child_command(args: argparse.Namespace) -> list[str]:
    cmd = [
        sys.executable, "-m", "benchmarks.soak", "--child", "--json",
        "--seconds", str(args.seconds), "--warmup", str(args.warmup),
        "--sample", str(args.sample), "--every", str(args.every),
        "--window", str(args.window), "--candidates", str(args.candidates),
        "--denoise-steps", str(args.denoise_steps), "--threads", str(args.threads),
        "--width", str(args.width), "--height", str(args.height),
    ]  # fmt: skip
    if args.steps is not None:
        cmd += ["--steps", str(args.steps)]
    cmd += ["--demo"] * args.demo + ["--random-weights"] * args.random_weights
    return cmd


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    warnings.filterwarnings("ignore", message=".*precision lowered by casting")
    if args.quick:
        args.seconds, args.warmup, args.window = min(args.seconds, 120.0), 30.0, 30.0
    if args.child:
        from viewer.display import ensure_display

        if ensure_display() is None:
            print("qgf bench soak: no display and Xvfb is not installed", file=sys.stderr)
            return 2
        result = child(args)
        print(json.dumps(result) if args.json else result, flush=True)
        return 0
    load0 = os.getloadavg()[0]
    # The window's progress lines (stderr) pass through; its result is the last JSON line.
    done = subprocess.run(_child_command(args), stdout=subprocess.PIPE, text=True)
    line = next((x for x in done.stdout.splitlines()[::-1] if x.startswith("{")), None)
    if done.returncode or line is None:
        print(done.stdout[-3000:], file=sys.stderr)
        print("qgf bench soak: the window's process failed", file=sys.stderr)
        return 1
    result = json.loads(line)
    if args.json:
        print(line)
    else:
        print_table(result, args, (load0, os.getloadavg()[0]))
    passed = result["errors"] == 0 and result["growth_mb"] < GROWTH_LIMIT_MB
    return 0 if passed else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
