"""``qgf sweep`` throughput: cells per second with 1 and 2 workers, and a multi-node run.

Run: ``qgf bench sweep`` or ``python -m benchmarks.sweep [--quick]``.

Each measurement starts a fresh local Ray cluster with 1 or 2 CPUs (one worker per CPU, a
cell takes one), runs one warm-up cell per worker (worker start, imports and env creation
are paid once per worker and would otherwise dominate short cells), then times
``core.sweep.run_sweep`` over ``--cells`` cells of the shipped default checkpoint (QGF,
``--episodes`` episodes of ``--max-episode-steps`` steps, stepped together). Cells per
second count from the first task's submission to the last result; the ratio of 2 workers to
1 is the scaling (the target on 2 cores is at least 1.7). Runs alternate (1, 2, 1, 2, ...,
``--rounds`` pairs) so that load from other processes hits both alike; the table gives the
median of each. CPU seconds per cell (the worker's process time) against wall seconds per
cell show how much of a cell was spent waiting for a core.

The ceiling: before each pair of runs, one and then two processes spin a pure-Python loop
for ``--spin`` seconds, and the ratio of their total iterations says how much a second
process can add on this machine at that moment. On a machine whose cores other jobs keep
busy, that is well below 2, and no scheduler can beat it; the sweep's ratio is to be read
against it.

The multi-node run builds a cluster on this machine with ``ray.cluster_utils.Cluster``: a
head with no CPUs (it schedules nothing) and ``--nodes`` worker nodes of 1 CPU each, joins
it by address as ``qgf sweep --address`` does, and counts the cells each node ran (every
result row records its node).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HELP = "qgf sweep cells/s with 1 and 2 workers (ratio), and a simulated multi-node run"

TARGET_RATIO = 1.7
_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "cube-single-task2"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=str(_CHECKPOINT), help="checkpoint directory")
    parser.add_argument("--cells", type=int, default=12, help="timed cells per run")
    parser.add_argument("--episodes", type=int, default=4, help="episodes per cell")
    parser.add_argument("--max-episode-steps", type=int, default=25, help="steps per episode")
    parser.add_argument("--nodes", type=int, default=2, help="worker nodes of the multi-node run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating 1/2-worker pairs")
    parser.add_argument("--spin", type=float, default=3.0, help="seconds of the ceiling test")
    parser.add_argument(
        "--quick", action="store_true", help="one round of 6 cells of 10-step episodes"
    )


def _spec(args: argparse.Namespace, out: Path, cells: int, seed0: int):
    from core.sweep import SweepSpec

    return SweepSpec(
        checkpoints=(args.checkpoint,),
        weights=(0.03,),
        estimators=("qgf",),
        episodes=args.episodes,
        envs=args.episodes,
        seeds=tuple(seed0 + 1000 * i for i in range(cells)),
        max_episode_steps=args.max_episode_steps,
        out=str(out),
    )


def _local(args: argparse.Namespace, workers: int, tmp: Path) -> dict:
    import ray

    from core.sweep import connect, read_rows, run_sweep

    connect(cpus=workers)
    try:
        run_sweep(_spec(args, tmp / "warm", workers, 7), progress=False)
        outcome = run_sweep(_spec(args, tmp / "run", args.cells, 0), progress=False)
    finally:
        ray.shutdown()
    if outcome.exit_code:
        raise RuntimeError(f"{len(outcome.failed)} cells failed: {outcome.failed[0][1]}")
    rows = read_rows(tmp / "run")
    return {
        "rate": len(outcome.done) / outcome.tasks_s,
        "wall": statistics.median(r["wall_s"] for r in rows),
        "cpu": statistics.median(r["cpu_s"] for r in rows),
    }


_SPIN = (
    "import time\n"
    "end, n = time.perf_counter() + {seconds}, 0\n"
    "while time.perf_counter() < end:\n"
    "    for _ in range(10000):\n"
    "        n += 1\n"
    "print(n)\n"
)


def _ceiling(seconds: float) -> float:
    """Total loop iterations of 2 spinning processes over those of 1 (ideally 2)."""
    code = _SPIN.format(seconds=seconds)

    def spin(count: int) -> int:
        procs = [
            subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
            for _ in range(count)
        ]
        return sum(int(p.communicate()[0]) for p in procs)

    one = spin(1)
    return spin(2) / one


def _multi_node(args: argparse.Namespace, tmp: Path) -> tuple[Counter, float]:
    import ray
    from ray.cluster_utils import Cluster

    from core.sweep import connect, read_rows, run_sweep

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for _ in range(args.nodes):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        connect(address=cluster.address)
        outcome = run_sweep(_spec(args, tmp / "nodes", 2 * args.nodes, 0), progress=False)
        ray.shutdown()
    finally:
        cluster.shutdown()
    if outcome.exit_code:
        raise RuntimeError(f"{len(outcome.failed)} cells failed: {outcome.failed[0][1]}")
    return Counter(r["node"] for r in read_rows(tmp / "nodes")), outcome.tasks_s


def run(args: argparse.Namespace) -> int:
    if args.quick:
        args.cells, args.max_episode_steps, args.rounds, args.spin = 6, 10, 1, 1.0
    started = time.perf_counter()
    runs: dict[int, list[dict]] = {1: [], 2: []}
    loads, ceilings = [], []
    with tempfile.TemporaryDirectory(prefix="qgf-bench-sweep-") as name:
        for i in range(args.rounds):
            ceilings.append(_ceiling(args.spin))
            for workers in (1, 2):
                tmp = Path(name) / f"{workers}-{i}"
                runs[workers].append(_local(args, workers, tmp))
                loads.append(os.getloadavg()[0])
        nodes, nodes_s = _multi_node(args, Path(name))
    print(
        f"qgf bench sweep: {Path(args.checkpoint).name}, QGF w=0.03, {args.cells} cells of "
        f"{args.episodes} episodes x {args.max_episode_steps} steps stepped together, "
        f"{args.rounds} round(s); load average {min(loads):.1f}-{max(loads):.1f} "
        f"on {os.cpu_count()} CPUs"
    )
    print(
        f"{'workers':<9}{'cells/s':>9}{'ratio':>7}{'wall s/cell':>13}{'CPU s/cell':>12}"
        "   cells/s per round"
    )
    rate1 = statistics.median(r["rate"] for r in runs[1])
    for workers, rs in runs.items():
        rate = statistics.median(r["rate"] for r in rs)
        wall = statistics.median(r["wall"] for r in rs)
        cpu = statistics.median(r["cpu"] for r in rs)
        each = ", ".join(f"{r['rate']:.2f}" for r in rs)
        print(f"{workers:<9}{rate:>9.2f}{rate / rate1:>7.2f}{wall:>13.2f}{cpu:>12.2f}   {each}")
    ratio = statistics.median(r["rate"] for r in runs[2]) / rate1
    ceiling = statistics.median(ceilings)
    verdict = "meets" if ratio >= TARGET_RATIO else "misses"
    print(f"2 workers / 1 worker: {ratio:.2f}x ({verdict} the {TARGET_RATIO}x target)")
    print(
        f"machine ceiling, 2 spinning processes / 1: {ceiling:.2f}x "
        f"(per round: {', '.join(f'{c:.2f}' for c in ceilings)}); "
        f"sweep scaling / ceiling: {ratio / ceiling:.2f}"
    )
    print(
        f"multi-node (ray.cluster_utils.Cluster: head with 0 CPUs + {args.nodes} nodes of "
        f"1 CPU): {sum(nodes.values())} cells in {nodes_s:.1f} s"
    )
    for i, (node, count) in enumerate(sorted(nodes.items()), 1):
        print(f"  node {i} ({node[:12]}): {count} cells")
    print(f"({time.perf_counter() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="benchmarks.sweep", description=HELP)
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args()))
