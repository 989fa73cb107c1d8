"""Bring your own torch networks: guide them, compare estimators on them, and open them in the
viewer.

The sampler needs only two callables:

    velocity(obs [B,O], a_t [B,A], t [B]) -> [B,A]   with an ``action_dim`` attribute
    q(obs [B,O], a [B,A]) -> [B]                     the aggregated critic guidance uses

so any ``torch.nn.Module`` with those signatures works with ``guided_sample``,
``compare_estimators`` and ``weight_sweep``. The viewer, ``qgf eval`` and ``qgf record`` read
checkpoints, whose networks are ``core.models`` classes (so that a checkpoint or a timeline
never runs code from a file): the second half copies an MLP's weights into them and saves a
checkpoint.

    python examples/bring_your_own.py [--out DIR]
    qgf view DIR            # then open it (the default DIR is my-agent/)
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

from core.checkpoints import CheckpointConfig, DatasetSample, load_agent, save_checkpoint
from core.compare import compare_estimators
from core.guidance import guided_sample
from core.models import MLPStyle, timestep_embedding

ENV = "cube-single-play-singletask-task2-v0"
OBS, ACT, HIDDEN = 28, 5, (64, 64)


class MyPolicy(nn.Module):
    """A velocity field of your own: any internals, the sampler's signature."""

    def __init__(self) -> None:
        super().__init__()
        self.action_dim = ACT
        self.net = nn.Sequential(
            nn.Linear(OBS + ACT + 16, HIDDEN[0]),
            nn.GELU(approximate="tanh"),
            nn.Linear(HIDDEN[0], HIDDEN[1]),
            nn.GELU(approximate="tanh"),
            nn.Linear(HIDDEN[1], ACT),
        )

    def forward(self, obs: torch.Tensor, a_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, a_t, timestep_embedding(t.to(a_t.dtype))], dim=-1))


class MyCritic(nn.Module):
    """Two Q heads, aggregated by min: ``(obs, a) -> [B]``."""

    def __init__(self) -> None:
        super().__init__()
        self.heads = nn.ModuleList(
            nn.Sequential(
                nn.Linear(OBS + ACT, HIDDEN[0]),
                nn.GELU(approximate="tanh"),
                nn.Linear(HIDDEN[0], HIDDEN[1]),
                nn.GELU(approximate="tanh"),
                nn.Linear(HIDDEN[1], 1),
            )
            for _ in range(2)
        )

    def forward(self, obs: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, a], dim=-1)
        return torch.stack([h(x).squeeze(-1) for h in self.heads]).min(dim=0).values


def to_checkpoint(policy: MyPolicy, critic: MyCritic, out: str) -> None:
    """Copy the MLPs into ``core.models`` networks of the same recipe and save a checkpoint."""
    config = CheckpointConfig(
        env=ENV,
        dataset="cube-single-play-v0",
        task=2,
        obs_dim=OBS,
        action_dim=ACT,
        horizon=1,
        hidden=list(HIDDEN),
        layer_norm=False,
        time_dim=16,
        q_ensemble=2,
        flow_steps=10,
        training_steps=0,
        data_fingerprint={},
        activation="gelu_tanh",
        value_network=False,  # this critic has no V: the viewer shows V as unavailable
        source={"format": "examples/bring_your_own.py"},
    )
    assert config.style == MLPStyle("gelu_tanh")
    ours_policy, ours_critic = config.build_policy(), config.build_critic()
    linear = [m for m in ours_policy.mlp.net if isinstance(m, nn.Linear)]
    for mine, theirs in zip(
        [m for m in policy.net if isinstance(m, nn.Linear)], linear, strict=True
    ):
        theirs.load_state_dict(mine.state_dict())
    # The ensemble stacks the heads: weight [E, in, out] (a transposed nn.Linear weight).
    ensemble = [m for m in ours_critic.q_ensemble.net if hasattr(m, "weight")]
    with torch.no_grad():
        for i, layer in enumerate(ensemble):
            mine = [[m for m in h if isinstance(m, nn.Linear)][i] for h in critic.heads]
            layer.weight.copy_(torch.stack([m.weight.T for m in mine]))
            layer.bias.copy_(torch.stack([m.bias[None] for m in mine]))
    # No dataset: distances to the data show as unavailable (give real rows to have them).
    empty = DatasetSample(np.zeros((0, OBS), np.float32), np.zeros((0, ACT), np.float32))
    save_checkpoint(out, config, ours_policy, ours_critic, ours_critic, empty)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="my-agent", help="checkpoint directory to write")
    args = parser.parse_args()

    torch.manual_seed(0)
    policy, critic = MyPolicy().eval(), MyCritic().eval()
    obs = torch.randn(4, OBS)
    g = torch.Generator().manual_seed(0)
    trace = guided_sample(policy, critic, obs, "qgf", weight=0.1, steps=10, generator=g)
    print("guided actions", tuple(trace.actions.shape), "Q", trace.q_final.numpy().round(3))

    noise = torch.randn(8, ACT, generator=g)
    comparison = compare_estimators(policy, critic, obs[0], noise, weight=0.1, steps=10)
    for row in comparison.rows:
        print(f"  {row.label:<14} Q {row.q_executed:+.3f}  {row.ms_per_action:.1f} ms/action")

    to_checkpoint(policy, critic, args.out)
    agent = load_agent(args.out)
    again = guided_sample(
        agent.policy, agent.critic, obs, "qgf", 0.1, 10, noise=trace.a_t[0]
    ).actions
    print(
        f"checkpoint {args.out}: same actions to {float((again - trace.actions).abs().max()):.1e}"
    )
    print(f"open it with: qgf view {args.out}")


if __name__ == "__main__":
    main()
