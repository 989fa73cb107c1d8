"""Nearest-neighbour search for ``core.manifold``: torch brute force against scipy's k-d tree.

Run: ``python -m benchmarks.manifold_knn [--dataset PATH.npz] [--rows 100000]``.

Prints the median time of the state search of ``DataManifold`` (matmul + topk) and of
``scipy.spatial.cKDTree`` (if scipy is installed) for the two query shapes the project
uses: one state per viewer step (its candidates share it) and 256 states at once (the
diagnose report). With no dataset the states are synthetic: smooth trajectories on an
8-dimensional latent mapped into 28 dims (structured, like robot states) and, for contrast,
28-dim Gaussian states that fill space.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from core.manifold import DataManifold


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _trajectories(rows: int, obs_dim: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth random walks on an 8-dim latent, pushed through a fixed random nonlinearity."""
    steps = 1000
    latent = np.cumsum(rng.normal(scale=0.05, size=(rows // steps + 1, steps, 8)), axis=1)
    latent += rng.normal(size=(latent.shape[0], 1, 8))
    mix = rng.normal(size=(8, obs_dim))
    states = np.tanh(latent.reshape(-1, 8) @ mix)[:rows]
    return (states + 0.01 * rng.normal(size=states.shape)).astype(np.float32)


def _cases(args: argparse.Namespace, rng: np.random.Generator) -> dict[str, np.ndarray]:
    if args.dataset:
        data = np.load(args.dataset)
        obs = data["observations"]
        idx = np.sort(rng.choice(len(obs), size=min(args.rows, len(obs)), replace=False))
        return {f"dataset ({args.dataset})": obs[idx].astype(np.float32)}
    return {
        "structured (8-d latent in 28 dims)": _trajectories(args.rows, 28, rng),
        "space-filling (28-d Gaussian)": rng.normal(size=(args.rows, 28)).astype(np.float32),
    }


def _measure(name: str, obs: np.ndarray, args: argparse.Namespace, rng) -> None:
    actions = rng.uniform(-1, 1, size=(len(obs), 5)).astype(np.float32)
    mean, std = obs.mean(0), np.where(obs.std(0) > 1e-6, obs.std(0), 1.0)
    manifold = DataManifold(
        states=torch.from_numpy((obs - mean) / std),
        actions=torch.from_numpy(actions),
        obs_mean=torch.from_numpy(mean),
        obs_std=torch.from_numpy(std),
        k=args.k,
    )
    # Query states near the data but not on it, as a policy's states are.
    probe = torch.from_numpy(obs[rng.choice(len(obs), 256)] + 0.05 * std)
    step_obs = probe[:1].expand(args.candidates, -1)
    step_act = torch.rand(args.candidates, 5) * 2 - 1
    many_obs = probe.repeat_interleave(6, dim=0)
    many_act = torch.rand(len(many_obs), 5) * 2 - 1
    few = max(3, args.repeats // 4)
    print(f"\n{name}: {len(obs)} rows")
    t_search = _median_ms(lambda: manifold.neighbours(probe[:1]), args.repeats)
    t_step = _median_ms(lambda: manifold.query(step_obs, step_act), args.repeats)
    t_many = _median_ms(lambda: manifold.query(many_obs, many_act), few)
    print(f"  torch brute, search 1 state               {t_search:8.2f} ms")
    print(f"  torch brute, query 1 state x {args.candidates:3d} cand     {t_step:8.2f} ms")
    print(f"  torch brute, query 256 states x 6 cand    {t_many:8.2f} ms")
    try:
        from scipy.spatial import cKDTree
    except ImportError:
        print("  scipy not installed: no k-d tree")
        return
    start = time.perf_counter()
    tree = cKDTree(manifold.states.numpy())
    build = (time.perf_counter() - start) * 1e3
    z = ((probe - manifold.obs_mean) / manifold.obs_std).numpy()
    k_step = _median_ms(lambda: tree.query(z[:1], k=args.k), args.repeats)
    k_many = _median_ms(lambda: tree.query(z, k=args.k), few)
    print(f"  k-d tree build                            {build:8.2f} ms")
    print(f"  k-d tree, search 1 state                  {k_step:8.2f} ms")
    print(f"  k-d tree, search 256 states               {k_many:8.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", help="an OGBench .npz; else synthetic states")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--candidates", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, k={args.k}")
    for name, obs in _cases(args, rng).items():
        _measure(name, obs, args, rng)


if __name__ == "__main__":
    main()
