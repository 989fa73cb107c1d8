"""What every tool starts from when not told otherwise: the default env, the shipped
checkpoint and the untrained ("random weights") networks.

One source for each, so ``qgf view``, ``qgf record`` and the benchmarks pick the same
checkpoint and, with random weights, the same networks.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from core.models import Critic, VelocityField

DEFAULT_ENV = "cube-single-play-singletask-task2-v0"
"""The env the shipped checkpoint was trained on, and every tool's default."""
CHECKPOINT_ROOT = Path(__file__).resolve().parent.parent / "checkpoints"
"""Where the shipped checkpoints lie (``checkpoints/`` of the repository)."""
RANDOM_HIDDEN = (256, 256, 256, 256)
"""Hidden layers of the random-weight networks: small, so the tools respond at once."""
RANDOM_SEED = 0
"""Seed of the random-weight networks (never the episode's seed: the networks stay the same
whatever episode is played)."""


def default_checkpoint(root: Path = CHECKPOINT_ROOT, env: str = DEFAULT_ENV) -> Path | None:
    """The shipped checkpoint for ``env``: ``root/<env>`` when it is one, else the first
    directory of ``root``, by name, whose ``config.json`` names ``env``; None when none does.
    """
    root = Path(root)
    if (root / env / "config.json").exists():
        return root / env
    for config in sorted(root.glob("*/config.json")):
        try:
            if json.loads(config.read_text()).get("env") == env:
                return config.parent
        except (OSError, ValueError):
            continue
    return None


def random_networks(
    obs_dim: int,
    action_dim: int,
    device: str | torch.device = "cpu",
    hidden: tuple[int, ...] = RANDOM_HIDDEN,
) -> tuple[VelocityField, Critic]:
    """Untrained policy and critic, the same ones every time (seeded with ``RANDOM_SEED``,
    without touching torch's global random state), in eval mode without gradients."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        policy = VelocityField(obs_dim, action_dim, hidden=hidden)
        critic = Critic(obs_dim, action_dim, hidden=hidden)
    for net in (policy, critic):
        net.to(device).eval().requires_grad_(False)
    return policy, critic
