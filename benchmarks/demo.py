"""Demo speed: ``qgf view --demo`` with 1, 2 and 4 panes against MuJoCo's renderer alone.

Run: ``qgf bench viewer --demo`` (or ``python -m benchmarks.demo``; starts Xvfb if there is
no display).

Each pane count runs in a process of its own (one Dear PyGui window per process, as for
every window here), and in that process, at the pane's resolution and scene settings:

- raw: ``mujoco.Renderer`` alone on a thread of its own (``benchmarks.viewer``'s loop),
  frames per second of ONE pane; P panes at most reach raw / P tiled frames per second.
- demo: the demo window playing as fast as it can, render scale held at 1: every pane's
  env step, one batched ``guided_sample`` call for all panes (they share networks and
  estimator: w = 0, the live weight, then 0.01 and 0.1), every pane rendered and captioned
  on the render thread, one tiled upload and the GUI draw. fps counts tiled frames shown.

Raw and demo alternate (A B A B) so that drifting load hits both; medians are reported.
Latency: paused, the weight slider's callback is called with a new weight; the clock stops
when a GUI frame has drawn the live pane with the candidates of that weight.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import replace

HELP = "demo fps and weight->frame latency for 1, 2, 4 panes vs raw mujoco.Renderer"
PANES = (1, 2, 4)
WEIGHTS = (0.0, 0.03, 0.01, 0.1)  # the 4-pane demo; the live one is the 0.03 pane


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--panes", type=int, help="measure this pane count only (one process)")
    parser.add_argument("--json", action="store_true", help="print one JSON line (for the parent)")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each measurement")
    parser.add_argument("--repeats", type=int, default=2, help="A/B pairs of raw and demo")
    parser.add_argument("--trials", type=int, default=8, help="weight-change latency trials")
    parser.add_argument("--candidates", type=int, default=8, help="candidates N")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps T")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--width", type=int, default=1920, help="window width")
    parser.add_argument("--height", type=int, default=1080, help="window height")
    parser.add_argument(
        "--quick", action="store_true", help="3 s measurements, one A/B pair, 4 latency trials"
    )


def _preset(panes: int, args):
    from viewer.demo_session import PaneSpec, default_preset

    specs = [PaneSpec(weight=w, live=w == 0.03) for w in WEIGHTS]
    order = [1] if panes == 1 else [0, 1, 2, 3][:panes]
    return replace(
        default_preset(),
        panes=tuple(specs[i] for i in order),
        steps=args.steps,
        candidates=args.candidates,
        speed=0.0,
    )


def _demo_fps(app, seconds: float) -> tuple[float, float]:
    """``(tiled frames shown per second, env steps per second)`` playing flat out."""
    session, worker = app.session, app.worker
    worker.play()
    app.frame()
    shown0, steps0 = app.frames_shown, session.steps_taken
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        app.paced_frame()
    elapsed = time.perf_counter() - start
    shown, steps = app.frames_shown - shown0, session.steps_taken - steps0
    worker.pause()
    worker.wait_idle(60)
    return shown / elapsed, steps / elapsed


def _latency(app, trials: int) -> list[float]:
    import dearpygui.dearpygui as dpg

    slider = app._tags["slider"]
    callback = dpg.get_item_callback(slider)
    live = app.session.preset.live
    out = []
    app.worker.pause()
    app.worker.wait_idle(60)
    for i in range(trials):
        w = (0.3, 0.01)[i % 2]
        for _ in range(3):
            app.frame()
        version = app.session.version
        t0 = time.perf_counter()
        dpg.set_value(slider, math.log10(w))
        callback(slider, math.log10(w), None)
        while True:
            app.paced_frame()
            spec = app.frame_spec
            if spec.version > version and math.isclose(spec.panes[live].spec.weight, w):
                break
            if time.perf_counter() - t0 > 60:
                raise TimeoutError("no frame with the new weight within 60 s")
        out.append(1000 * (time.perf_counter() - t0))
    return out


def measure(panes: int, args) -> dict:
    """One pane count, in this process: raw and demo fps, latency, parts."""
    import torch

    from benchmarks.raw_render import raw_fps
    from core.render import preset_camera
    from viewer.demo_app import DemoApp
    from viewer.demo_session import DemoSession

    torch.set_num_threads(args.threads)
    session = DemoSession(_preset(panes, args), device=args.device)
    app = DemoApp(session, width=args.width, height=args.height)
    app.target_fps = 0.0  # the render scale holds at 1: both sides at the pane's full size
    try:
        app.build()
        app._wait_first_frame()
        rs = app.frames.settings
        camera = preset_camera(app.frames.preset)
        _demo_fps(app, 1.0)  # warm-up: torch, the renderer, the texture path
        raws, demos, steps = [], [], []
        for _ in range(args.repeats):
            spec = session.frame()
            fps, _ = raw_fps(spec.model, spec.physics, rs, camera, args.seconds)
            raws.append(fps)
            fps, sps = _demo_fps(app, args.seconds)
            demos.append(fps)
            steps.append(sps)
        lat = sorted(_latency(app, args.trials))
        st = app.frames.stats
        return {
            "panes": panes,
            "size": f"{rs.width}x{rs.height}",
            "raw": statistics.median(raws),
            "demo": statistics.median(demos),
            "steps": statistics.median(steps),
            "latency_median": statistics.median(lat),
            "latency_max": lat[-1],
            "sample_ms": session.sample_ms,
            "render_ms": st.render_ms,
            "scene_ms": st.scene_ms,
            "gl": st.gl,
        }
    finally:
        app.close()


def from_viewer_args(viewer: argparse.Namespace) -> argparse.Namespace:
    """This benchmark's options from ``qgf bench viewer --demo``'s (the shared ones kept;
    the window 1920x1080 unless given otherwise)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    for name in ("seconds", "repeats", "candidates", "steps", "threads", "device", "quick"):
        setattr(args, name, getattr(viewer, name))
    args.trials = min(viewer.trials, args.trials)
    if (viewer.width, viewer.height) != (1280, 800):
        args.width, args.height = viewer.width, viewer.height
    return args


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    warnings.filterwarnings("ignore", message=".*precision lowered by casting")
    from viewer.display import ensure_display

    if ensure_display() is None:
        print("qgf bench viewer --demo: no display and Xvfb is not installed", file=sys.stderr)
        return 2
    if args.quick:
        args.seconds, args.repeats, args.trials = min(args.seconds, 3.0), 1, min(args.trials, 4)
    if args.panes:
        result = measure(args.panes, args)
        print(json.dumps(result) if args.json else result, flush=True)
        return 0
    rows = []
    load = os.getloadavg()[0]
    for panes in PANES:
        cmd = [
            sys.executable, "-m", "benchmarks.demo", "--panes", str(panes), "--json",
            "--seconds", str(args.seconds), "--repeats", str(args.repeats),
            "--trials", str(args.trials), "--candidates", str(args.candidates),
            "--steps", str(args.steps), "--threads", str(args.threads),
            "--device", args.device, "--width", str(args.width), "--height", str(args.height),
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in done.stdout.splitlines()[::-1] if x.startswith("{")), None)
        if done.returncode or line is None:
            print(done.stdout[-3000:] + done.stderr[-3000:], file=sys.stderr)
            print(f"qgf bench viewer --demo: {panes} panes failed", file=sys.stderr)
            return 1
        rows.append(json.loads(line))
    print(
        f"demo benchmark: {args.width}x{args.height} window, qgf, T={args.steps}, "
        f"N={args.candidates}, one guided_sample call per step for all panes, torch threads "
        f"{args.threads}, device {args.device}, GL: {rows[0]['gl'] or 'unknown'}, "
        f"{os.cpu_count()} CPUs, load average {load:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    head = (
        f"{'panes':>5} {'pane size':>10} {'raw fps':>8} {'demo fps':>9} {'pane-frames/raw':>16} "
        f"{'steps/s':>8} {'sample ms':>10} {'w->frame ms (median, max)':>27}"
    )
    print(head)
    for r in rows:
        ratio = r["demo"] * r["panes"] / r["raw"]
        print(
            f"{r['panes']:>5} {r['size']:>10} {r['raw']:>8.1f} {r['demo']:>9.1f} "
            f"{ratio:>16.2f} {r['steps']:>8.1f} {r['sample_ms']:>10.0f} "
            f"{r['latency_median']:>18.0f}, {r['latency_max']:.0f}"
        )
    print(
        "raw fps: one pane alone at that size; pane-frames/raw: panes drawn per second by the "
        "demo over frames per second of the renderer alone (1.0 = the renderer's speed)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.demo", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
