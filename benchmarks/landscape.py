"""``qgf bench landscape``: what the critic's landscape costs, against one guided action.

The baseline is what the viewer does every step: one QGF action with its N candidates and
the w = 0 ghost (one ``guided_sample`` call, 2 rows x N). Each grid size is one batched
critic call over R x R actions, and the density one neighbour search; the table gives the
median time and the ratio to the baseline, all measured in this process.
"""

from __future__ import annotations

import argparse
import statistics
import time

HELP = "landscape: the critic's Q grid (32^2, 64^2, 128^2) against one guided viewer step"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="checkpoint (default: the shipped default)")
    parser.add_argument("--sizes", default="32,64,128", help="grid resolutions")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per row (median)")
    parser.add_argument("--candidates", type=int, default=8, help="N of the baseline step")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="3 repeats, sizes 32 and 64")


def _median_ms(fn, repeats: int, sync) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def run(args: argparse.Namespace) -> int:
    import torch

    from core.checkpoints import load_checkpoint
    from core.defaults import default_checkpoint
    from core.guidance import guided_sample
    from core.landscape import SliceSpec, critic_landscape
    from core.manifold import DataManifold

    torch.set_num_threads(args.threads)
    path = args.checkpoint or default_checkpoint()
    if path is None:
        print("qgf bench landscape: no checkpoint", flush=True)
        return 2
    policy, critic, config = load_checkpoint(path, args.device)
    manifold = DataManifold.from_checkpoint(path, device=args.device)
    device = torch.device(args.device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sizes = [32, 64] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    repeats = 3 if args.quick else args.repeats
    obs = torch.as_tensor(manifold.obs_mean, dtype=torch.float32, device=device)
    n, width = args.candidates, config.chunk_dim
    noise = torch.randn(n, width, generator=torch.Generator().manual_seed(0)).to(device)

    def step() -> None:
        guided_sample(
            policy,
            critic,
            obs[None].expand(2, -1),
            "qgf",
            torch.tensor([0.03, 0.0], device=device),
            config.flow_steps,
            noise=noise.repeat(2, 1),
            best_of=n,
        )

    base = _median_ms(step, repeats, sync)
    rows = [(f"one viewer step (qgf, N = {n} + ghost)", base, 1.0)]
    action = torch.zeros(width, device=device)
    for r in sizes:
        spec = SliceSpec(resolution=r)
        ms = _median_ms(
            lambda s=spec: critic_landscape(
                critic, obs, action, s, config.action_dim, config.horizon
            ),
            repeats,
            sync,
        )
        rows.append((f"Q + heads grid {r}x{r} ({r * r} actions)", ms, ms / base))
    spec = SliceSpec(resolution=64)
    ms = _median_ms(
        lambda: critic_landscape(
            critic, obs, action, spec, config.action_dim, config.horizon, manifold
        ),
        repeats,
        sync,
    )
    rows.append(("grid 64x64 + data density", ms, ms / base))
    print(f"{path} on {device} ({torch.get_num_threads()} threads), median of {repeats}")
    print(f"{'':<44}{'ms':>9}{'x step':>9}")
    for label, ms, ratio in rows:
        print(f"{label:<44}{ms:>9.1f}{ratio:>9.2f}")
    return 0
