"""`qgf import`: turn a QGF-release or FQL agent (``params_<step>.pkl``) into a checkpoint."""

from __future__ import annotations

import argparse

HELP = "import a QGF-release or FQL JAX agent (params_<step>.pkl) as a checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src", help="a params_<step>.pkl, or a run directory (its newest params file is taken)"
    )
    parser.add_argument(
        "--env",
        help="single-task env the agent acts in, e.g. cube-single-play-singletask-task2-v0 "
        "(default: env_name of the run's flags.json)",
    )
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument(
        "--flow-steps",
        type=int,
        help="Euler steps T the policy was trained with (default: flags.json, else 10)",
    )
    parser.add_argument(
        "--q-agg",
        choices=("min", "mean"),
        help="how Q heads combine for guidance (default: flags.json, else min for QGF, "
        "mean for FQL)",
    )
    parser.add_argument(
        "--activation",
        help="flax activation name of the run (default: flags.json, else gelu, which in flax "
        "is the tanh approximation)",
    )
    parser.add_argument(
        "--data",
        help="OGBench dataset .npz (official or from `qgf datagen`) for the distance-to-data "
        "sample; without it distances show as unavailable",
    )


def run(args: argparse.Namespace) -> int:
    import os
    import warnings

    # The env is made only for its spaces; EGL keeps MuJoCo off any display.
    os.environ.setdefault("MUJOCO_GL", "egl")

    from core.agent_import import ImportOptions, import_agent

    # gymnasium warns about OGBench's float64 action bounds on every env made: noise here.
    warnings.filterwarnings("ignore", message=".*precision lowered by casting")
    options = ImportOptions(args.flow_steps, args.q_agg, args.activation)
    # Errors (a refused pickle, an unknown layout, dims that do not fit) end the command with
    # one line through core.cli.
    report = import_agent(args.src, args.out, args.env, options, args.data)
    c = report.config
    for note in report.notes:
        print(f"note: {note}")
    print(f"imported {report.source} ({c.source['format']}, step {c.training_steps})")
    print(
        f"  policy {c.hidden} ({'LayerNorm' if c.layer_norm else 'no LayerNorm'}, "
        f"{c.time_embedding} time), {c.q_ensemble} Q heads {c.critic_hidden}, "
        f"V {'yes' if c.value_network else 'none'}, one-step policy "
        f"{'yes' if c.onestep_policy else 'none'}, chunk H = {c.horizon}"
    )
    settings = c.source["settings"]
    print(
        "  "
        + ", ".join(f"{k} {v['value']} ({v['from']})" for k, v in settings.items())
        + f", guidance by the target critic, Q aggregated by {c.q_aggregate}"
    )
    print(f"wrote {report.out}")
    return 0
