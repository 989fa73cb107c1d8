"""`qgf train`: flow BC policy + IQL critic on an OGBench dataset, into a checkpoint."""

from __future__ import annotations

import argparse
import dataclasses
import typing

from core.commands import args as common

HELP = "train a flow BC policy and an IQL critic into a checkpoint (resumes from --out)"

# Flags that are not TrainConfig fields.
_OWN = ("data", "out", "device", "threads", "log_dir", "no_resume", "no_progress", "debug")


def _parse_tuple(kind: type):
    items = common.ints if kind is int else common.floats

    def parse(text: str) -> tuple:
        return tuple(items(text))

    parse.__name__ = items.__name__
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from core.training import TrainConfig

    parser.add_argument("--data", help="dataset .npz (or a directory); default ~/.ogbench/data")
    parser.add_argument("--out", required=True, help="checkpoint directory (resumed if present)")
    common.add_device(parser)
    common.add_threads(
        parser,
        None,
        "measured on a 2-core machine, 300 steps of the default model on a 3-episode "
        "dataset: at load 2, 1 thread 19-26 steps/s and 2 threads 5-31; at load 5-8 (other "
        "jobs running), 1 thread 4-7 and 2 threads 0.5-1.4; pass 1 on a shared machine",
    )
    parser.add_argument("--log-dir", help="live CSV/TensorBoard logs (default runs/<out name>)")
    parser.add_argument("--no-resume", action="store_true", help="refuse to continue --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    group = parser.add_argument_group("hyperparameters (core.training.TrainConfig)")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        hint = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        if hint is bool:
            group.add_argument(
                flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=f.default
            )
        elif typing.get_origin(hint) is tuple:
            kind = typing.get_args(hint)[0]
            assert isinstance(f.default, tuple)  # every TrainConfig field has a default
            default = ",".join(str(x) for x in f.default)
            group.add_argument(
                flag, type=_parse_tuple(kind), default=f.default, help=f"default {default}"
            )
        else:
            group.add_argument(flag, type=hint, default=f.default, help=f"default {f.default}")


def run(args: argparse.Namespace) -> int:
    import hashlib
    from pathlib import Path

    import torch

    from core.checkpoints import DatasetSample, sha256_file
    from core.data import compact_sample, load_dataset
    from core.files import check_output_dir
    from core.training import TrainConfig, train

    common.set_threads(args.threads)
    args.device = common.resolve_device(args.device)
    values = {k: v for k, v in vars(args).items() if k not in _OWN}
    config = TrainConfig.from_dict(values)
    out = Path(args.out)
    if args.no_resume and (out / "config.json").exists():
        print(f"qgf train: {out} already holds a checkpoint and --no-resume was given")
        return 2

    check_output_dir(out.parent)  # a read-only or full disk fails before the data is read
    dataset = load_dataset(config.env, path=args.data)
    files = [Path(s) for s in dataset.sources]
    digest = sha256_file(files[0]) if len(files) == 1 else None
    if len(files) > 1:
        combined = hashlib.sha256("".join(sha256_file(f) for f in files).encode())
        digest = combined.hexdigest()
    picked = compact_sample(dataset, config.sample_size, seed=config.seed)
    sample = DatasetSample(picked["observations"], picked["actions"])
    print(
        f"qgf train: {config.env}, {len(dataset)} transitions from "
        f"{', '.join(dataset.sources)}; device {args.device}, {torch.get_num_threads()} threads"
    )
    resumed = 0
    if not args.no_resume and (out / "config.json").exists():
        from core.checkpoints import read_config

        resumed = read_config(out, verify=False).training_steps
        print(f"qgf train: resuming {out} from step {resumed} (to {config.steps})")

    evaluate = None
    if config.eval_every:
        evaluate = _periodic_eval(config, args.device)
    result = train(
        config,
        dataset.as_dict(),
        out,
        device=args.device,
        data_sha256=digest,
        sample=sample,
        evaluate=evaluate,
        resume=not args.no_resume,
        log_dir=args.log_dir,
        progress=not args.no_progress,
    )
    print(
        f"qgf train: {result.steps} steps in {result.wall_time_s:.0f} s "
        f"({result.steps_per_s:.1f} steps/s this run) -> {result.checkpoint}"
        + (f" (resumed from step {resumed})" if resumed else "")
    )
    return 0


def _periodic_eval(config, device: str):
    """A quick sweep during training, on seeds disjoint from `qgf eval`'s default 0.."""
    from core.evaluation import evaluate
    from core.training import checkpoint_config

    def run_eval(policy, critic, step: int) -> dict[str, float]:
        ck = checkpoint_config(config, policy.obs_dim, policy.env_action_dim, step)
        result = evaluate(
            policy,
            critic,
            ck,
            weights=config.eval_weights,
            episodes=config.eval_episodes,
            num_envs=config.eval_episodes,
            seed=100_000,
            device=device,
            progress=False,
        )
        return {f"success_w{p.weight:g}": p.success_rate for p in result.points}

    return run_eval
