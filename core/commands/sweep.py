"""`qgf sweep`: guidance sweeps as Ray tasks, one result file per cell, resumable."""

from __future__ import annotations

import argparse
import sys

HELP = (
    "sweep checkpoints x estimators x weights x seed blocks on Ray (local or a cluster); "
    "rerun to resume; --report DIR re-plots"
)

# Options that map onto SweepSpec fields; given on the command line they override the TOML.
_SPEC_OPTIONS = (
    "checkpoints",
    "weights",
    "estimators",
    "episodes",
    "seeds",
    "envs",
    "max_episode_steps",
    "env",
    "out",
    "address",
    "cpus",
    "gpus_per_cell",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="?", help="a SPEC.toml with the options below as fields")
    parser.add_argument("--checkpoints", help="comma-separated checkpoint directories")
    parser.add_argument("--weights", help="comma-separated guidance weights (0,0.01,0.03,0.1)")
    parser.add_argument("--estimators", help="comma-separated estimator names (qgf)")
    parser.add_argument("--episodes", help="episodes per cell (50)")
    parser.add_argument("--seeds", help="first seed of each seed block, comma-separated (0)")
    parser.add_argument("--envs", help="envs stepped together in a cell, as qgf eval (25)")
    parser.add_argument("--max-episode-steps", help="shorter episodes (the env's limit)")
    parser.add_argument("--env", help="evaluate on another env of the same dims")
    parser.add_argument("--out", help="output directory (sweep)")
    parser.add_argument(
        "--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local cluster)"
    )
    parser.add_argument("--cpus", help="CPUs of the local cluster (the whole machine)")
    parser.add_argument(
        "--gpus-per-cell", help="GPU share per cell (0.25 when the cluster has GPUs, else 0)"
    )
    parser.add_argument(
        "--report", metavar="DIR", help="only re-plot the sweep in DIR; runs nothing"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from core.sweep import (
        SweepError,
        SweepSpec,
        read_spec_file,
        run_sweep,
        summary_lines,
        write_report,
    )

    if args.report:
        if args.spec or any(getattr(args, k) is not None for k in _SPEC_OPTIONS):
            raise SweepError("--report DIR takes no spec and no sweep options")
        for path in write_report(args.report):
            print(f"wrote {path}")
        return 0
    data = read_spec_file(args.spec) if args.spec else {}
    given = {k: getattr(args, k) for k in _SPEC_OPTIONS if getattr(args, k) is not None}
    data.update(given)
    spec = SweepSpec.from_mapping(data, source=args.spec or "spec", options=given)
    outcome = run_sweep(spec, progress=not args.no_progress)
    for i, line in enumerate(summary_lines(outcome, spec.out)):
        print(line, file=sys.stdout if i == 0 else sys.stderr)
    if outcome.done or outcome.skipped:
        for path in write_report(spec.out):
            print(f"wrote {path}")
    return outcome.exit_code
