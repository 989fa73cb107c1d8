"""`qgf eval`: success rate and return per guidance weight and estimator, with 95% CIs."""

from __future__ import annotations

import argparse

from core.commands import args as common

HELP = "success rate and return per guidance weight and estimator (95% CIs), JSON + PNG"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint directory")
    parser.add_argument(
        "--weights",
        type=common.floats,
        default=[0.0, 0.01, 0.03, 0.1],
        help="guidance weights, comma-separated (default 0,0.01,0.03,0.1)",
    )
    parser.add_argument(
        "--estimators", type=common.names, default=["qgf"], help="comma-separated (default qgf)"
    )
    parser.add_argument(
        "--episodes", type=int, default=50, help="episodes per (weight, estimator) (default 50)"
    )
    parser.add_argument("--envs", type=int, default=25, help="envs stepped together (default 25)")
    common.add_seed(parser, "episode i resets with seed + i")
    parser.add_argument("--out", help="where eval.json and eval.png go (default: CHECKPOINT)")
    parser.add_argument("--env", help="evaluate on another env of the same dims")
    common.add_device(parser)
    common.add_threads(parser, None)
    parser.add_argument(
        "--max-episode-steps", type=int, default=None, help="shorter episodes (default: the env's)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:

    from core.checkpoints import load_checkpoint
    from core.evaluation import evaluate, write_result
    from core.files import check_output_dir

    common.set_threads(args.threads)
    args.device = common.resolve_device(args.device)
    policy, critic, config = load_checkpoint(args.checkpoint, args.device)
    out = args.out or args.checkpoint
    check_output_dir(out)  # a read-only or full disk fails before any episode
    result = evaluate(
        policy,
        critic,
        config,
        weights=args.weights,
        estimators=args.estimators,
        episodes=args.episodes,
        num_envs=args.envs,
        seed=args.seed,
        device=args.device,
        env=args.env,
        progress=not args.no_progress,
        max_episode_steps=args.max_episode_steps,
    )
    result.checkpoint = str(args.checkpoint)
    json_path, png_path = write_result(result, out)
    print(f"{'estimator':<14}{'weight':>8}{'success':>10}{'95% CI':>16}{'return':>10}")
    for p in result.points:
        lo, hi = p.success_ci
        print(
            f"{p.estimator:<14}{p.weight:>8g}{100 * p.success_rate:>9.0f}%"
            f"{f'[{100 * lo:.0f}, {100 * hi:.0f}]':>16}{p.return_mean:>10.1f}"
        )
    print(f"wrote {json_path} and {png_path} ({result.wall_time_s:.0f} s)")
    return 0
