"""Recording throughput: ``qgf record``'s loop against rendering and encoding alone.

Run: ``qgf bench record [--quick]`` or ``python -m benchmarks.record [--panels 0,0.03,0.1]``.

Both sides use the same panels' envs and renderers in the same process, the same resolution,
the same number of frames and the same encoder settings:

- record: ``Recording.run``, the whole loop of ``qgf record``: env steps, sampling, overlays
  and captions (one step ahead on the worker thread), rendering, tiling, encoding.
- render + encode: each panel's scene rendered without overlays, tiled and encoded; the env
  does not move and nothing is sampled.

The two alternate (A B A B ...) so that drifting load from other processes hits both, and
the table gives the median of each and their ratio (target: record >= 0.8 of render + encode).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from core.commands import args as common

HELP = "recording fps (rollout + overlays + render + caption + encode) vs render + encode alone"

TARGET_RATIO = 0.8
_QUICK_FRAMES = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        help="checkpoint directory (default: the shipped default, else random networks)",
    )
    parser.add_argument(
        "--panels",
        default="0;0,0.03,0.1",
        help="semicolon-separated weight lists, one table row each (default %(default)s)",
    )
    parser.add_argument("--estimator", default="qgf", help="estimator of every panel")
    parser.add_argument("--frames", type=int, default=30, help="env steps per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="A/B pairs per row")
    parser.add_argument("--size", default="320x240", help="one panel's scene, WIDTHxHEIGHT")
    parser.add_argument("--candidates", type=int, default=8, help="candidates N per step")
    common.add_threads(parser, 1)
    common.add_device(parser)
    parser.add_argument(
        "--quick", action="store_true", help=f"{_QUICK_FRAMES} env steps per measurement"
    )


def _networks(checkpoint: str | None, device: str):
    """``(policy, critic, env_name, steps, label, off_manifold)``: a checkpoint's (with the
    off-manifold flagger ``qgf record`` builds from it), else random ones (no flags)."""
    from core.checkpoints import load_checkpoint
    from core.defaults import DEFAULT_ENV, RANDOM_HIDDEN, default_checkpoint, random_networks

    path = Path(checkpoint) if checkpoint else default_checkpoint()
    if path is not None and (path / "config.json").exists():
        from core.manifold import DataManifold

        policy, critic, config = load_checkpoint(path, device)
        flags = DataManifold.from_checkpoint(path, device=device).off_manifold
        label = f"checkpoint {path.name} ({config.training_steps} steps)"
        return policy, critic, config.env, config.flow_steps, label, flags
    if checkpoint:
        raise SystemExit(f"qgf bench record: no checkpoint at {path}")
    policy, critic = random_networks(28, 5, device)
    return policy, critic, DEFAULT_ENV, 10, f"random networks {list(RANDOM_HIDDEN)}", None


def _render_encode(recording, frames: int, out: Path) -> tuple[float, float]:
    """Rendering every panel (no overlay), tiling and encoding: (frames/s, CPU s per frame)."""
    from core.captions import tile
    from core.video import VideoWriter

    s = recording.settings
    panels = [r.image[: s.height].copy() for r in recording.runs]
    grid = None
    cpu = time.process_time()
    start = time.perf_counter()
    with VideoWriter(out, s.fps, crf=s.crf, preset=s.preset) as video:
        for _ in range(frames):
            for run, buf in zip(recording.runs, panels, strict=True):
                run.renderer.render(run.env.unwrapped._data, out=buf)
            grid = tile(panels, s.grid_cols, out=grid)
            video.write(grid)
    wall = time.perf_counter() - start
    return frames / wall, (time.process_time() - cpu) / frames


def _row(policy, critic, env_name, steps, flags, weights, args, tmp: Path) -> dict:
    from core.recording import Recording, RecordSettings
    from core.video import VideoWriter

    width, height = (int(x) for x in args.size.split("x"))
    settings = RecordSettings(
        weights=weights,
        estimators=[args.estimator],
        steps=steps,
        candidates=args.candidates,
        max_steps=args.frames,
        width=width,
        height=height,
        hold_s=0.0,
    )
    record_fps, base_fps, record_cpu, base_cpu, parts = [], [], [], [], []
    with Recording(policy, critic, env_name, settings, args.device, flags) as recording:
        gl = recording.runs[0].renderer.gl_vendor or "unknown GL"
        # Warm-up: first renders compile shaders and upload meshes; first samples warm torch.
        recording.run(VideoWriter(tmp / "warm.mp4", settings.fps), progress=False)
        for _ in range(args.repeats):
            sampler_before = recording.sampler_s
            cpu = time.process_time()
            result = recording.run(VideoWriter(tmp / "record.mp4", settings.fps), progress=False)
            # Steps + 1 frames: the episode's final state is drawn too.
            frames = result.frames
            record_cpu.append((time.process_time() - cpu) / frames)
            record_fps.append(frames / result.wall_s)
            fps, cpu_per_frame = _render_encode(recording, frames, tmp / "base.mp4")
            base_fps.append(fps)
            base_cpu.append(cpu_per_frame)
            seconds = dict(result.seconds)
            seconds["sampling (worker)"] = recording.sampler_s - sampler_before
            parts.append({k: 1e3 * v / frames for k, v in seconds.items()})
    record = statistics.median(record_fps)
    base = statistics.median(base_fps)
    return {
        "panels": len(weights),
        "record": record,
        "base": base,
        "ratio": record / base,
        "cpu_ratio": statistics.median(base_cpu) / statistics.median(record_cpu),
        "parts": {k: statistics.median(p[k] for p in parts) for k in parts[0]},
        "gl": gl,
    }


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    import torch

    if args.quick:
        args.frames = min(args.frames, _QUICK_FRAMES)
    torch.set_num_threads(args.threads)
    policy, critic, env_name, steps, label, flags = _networks(args.checkpoint, args.device)
    rows = []
    with tempfile.TemporaryDirectory(prefix="qgf-bench-record-") as tmp:
        for spec in args.panels.split(";"):
            weights = [float(w) for w in spec.split(",")]
            rows.append(_row(policy, critic, env_name, steps, flags, weights, args, Path(tmp)))
    print(
        f"record benchmark: {env_name}, {label}, {args.estimator}, T={steps}, "
        f"N={args.candidates}, {args.size} per panel, {args.frames} steps, "
        f"torch threads {args.threads}, device {args.device}, GL: {rows[0]['gl']}"
    )
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(
        f"{'panels':>6} {'record fps':>11} {'render+encode fps':>18} {'ratio':>6} "
        f"{'cpu ratio':>10}  target"
    )
    for r in rows:
        ok = "ok" if r["ratio"] >= TARGET_RATIO else "BELOW"
        print(
            f"{r['panels']:>6} {r['record']:>11.2f} {r['base']:>18.2f} {r['ratio']:>6.2f} "
            f"{r['cpu_ratio']:>10.2f}  >= {TARGET_RATIO} {ok}"
        )
    print(
        "cpu ratio: CPU time per frame of render + encode over that of record, all threads of "
        "this process (ffmpeg's own process not counted); what the fps ratio tends to when "
        "the cores are saturated, e.g. by other processes."
    )
    print(
        "record loop, ms per frame (main thread; env steps, sampling, overlays and captions run "
        "on the worker thread):"
    )
    for r in rows:
        parts = "  ".join(f"{k} {v:.1f}" for k, v in r["parts"].items())
        print(f"{r['panels']:>6} panels: {parts}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.record", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
