"""``qgf view``: the viewer window (or, with ``--toy``, the paper's toy examples)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from core.commands import args as common
from core.gl import XVFB_PACKAGE

HELP = "open the viewer on a checkpoint (default: the shipped default checkpoint)"
# Options that choose what --open restores from the file.
_NOT_WITH_OPEN = ("env", "weight", "estimator", "candidates", "random_weights", "toy")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        nargs="?",
        help="checkpoint directory (default: the shipped default; random weights if none), "
        "or a QGF-release / FQL params_<step>.pkl or run directory, imported on the fly "
        "(see `qgf import`)",
    )
    parser.add_argument(
        "--env",
        help="OGBench env/task name (default: the checkpoint's env; for a .pkl, its run's "
        "flags.json)",
    )
    common.add_device(parser)
    common.add_threads(parser, 1, "the renderer and the window need the other cores")
    parser.add_argument("--weight", type=float, help="initial guidance weight")
    parser.add_argument("--estimator", help="initial gradient estimator")
    parser.add_argument("--candidates", type=int, help="candidates N drawn per step")
    common.add_seed(parser, "episode and noise seed")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="ignore the shipped checkpoint and use untrained networks",
    )
    parser.add_argument("--width", type=int, default=1280, help="window width")
    parser.add_argument("--height", type=int, default=800, help="window height")
    parser.add_argument(
        "--frames", type=int, help="run this many GUI frames, then exit (for scripts and tests)"
    )
    parser.add_argument("--screenshot", help="with --frames: save the window to this PNG")
    parser.add_argument(
        "--play", action="store_true", help="start playing (with --frames: step while running)"
    )
    parser.add_argument(
        "--loop",
        action="store_true",
        help="at the end of an episode played, go on with the next seed's episode (a screen "
        "left running; the window's 'loop' box)",
    )
    parser.add_argument(
        "--toy", action="store_true", help="the paper's 1-D and 2-D toy examples (no robot)"
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="the live demo: panes side by side in lockstep (default: w = 0 beside the live "
        "slider's weight), large captions, a presenter's keys",
    )
    parser.add_argument(
        "--demo-preset",
        metavar="FILE.toml",
        help="with --demo: panes, weights, camera, speed and seeds from a preset file "
        "(presets/ has one per shipped checkpoint)",
    )
    parser.add_argument(
        "--open",
        metavar="FILE",
        help="open a saved timeline (every branch, step and setting, and its networks) as it "
        "was saved; the window's 'Save timeline' button writes one",
    )


def run(args: argparse.Namespace) -> int:
    # MuJoCo renders on a thread of its own: EGL (GPU or Mesa) allows that, glfw does not.
    os.environ.setdefault("MUJOCO_GL", "egl")
    args.device = common.resolve_device(args.device)
    if args.screenshot and args.frames is None:
        print("qgf view: error: --screenshot needs --frames N", file=sys.stderr)
        return 2
    if args.screenshot:
        parent = Path(args.screenshot).resolve().parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            print(f"qgf view: error: cannot write a screenshot into {parent}", file=sys.stderr)
            return 2
    timeline = None
    if args.open:
        # Read and checked before any window opens, so a bad file fails at once.
        clash = [f"--{n.replace('_', '-')}" for n in _NOT_WITH_OPEN if getattr(args, n)]
        if args.checkpoint:
            clash.insert(0, "a checkpoint")
        if clash:
            print(
                f"qgf view: error: --open restores the file's checkpoint, task and settings; "
                f"drop {', '.join(clash)}",
                file=sys.stderr,
            )
            return 2
        from viewer.timeline_file import TimelineError, read_timeline

        try:
            timeline = read_timeline(args.open, device=args.device)
        except (OSError, TimelineError) as e:
            print(f"qgf view: error: cannot open the timeline: {e}", file=sys.stderr)
            return 2
        for note in timeline.notes:
            print(f"qgf view: note: {note}", file=sys.stderr)
    if args.checkpoint and not args.open:
        from core.agent_import import is_agent_source
        from core.checkpoints import read_config

        # A wrong path fails before any window; an agent to import is checked by the import.
        if not is_agent_source(args.checkpoint):
            read_config(args.checkpoint, verify=False)
    if not os.environ.get("DISPLAY"):
        if args.frames is None:
            print(
                "qgf view: error: no display (DISPLAY is unset). Run it on a desktop, under "
                f"xvfb-run (apt install {XVFB_PACKAGE}), or headless with --frames N "
                "--screenshot out.png",
                file=sys.stderr,
            )
            return 2
        from viewer.display import ensure_display

        if ensure_display() is None:
            print(
                "qgf view: error: no display (DISPLAY is unset) and Xvfb is not installed: "
                f"install it (apt install {XVFB_PACKAGE}) or run on a desktop",
                file=sys.stderr,
            )
            return 2
    if args.demo or args.demo_preset:
        from viewer.demo_app import main as demo_main

        return int(demo_main(args) or 0)
    if args.toy:
        from viewer.toy_app import main as toy_main

        return int(toy_main(args) or 0)

    from dataclasses import replace

    import torch

    torch.set_num_threads(args.threads)
    from core.defaults import default_checkpoint
    from viewer.session import Session, Settings

    if timeline is not None:
        # A light session on the timeline's env; the app's worker then installs the timeline
        # after the app's own start-up commands, so nothing re-samples its current step.
        s = timeline.settings
        session = Session(settings=Settings(env_name=s.env_name, device=s.device, seed=s.seed))
        from viewer.app import ViewerApp

        app = ViewerApp(session, width=args.width, height=args.height)
        app.open_timeline(timeline)
        app.loop = args.loop
        if not app.worker.wait_idle(120.0) or session.branches is not timeline.branches:
            why = "; ".join(e.message for e in app.worker.errors) or "timed out"
            app.close()
            print(f"qgf view: error: cannot open the timeline: {why}", file=sys.stderr)
            return 2
        if args.play:
            app.worker.play()
        return app.run(frames=args.frames, screenshot=args.screenshot)
    settings = Settings(device=args.device, seed=args.seed)
    for name in ("weight", "estimator", "candidates"):
        value = getattr(args, name)
        if value is not None:
            settings = replace(settings, **{name: value})
    settings.validate()
    checkpoint = args.checkpoint
    if checkpoint is not None:
        from core.agent_import import cached_import, is_agent_source

        if is_agent_source(checkpoint):
            checkpoint, notes = cached_import(checkpoint, args.env)
            for note in notes:
                print(f"qgf view: note: {note}", file=sys.stderr)
    if checkpoint is None and not args.random_weights:
        checkpoint = default_checkpoint()
        if checkpoint is None:
            print("qgf view: no shipped checkpoint found: opening random weights", file=sys.stderr)
    session = Session(checkpoint, settings=settings, env_name=args.env)

    from viewer.app import ViewerApp

    app = ViewerApp(session, width=args.width, height=args.height)
    app.loop = args.loop
    if args.play:
        app.worker.play()
    return app.run(frames=args.frames, screenshot=args.screenshot)
