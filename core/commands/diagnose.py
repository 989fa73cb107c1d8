"""`qgf diagnose`: the paper's estimator analyses on a checkpoint, as PNG plots and JSON."""

from __future__ import annotations

import argparse
import sys

from core.commands import args as common

HELP = "estimator analyses on a checkpoint: noise sensitivity, Q, distance to data (PNG + JSON)"


def _names(text: str) -> list[str] | None:
    names = [x.strip() for x in text.split(",") if x.strip()]
    return None if names == ["all"] else names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint directory")
    parser.add_argument(
        "--states", type=int, default=256, help="states from the data sample (default 256)"
    )
    parser.add_argument(
        "--estimators", type=_names, default=None, help="comma-separated, or 'all' (default)"
    )
    parser.add_argument("--out", help="output directory (default: runs/diagnose/<checkpoint name>)")
    parser.add_argument(
        "--weight", type=float, default=None, help="default: best qgf weight in eval.json"
    )
    parser.add_argument("--steps", type=int, default=None, help="default: the checkpoint's T")
    parser.add_argument(
        "--best-of", type=int, default=16, help="N of the best-of-N oracle (default 16)"
    )
    parser.add_argument(
        "--eps", type=float, default=0.05, help="noise-sensitivity eps (default 0.05)"
    )
    parser.add_argument(
        "--perturbations",
        type=int,
        default=2,
        help="noise-sensitivity draws per state and step (default 2)",
    )
    parser.add_argument(
        "--k", type=int, default=32, help="nearest states per distance query (default 32)"
    )
    parser.add_argument(
        "--sweep",
        type=common.floats,
        default=None,
        help="weights for the by-weight figure, comma-separated ('' for none; "
        "default 0.003,0.01,0.03,0.1,0.3,1)",
    )
    common.add_seed(parser, "seed of the states picked and the noise")
    common.add_device(parser)
    common.add_threads(parser, None)
    landscape = parser.add_argument_group(
        "landscape",
        "with --landscape, only the critic's landscape on a 2-D action slice is written, at "
        "a few steps of one seeded episode: PNG per step and weight, arrays as .npz",
    )
    landscape.add_argument("--landscape", action="store_true", help="write the landscape")
    landscape.add_argument(
        "--landscape-steps",
        type=common.ints,
        default=[0, 20, 40],
        help="env steps (default 0,20,40)",
    )
    landscape.add_argument(
        "--landscape-weights",
        type=common.floats,
        default=None,
        help="weights whose paths are drawn (default: --weight); the episode plays at the first",
    )
    landscape.add_argument(
        "--slice-dims",
        type=common.ints,
        default=[0, 1],
        help="two action dims (default 0,1: dx, dy)",
    )
    landscape.add_argument("--chunk-index", type=int, default=0, help="action of the chunk")
    landscape.add_argument(
        "--hold",
        choices=("ghost", "executed", "mean"),
        default="ghost",
        help="other dims held at the w = 0 executed action (default: the same slice at "
        "every weight), the executed action, or the candidates' mean",
    )
    landscape.add_argument("--resolution", type=int, default=64, help="grid points per axis")
    landscape.add_argument("--candidates", type=int, default=8, help="candidates N per step")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from core.report import DEFAULT_SWEEP, diagnose_checkpoint
    from core.report_figures import write_report

    common.set_threads(args.threads)
    args.device = common.resolve_device(args.device)
    if args.landscape:
        return _landscape(args)
    report = diagnose_checkpoint(
        args.checkpoint,
        states=args.states,
        estimators=args.estimators,
        weight=args.weight,
        steps=args.steps,
        best_of=args.best_of,
        eps=args.eps,
        perturbations=args.perturbations,
        k=args.k,
        seed=args.seed,
        sweep=DEFAULT_SWEEP if args.sweep is None else args.sweep,
        device=args.device,
    )
    out = args.out or Path("runs") / "diagnose" / Path(args.checkpoint).resolve().name
    paths = write_report(report, out)
    m = report.manifold
    distance = (
        f"distance to data: k={m['k']}, {m['compares']}, threshold {m['threshold']:.4f} "
        f"({100 * m['quantile']:.0f}th percentile of {m['calibration_pairs']} held-out pairs)"
        if m.get("available", True)
        else f"distance to data unavailable ({m['why']}); states from {report.state_source}"
    )
    print(
        f"{report.env}: {report.states} states, weight {report.weight:g}, "
        f"T {report.steps}; {distance}"
    )
    print(
        f"{'':<14}{'Q mean':>10}{'Q-oracle':>10}{'dist':>8}{'off %':>7}{'to oracle':>11}"
        f"{'cos(eps)':>10}{'FLOPs':>10}"
    )
    for r in report.results:
        s = r.summary()
        sens = (
            f"{sum(s['noise_sensitivity']) / len(s['noise_sensitivity']):.3f}"
            if s["noise_sensitivity"]
            else "-"
        )
        flops = "-"
        if r.flops_per_action and report.flops_unguided:
            flops = f"{r.flops_per_action / report.flops_unguided:.1f}x"
        print(
            f"{r.name:<14}{s['q_final']['mean']:>10.3f}{report.q_gap(r.name)['mean']:>10.3f}"
            f"{_num(s['distance']['mean'], '.3f'):>8}"
            f"{_num(100 * s['off_manifold_fraction'], '.0f', '%'):>7}"
            f"{s['distance_to_oracle']['mean']:>11.3f}{sens:>10}{flops:>10}"
        )
    print("cos(eps): mean over denoising steps; FLOPs: per action, as a multiple of unguided")
    print(f"wrote {', '.join(str(p) for p in paths.values())} ({report.wall_time_s:.0f} s)")
    return 0


def _num(value: float, spec: str, unit: str = "") -> str:
    """A figure, or n/a where it is unavailable (NaN: no dataset sample)."""
    import math

    return "n/a" if math.isnan(value) else f"{value:{spec}}{unit}"


def _landscape(args: argparse.Namespace) -> int:
    """``--landscape``: the critic's landscape at a few steps of one episode."""
    import os
    import warnings
    from pathlib import Path

    os.environ.setdefault("MUJOCO_GL", "egl")
    warnings.filterwarnings("ignore", message=".*precision lowered by casting")
    from core.checkpoints import NoDatasetSample, load_checkpoint
    from core.landscape import SliceSpec, episode_slices, write_episode_slices
    from core.manifold import DataManifold
    from core.recording import env_label
    from core.report import default_weight

    if len(args.slice_dims) != 2:
        raise ValueError(f"--slice-dims takes two dims, got {args.slice_dims}")
    policy, critic, config = load_checkpoint(args.checkpoint, args.device)
    spec = SliceSpec(tuple(args.slice_dims), args.chunk_index, args.hold, args.resolution)
    spec.validate(config.action_dim, config.horizon)
    try:
        manifold = DataManifold.from_checkpoint(args.checkpoint, k=args.k, device=args.device)
    except NoDatasetSample as e:
        manifold = None
        print(f"qgf diagnose: note: {e}", file=sys.stderr)
    weights = args.landscape_weights or [
        args.weight if args.weight is not None else default_weight(args.checkpoint)
    ]
    slices = episode_slices(
        policy,
        critic,
        config.env,
        args.landscape_steps,
        weight=weights[0],
        weights=weights,
        steps=args.steps or config.flow_steps,
        candidates=args.candidates,
        seed=args.seed,
        spec=spec,
        manifold=manifold,
    )
    out = Path(args.out or Path("runs") / "diagnose" / Path(args.checkpoint).resolve().name)
    out = out / "landscape"
    written = write_episode_slices(slices, out, env_label(config.env))
    for s in slices:
        print(
            f"step {s.step}: Q in [{s.landscape.q.min():.3f}, {s.landscape.q.max():.3f}], "
            f"grid {spec.resolution}x{spec.resolution} in {1000 * s.landscape.seconds:.1f} ms"
            + "".join(
                f"; w={w:g}: {int(p.off_manifold.sum())}/{len(p.final)} off-manifold"
                for w, p in s.paths.items()
                if p.off_manifold is not None
            )
        )
    print(f"wrote {len(written)} files to {out}")
    return 0
