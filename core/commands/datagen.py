"""``qgf datagen``: generate an OGBench dataset with OGBench's scripted oracles."""

from __future__ import annotations

import argparse

from core.commands import args as common

HELP = "generate an OGBench dataset (train + -val split) with OGBench's scripted oracles"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--env",
        default="cube-single-play-v0",
        help="dataset name, e.g. cube-single-play-v0, scene-play-v0, puzzle-3x3-noisy-v0; an env "
        "name without the dataset type (cube-single-v0) takes --dataset-type",
    )
    parser.add_argument(
        "--dataset-type",
        choices=("play", "noisy"),
        default=None,
        help="play: plan oracles with smoothed noise; noisy: Markov oracles with per-episode "
        "noise (default: the type in --env, else play)",
    )
    parser.add_argument("--episodes", type=int, default=1000, help="training episodes")
    parser.add_argument(
        "--val-episodes", type=int, default=None, help="validation episodes (default: 10%%)"
    )
    parser.add_argument("--max-episode-steps", type=int, default=1001, help="steps per episode")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    common.add_seed(parser, "seed of the episodes' tasks, starts and oracle noise")
    parser.add_argument("--noise", type=float, default=0.1, help="oracle noise scale")
    parser.add_argument("--noise-smoothing", type=float, default=0.5, help="play plan smoothing")
    parser.add_argument(
        "--p-random-action",
        type=float,
        default=None,
        help="chance of a uniform random action per step (default: OGBench's for the dataset)",
    )
    parser.add_argument(
        "--out",
        default="data/",
        help="output directory (files named after the dataset) or a .npz path",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _dataset_name(env: str, dataset_type: str | None) -> str:
    from core.envs import parse_name

    parts = env.split("-")
    if parts[-2:-1] in (["play"], ["noisy"]) or "singletask" in parts:
        name = parse_name(env)
        if dataset_type is not None and dataset_type != name.dataset_type:
            raise ValueError(
                f"--env {env} is a {name.dataset_type} dataset but --dataset-type is {dataset_type}"
            )
        return name.dataset_name
    stem = env.removesuffix("-v0")
    return parse_name(f"{stem}-{dataset_type or 'play'}-v0").dataset_name


def run(args: argparse.Namespace) -> int:
    from core.data import GenerationConfig, generate_dataset

    name = _dataset_name(args.env, args.dataset_type)
    val = args.val_episodes if args.val_episodes is not None else max(1, args.episodes // 10)
    config = GenerationConfig(
        name=name,
        episodes=args.episodes,
        val_episodes=val,
        seed=args.seed,
        max_episode_steps=args.max_episode_steps,
        noise=args.noise,
        noise_smoothing=args.noise_smoothing,
        p_random_action=args.p_random_action,
    )
    stats = generate_dataset(config, args.out, workers=args.workers, progress=not args.no_progress)
    print(stats.to_json())
    return 0
