"""Viewer speed: the full viewer loop against MuJoCo's renderer alone, and slider latency.

Run: ``qgf bench viewer`` or ``python -m benchmarks.viewer`` (starts Xvfb if there is no
display).

In one process, on the same model, resolution and scene settings:

- raw: a ``mujoco.Renderer`` on a thread of its own, ``update_scene`` + ``render(out=...)``
  in a loop: the most frames MuJoCo can give here.
- viewer: ``qgf view`` playing as fast as it can: policy sampling (N guided + N unguided
  candidates) and env steps on the policy thread, overlays and rendering on the render
  thread, upload to the texture and Dear PyGui drawing on the main thread. Its fps counts
  new scene frames shown (each shows a new state), not GUI redraws.

The two alternate (A B A B ...) so that drifting load from other processes hits both; the
table gives the median of each and their ratio (target: viewer >= 0.7 of raw).

Latency: with play paused, the weight slider's own callback is called with a new weight, and
the clock stops when a GUI frame has drawn the scene with the candidates of that weight
(target: < 150 ms). Median, 90th percentile and max over the trials.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

from benchmarks.raw_render import cpu_seconds, raw_fps
from core.commands import args as common

HELP = "viewer fps (step + sample + overlays + render + upload + GUI) vs raw mujoco.Renderer"

TARGET_RATIO = 0.7
TARGET_LATENCY_MS = 150.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", help="checkpoint directory (default: the shipped default, else random)"
    )
    parser.add_argument(
        "--random-weights", action="store_true", help="untrained networks, not the checkpoint"
    )
    parser.add_argument("--env", help="env/task (default: the checkpoint's)")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each measurement")
    parser.add_argument("--repeats", type=int, default=2, help="A/B pairs of raw and viewer")
    parser.add_argument("--trials", type=int, default=12, help="weight-change latency trials")
    parser.add_argument("--estimator", default="qgf", help="estimator (default qgf)")
    parser.add_argument("--candidates", type=int, default=8, help="candidates N")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps T")
    common.add_threads(parser, 1)
    common.add_device(parser)
    parser.add_argument("--size", help="scene WIDTHxHEIGHT (default: what the window fits)")
    parser.add_argument(
        "--quick", action="store_true", help="3 s measurements, one A/B pair, 5 latency trials"
    )
    parser.add_argument("--width", type=int, default=1280, help="window width")
    parser.add_argument("--height", type=int, default=800, help="window height")
    parser.add_argument(
        "--demo",
        action="store_true",
        help="the live demo instead (qgf view --demo): fps and weight->frame latency for 1, "
        "2 and 4 panes beside the raw renderer (benchmarks/demo.py; --width/--height default "
        "to 1920x1080 there)",
    )


def _viewer_fps(app, seconds: float) -> tuple[float, float, float, float]:
    """``(scene fps, env steps/s, GUI fps, CPU ms per scene frame)`` playing at full speed."""
    worker, session = app.worker, app.session
    worker.set_speed(0.0)
    if session.done:
        app.reset()
        worker.wait_idle(60)
    worker.play()
    app.frame()
    shown0, steps0, gui0 = app.frames_shown, session.steps_taken, app.gui_frames
    start, cpu0 = time.perf_counter(), cpu_seconds()
    while time.perf_counter() - start < seconds:
        app.paced_frame()
        if session.done and not worker.playing:
            app.reset()  # keeps playing through episode ends
            worker.wait_idle(60)
            worker.play()
    elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
    shown = app.frames_shown - shown0
    worker.pause()
    worker.wait_idle(60)
    return (
        shown / elapsed,
        (session.steps_taken - steps0) / elapsed,
        (app.gui_frames - gui0) / elapsed,
        1000 * cpu / max(shown, 1),
    )


def _latency(app, trials: int) -> list[tuple[float, float, float, float]]:
    """Per trial, milliseconds from the weight slider's callback to the first frame drawn
    with the candidates of the new weight, and its parts: until the sample was published,
    until its scene frame was rendered, until the GUI had drawn it."""
    import dearpygui.dearpygui as dpg

    slider = app._tags["weight_slider"]
    callback = dpg.get_item_callback(slider)
    log = bool(dpg.get_value(app._tags["log"]))
    weights = (0.01, 0.3)
    out = []
    app.worker.pause()
    app.worker.wait_idle(60)
    for i in range(trials):
        w = weights[i % 2]
        for _ in range(3):
            app.frame()
        version = app.session.version
        value = math.log10(w) if log else w
        t0 = time.perf_counter()
        dpg.set_value(slider, value)
        callback(slider, value, None)
        while True:
            app.paced_frame()
            spec = app.frame_spec
            if spec.version > version and math.isclose(spec.record.sample.settings.weight, w):
                break
            if time.perf_counter() - t0 > 60:
                raise TimeoutError("no frame with the new weight within 60 s")
        t3 = time.perf_counter()
        t1, t2 = spec.made_at, app.frames.stats.ready_at
        out.append(tuple(1000 * x for x in (t3 - t0, t1 - t0, t2 - t1, t3 - t2)))
    return out


def run(args: argparse.Namespace) -> int:
    if args.demo:
        from benchmarks import demo

        return demo.run(demo.from_viewer_args(args))
    os.environ.setdefault("MUJOCO_GL", "egl")
    import torch

    from core.defaults import default_checkpoint
    from core.render import RenderSettings, preset_camera
    from viewer.display import ensure_display
    from viewer.session import Session, Settings

    if ensure_display() is None:
        print("qgf bench viewer: no display and Xvfb is not installed", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    if args.quick:
        args.seconds, args.repeats, args.trials = min(args.seconds, 3.0), 1, min(args.trials, 5)
    from viewer.app import ViewerApp

    checkpoint = None if args.random_weights else (args.checkpoint or default_checkpoint())
    settings = Settings(
        estimator=args.estimator,
        candidates=args.candidates,
        steps=args.steps,
        device=args.device,
    )
    session = Session(checkpoint, settings=settings, env_name=args.env)
    render = None
    if args.size:
        w, h = (int(x) for x in args.size.split("x"))
        render = RenderSettings(w, h)
    app = ViewerApp(session, render=render, width=args.width, height=args.height)
    try:
        app.build()
        app._wait_first_frame()
        for _ in range(10):
            app.frame()
        rs = app.frames.settings
        spec = app.frame_spec
        camera = preset_camera(app.frames.preset)
        # Warm-up: torch, the renderer and the texture path all pay once at first use.
        _viewer_fps(app, 1.0)
        load_before = os.getloadavg()[0]
        raws, views, steps, guis, raw_cpu, view_cpu = [], [], [], [], [], []
        for _ in range(args.repeats):
            fps, cpu = raw_fps(spec.model, spec.physics, rs, camera, args.seconds)
            raws.append(fps)
            raw_cpu.append(cpu)
            fps, sps, gui, cpu = _viewer_fps(app, args.seconds)
            views.append(fps)
            steps.append(sps)
            guis.append(gui)
            view_cpu.append(cpu)
        trials = _latency(app, args.trials)
        lat = sorted(x[0] for x in trials)
        lat_parts = [statistics.median(x[i] for x in trials) for i in (1, 2, 3)]
        st = app.frames.stats
        parts = {
            "policy": session.timings.policy,
            "env": session.timings.env,
            "scene+overlay": st.scene_ms,
            "render": st.render_ms,
            "to-float": st.convert_ms,
            "upload": app._upload_ms,
            "GUI draw": app._gui_ms,
        }
        gl = st.gl or "unknown GL"
    finally:
        app.close()

    raw, view = statistics.median(raws), statistics.median(views)
    ratio = view / raw
    p90 = lat[min(len(lat) - 1, int(0.9 * len(lat)))]
    print(
        f"viewer benchmark: {session.settings.env_name}, {session.label}, {args.estimator}, "
        f"T={args.steps}, N={args.candidates} (+ N unguided), scene {rs.width}x{rs.height}, "
        f"offsamples {rs.offsamples}, shadows {rs.shadows}, torch threads {args.threads}, "
        f"device {args.device}, GL: {gl}, {os.cpu_count()} CPUs"
    )
    ok = "ok" if ratio >= TARGET_RATIO else "BELOW"
    print(f"{'':<28}{'median':>9}   runs")
    print(f"{'raw mujoco.Renderer fps':<28}{raw:>9.2f}   " + " ".join(f"{x:.2f}" for x in raws))
    print(f"{'viewer scene fps':<28}{view:>9.2f}   " + " ".join(f"{x:.2f}" for x in views))
    print(f"{'viewer/raw':<28}{ratio:>9.2f}   target >= {TARGET_RATIO} {ok}")
    print(
        f"{'env steps/s while playing':<28}{statistics.median(steps):>9.2f}   "
        + " ".join(f"{x:.2f}" for x in steps)
    )
    print(f"{'GUI frames/s':<28}{statistics.median(guis):>9.1f}")
    rc, vc = statistics.median(raw_cpu), statistics.median(view_cpu)
    print(
        f"{'CPU ms per frame':<28}raw {rc:.0f}, viewer {vc:.0f} (all threads; the machine "
        f"has {os.cpu_count()} CPUs, load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after)"
    )
    ok = "ok" if statistics.median(lat) < TARGET_LATENCY_MS else "ABOVE"
    print(
        f"weight -> frame latency ms: median {statistics.median(lat):.0f}, p90 {p90:.0f}, "
        f"max {lat[-1]:.0f} over {len(lat)} trials (target < {TARGET_LATENCY_MS:.0f}) {ok}"
    )
    print(
        "  median parts: sample {:.0f}, render {:.0f}, upload + GUI draw {:.0f}".format(*lat_parts)
    )
    print("last frame, ms per part: " + "  ".join(f"{k} {v:.1f}" for k, v in parts.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.viewer", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
