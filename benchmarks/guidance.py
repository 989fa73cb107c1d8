"""Guided sampling latency per estimator against unguided Euler sampling, and FLOPs per action.

Run: ``qgf bench guidance`` or ``python -m benchmarks.guidance [--quick]``.

Random networks of the reference sizes (obs 28, action 5, velocity and critic 4 x 512, GELU
and LayerNorm, 2 Q heads aggregated by min), T = 10 steps, float32. For each batch size
every variant is timed in the same process, in rounds: each round runs every variant once,
in a fresh random order, so that drifting load from other processes hits all of them alike.
The table gives the median wall time per call and its ratio to the median of unguided
sampling (``core.guidance.euler``, the velocity alone, under ``torch.no_grad``).

Variants: each registered estimator through ``guided_sample`` (``none`` also reads Q at
a_hat at every step, for the plots), and best-of-N on top of ``none`` (plain BFN) and
``qgf`` (QGF + BFN), timed where the call has at most ``--max-rows`` candidates (at batch
256, best-of-16 denoises 4096 and would take most of the time budget; "-" in the table).
FLOPs per action come from ``core.diagnostics.flops_per_action`` (matrix products, forward
and backward). A second ratio uses the process's CPU time, which does not count time other
processes hold the cores: on a shared machine it is the steadier of the two.

Threads: torch's default (one per core) unless ``--threads``. On the project's 2-core
machines, busy with other jobs, two threads made batch-1 sampling 2-3x slower than one
(every parallel region waits for a core another process holds) and the guided variants more
so than unguided sampling; compare thread counts with ``--threads``.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable

from core.commands import args as common

HELP = "guided sampling ms per estimator at batch 1/32/256 vs unguided Euler, FLOPs per action"

TARGET_QGF_BATCH1 = 4.0  # QGF at batch 1 within this factor of unguided sampling


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256], help="batches")
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds per batch (max)")
    parser.add_argument(
        "--budget", type=float, default=30.0, help="seconds of timing per batch (min 3 rounds)"
    )
    parser.add_argument("--quick", action="store_true", help="batches 1 and 32, 5 rounds")
    parser.add_argument("--steps", type=int, default=10, help="Euler steps T")
    parser.add_argument("--best-of", type=int, default=16, help="N of the best-of-N rows")
    parser.add_argument(
        "--max-rows",
        type=int,
        default=1024,
        help="skip (print -) a cell whose sampler call has more rows than this (B * N)",
    )
    parser.add_argument("--estimators", nargs="+", help="estimators (default: all registered)")
    parser.add_argument("--weight", type=float, default=0.05, help="guidance weight")
    common.add_threads(parser, None)
    common.add_device(parser)
    common.add_seed(parser, "seed of the states and noise")


def _networks(device: str):
    import torch

    from core.models import Critic, VelocityField

    torch.manual_seed(0)
    velocity = VelocityField(28, 5, hidden=(512,) * 4).to(device).eval()
    critic = Critic(28, 5, hidden=(512,) * 4, ensemble=2, aggregate="min").to(device).eval()
    return velocity, critic


def _variants(velocity, critic, batch: int, args) -> dict[str, Callable[[], object]]:
    """Label -> a call that samples ``batch`` actions, from fixed noise."""
    import torch

    from core.guidance import ESTIMATORS, euler, guided_sample

    g = torch.Generator().manual_seed(args.seed + batch)
    obs = torch.randn(batch, 28, generator=g).to(args.device)
    noise = torch.randn(batch * args.best_of, 5, generator=g).to(args.device)
    a0 = noise[:batch]

    def unguided():
        with torch.no_grad():
            return euler(velocity, obs, a0, args.steps)

    out: dict[str, Callable[[], object]] = {"unguided": unguided}
    for name in args.estimators or list(ESTIMATORS):
        out[name] = lambda name=name: guided_sample(
            velocity, critic, obs, name, args.weight, args.steps, a0
        )
    if batch * args.best_of <= args.max_rows:
        for name in ("none", "qgf"):
            out[f"{name}+best_of_{args.best_of}"] = lambda name=name: guided_sample(
                velocity, critic, obs, name, args.weight, args.steps, noise, best_of=args.best_of
            )
    return out


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time_batch(variants: dict[str, Callable[[], object]], args) -> tuple[dict, dict, int]:
    """Median wall and process-CPU seconds per variant over interleaved rounds, and the
    number of rounds. CPU time does not count the time other processes hold the cores."""
    start = time.perf_counter()
    for fn in variants.values():  # warm-up: first calls pay allocation and dispatch setup
        fn()
    _sync(args.device)
    round_s = time.perf_counter() - start
    rounds = max(3, min(args.rounds, int(args.budget / max(round_s, 1e-9))))
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    rng = random.Random(args.seed)
    for _ in range(rounds):
        order = list(variants.items())
        rng.shuffle(order)
        for label, fn in order:
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            _sync(args.device)
            wall[label].append(time.perf_counter() - t0)
            cpu[label].append(time.process_time() - c0)
    med = statistics.median
    return {k: med(v) for k, v in wall.items()}, {k: med(v) for k, v in cpu.items()}, rounds


def run(args: argparse.Namespace) -> int:
    import torch

    from core.diagnostics import flops_per_action

    if args.quick:
        args.batches = [b for b in args.batches if b <= 32] or args.batches[:1]
        args.rounds, args.budget = 5, 10.0
    if args.threads:
        torch.set_num_threads(args.threads)
    velocity, critic = _networks(args.device)

    obs = torch.randn(1, 28, generator=torch.Generator().manual_seed(args.seed)).to(args.device)
    flops = {
        row.label: row.flops
        for row in flops_per_action(
            velocity, critic, obs, args.estimators, args.steps,
            (("none", args.best_of), ("qgf", args.best_of)), args.weight,
        )
    }  # fmt: skip

    medians: dict[int, dict[str, float]] = {}
    cpu: dict[int, dict[str, float]] = {}
    rounds: dict[int, int] = {}
    for batch in args.batches:
        variants = _variants(velocity, critic, batch, args)
        medians[batch], cpu[batch], rounds[batch] = _time_batch(variants, args)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"guided sampling: obs 28, act 5, T={args.steps}, velocity and critic 4x512 "
        f"(2 Q heads, min), float32, device {args.device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, "
        f"load average {load:.1f}"
    )
    print(
        "rounds per batch: "
        + ", ".join(f"B={b}: {rounds[b]}" for b in args.batches)
        + " (medians of interleaved rounds; ratio = median / median of unguided)"
    )
    labels = list(dict.fromkeys(label for m in medians.values() for label in m))
    width = 8 * len(args.batches)
    head = "".join(f"{'B=' + str(b):>8}" for b in args.batches)
    print(
        f"{'':<18}{'median wall ms':>{width}}  {'x unguided':>{width}}  "
        f"{'x unguided (CPU time)':>{width}}"
    )
    print(f"{'variant':<18}{head}  {head}  {head}  {'MFLOP/action':>13}")

    def cells(label: str, table: dict, fmt: str, per_unguided: bool) -> str:
        out = ""
        for b in args.batches:
            if label not in table[b]:
                out += f"{'-':>8}"
                continue
            value = table[b][label] / (table[b]["unguided"] if per_unguided else 1e-3)
            out += format(value, fmt)
        return out

    for label in labels:
        ms = cells(label, medians, ">8.1f", False)
        x, xc = cells(label, medians, ">8.2f", True), cells(label, cpu, ">8.2f", True)
        print(f"{label:<18}{ms}  {x}  {xc}  {flops[label] / 1e6:>13.2f}")
    if 1 in medians and "qgf" in medians[1]:
        x = medians[1]["qgf"] / medians[1]["unguided"]
        ok = "ok" if x <= TARGET_QGF_BATCH1 else "ABOVE"
        print(f"qgf at batch 1: {x:.2f} x unguided (target <= {TARGET_QGF_BATCH1:g}) {ok}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.guidance", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
