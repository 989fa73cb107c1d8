"""``qgf record``: rollout videos, one tiled panel per (weight, estimator), without a display.

Example::

    qgf record checkpoints/cube-single-task2 \\
        --weights 0,0.02,0.08 --estimators qgf --episodes 2 --seed 0 --out video.mp4

With no checkpoint argument the shipped one for cube-single task 2 is used; ``--random-weights``
records untrained networks (to try the pipeline before any training).

Every option, the output path and the checkpoint are checked before any env is made or frame
rendered; a mistake ends the command with a message and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from core.commands import args as common
from core.defaults import CHECKPOINT_ROOT, DEFAULT_ENV, default_checkpoint

HELP = "record rollout videos without a display: one tiled panel per (weight, estimator)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        nargs="?",
        help=f"checkpoint directory, or the name of one in {CHECKPOINT_ROOT} "
        f"(default: the one shipped for {DEFAULT_ENV})",
    )
    parser.add_argument(
        "--out", default="record.mp4", help="output .mp4 or .gif (default %(default)s)"
    )
    parser.add_argument(
        "--weights",
        type=common.floats,
        default=[0.0, 0.03],
        help="comma-separated guidance weights (default 0,0.03)",
    )
    parser.add_argument(
        "--estimators",
        type=common.names,
        default=["qgf"],
        help="comma-separated estimators (default qgf)",
    )
    parser.add_argument("--episodes", type=int, default=1, help="episodes (default %(default)s)")
    common.add_seed(parser, "episode e starts from seed + e, as the viewer does")
    parser.add_argument("--steps", type=int, help="Euler steps T (default: the checkpoint's)")
    parser.add_argument(
        "--candidates", type=int, default=8, help="candidates N per step (default %(default)s)"
    )
    parser.add_argument(
        "--pick-best",
        "--best-of",
        dest="pick_best",
        action="store_true",
        help="execute the candidate of highest Q, best-of-N (default: candidate 0, a "
        "single-sample policy); --best-of is an old name for it",
    )
    parser.add_argument("--max-steps", type=int, help="env steps per episode at most")
    parser.add_argument(
        "--size", default="320x240", help="one panel's scene, WIDTHxHEIGHT (default %(default)s)"
    )
    parser.add_argument("--fps", type=float, default=20.0, help="frame rate (default %(default)s)")
    parser.add_argument(
        "--camera",
        default="front",
        help="camera preset: front, side, top, follow (default %(default)s)",
    )
    parser.add_argument(
        "--layers",
        default="all",
        help="overlay layers, comma-separated: denoise, final, executed, ghost, gripper, "
        "off_manifold; or all, none (default %(default)s)",
    )
    parser.add_argument(
        "--quality",
        choices=("fast", "auto"),
        default="fast",
        help="fast: no anti-aliasing or shadows; auto: MuJoCo's quality where GL is a GPU",
    )
    parser.add_argument(
        "--path-scale",
        type=float,
        default=1.0,
        help="magnify candidate paths about the effector (a display aid; captions say so)",
    )
    parser.add_argument("--no-caption", action="store_true", help="no caption strip under panels")
    parser.add_argument("--cols", type=int, help="panels per row (default: one per weight)")
    parser.add_argument(
        "--hold", type=float, default=1.0, help="seconds each episode's end is held (default 1)"
    )
    parser.add_argument("--crf", type=int, default=20, help="x264 quality, 0..51, lower is better")
    parser.add_argument("--preset", default="veryfast", help="x264 speed preset")
    parser.add_argument("--env", help="env/task name (default: the checkpoint's)")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="untrained networks for --env instead of a checkpoint (to try the pipeline)",
    )
    common.add_device(parser)
    common.add_threads(
        parser,
        1,
        "the software renderer needs the other cores, and small-batch sampling gains little "
        "from more",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary")


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size must be WIDTHxHEIGHT, e.g. 320x240, got {text!r}") from None
    return width, height


def _checkpoint_path(arg: str | None) -> Path:
    if arg is None:
        path = default_checkpoint()
        if path is None:
            raise ValueError(
                f"no shipped checkpoint for {DEFAULT_ENV} in {CHECKPOINT_ROOT}; "
                "pass a checkpoint or --random-weights"
            )
        return path
    path = Path(arg)
    if not path.exists() and (CHECKPOINT_ROOT / arg).exists():
        path = CHECKPOINT_ROOT / arg
    if not path.exists():
        raise ValueError(f"checkpoint {str(path)!r} not found")
    return path


def _settings(args: argparse.Namespace, flow_steps: int):
    from core.recording import RecordSettings, parse_layers

    width, height = _size(args.size)
    settings = RecordSettings(
        weights=args.weights,
        estimators=args.estimators,
        episodes=args.episodes,
        seed=args.seed,
        steps=flow_steps if args.steps is None else args.steps,
        candidates=args.candidates,
        pick_best=args.pick_best,
        max_steps=args.max_steps,
        width=width,
        height=height,
        fps=args.fps,
        camera=args.camera,
        layers=parse_layers(args.layers),
        quality=args.quality,
        path_scale=args.path_scale,
        caption=not args.no_caption,
        cols=args.cols,
        hold_s=args.hold,
        crf=args.crf,
        preset=args.preset,
    )
    settings.check()
    return settings


def run(args: argparse.Namespace) -> int:
    # Headless EGL by default on Linux without a display, where glfw (MuJoCo's default)
    # cannot make a context; a caller's own choice, and a display, are kept.
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        os.environ.setdefault("MUJOCO_GL", "egl")
    from core.video import VideoWriter, check_output_path

    def fail(message: str) -> int:
        print(f"qgf record: error: {message}", file=sys.stderr)
        return 2

    # The cheap checks first, before torch and MuJoCo are even imported.
    try:
        check_output_path(args.out)
        _size(args.size)
    except ValueError as err:
        return fail(str(err))

    from core.gl import GLUnavailable, check_gl

    try:
        check_gl()  # before anything imports mujoco, whose import fails on a broken platform
    except GLUnavailable as err:
        return fail(str(err))

    import torch

    from core.checkpoints import CheckpointError, load_checkpoint
    from core.envs import parse_name
    from core.recording import Recording, env_label

    try:
        device = common.resolve_device(args.device)
    except ValueError as err:
        return fail(str(err))
    # Everything that can be wrong is found here, before the first env or frame.
    try:
        path = None
        if args.random_weights:
            env_name = args.env or DEFAULT_ENV
            parse_name(env_name)
            policy = critic = None
            flow_steps = 10
        else:
            path = _checkpoint_path(args.checkpoint)
            policy, critic, config = load_checkpoint(path, device, expect_env=args.env)
            env_name, flow_steps = config.env, config.flow_steps
        settings = _settings(args, flow_steps)
        video = VideoWriter(args.out, settings.fps, crf=settings.crf, preset=settings.preset)
    except (ValueError, CheckpointError) as err:
        return fail(str(err))

    torch.set_num_threads(args.threads)
    label = env_label(env_name)
    if policy is None or critic is None:  # --random-weights
        policy, critic = _random_networks(env_name, device)
        label += ", random weights"
    off_manifold = None
    if path is not None and settings.layers.off_manifold:
        from core.checkpoints import NoDatasetSample
        from core.manifold import DataManifold

        # Calibrated on the checkpoint's own dataset sample, as the other tools do.
        try:
            off_manifold = DataManifold.from_checkpoint(path, device=device).off_manifold
        except NoDatasetSample as err:
            print(f"qgf record: note: {err}; no off-manifold marks", file=sys.stderr)
    try:
        # The command holds the writer itself, to say where an interrupted recording went.
        with Recording(
            policy, critic, env_name, settings, device, off_manifold=off_manifold, label=label
        ) as recording:
            result = recording.run(video, progress=not args.quiet)
    except KeyboardInterrupt as e:
        from core.interrupts import interrupted_status, terminated

        kept = video.kept
        print(
            f"qgf record: {'terminated' if terminated(e) else 'interrupted'}; "
            + (f"the frames so far are in {kept}" if kept else "nothing was kept"),
            file=sys.stderr,
        )
        return interrupted_status(e)
    if not args.quiet:
        _summary(result)
    return 0


def _random_networks(env_name: str, device: str):
    from core.defaults import random_networks
    from core.envs import make_env

    env = make_env(env_name)
    obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()
    return random_networks(obs_dim, action_dim, device)


def _summary(result) -> None:
    print(
        f"{result.path}: {result.frames} frames of {result.size[0]}x{result.size[1]} in "
        f"{result.wall_s:.1f} s ({result.fps:.1f} frames/s)"
    )
    print(f"  {'estimator':<14}{'weight':>8}{'episode':>9}{'steps':>7}{'success':>9}{'return':>9}")
    for e in result.episodes:
        print(
            f"  {e.panel.estimator:<14}{e.panel.weight:>8g}{e.episode:>9}{e.env_steps:>7}"
            f"{'yes' if e.success else 'no':>9}{e.ret:>9.1f}"
        )
