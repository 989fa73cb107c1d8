"""Networks: the flow-matching velocity field, the batched Q ensemble and the V network.

All modules are plain ``torch.nn.Module``s that follow the reference architecture (MLP with
GELU, LayerNorm after every hidden layer, a linear output layer) and run on whatever device
and dtype their parameters live on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

AGGREGATIONS = ("min", "mean")


def timestep_embedding(t: Tensor, dim: int = 16, scale: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of flow time.

    Args:
        t: ``[B]`` flow times in [0, 1].
        dim: embedding size (even); the first half holds cosines, the second sines.
        scale: t is multiplied by this before the sinusoids, so that the grid {0, 1/T, .., 1}
            lands on well-separated phases; frequencies are geometric from 1 to 1/scale.

    Returns:
        ``[B, dim]`` embedding in t's dtype.
    """
    if dim % 2:
        raise ValueError(f"time embedding dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(scale) * torch.arange(half, device=t.device, dtype=t.dtype) / half)
    args = (t * scale)[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class MLP(nn.Module):
    """``in -> [Linear, GELU, LayerNorm?] x len(hidden) -> Linear -> out``."""

    def __init__(
        self, in_dim: int, hidden: Sequence[int], out_dim: int, layer_norm: bool = True
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.GELU()]
            if layer_norm:
                layers.append(nn.LayerNorm(h))
            width = h
        layers.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class VelocityField(nn.Module):
    """Flow-matching velocity ``v(obs [B,O], a_t [B,A], t [B]) -> [B,A]``.

    With action chunking the network sees one flat action of ``A = horizon * action_dim``
    dims; the sampler never needs to know. ``action_dim`` is the flat size ``A`` (what the
    sampler draws noise for); ``env_action_dim`` is the size of one env action.
    """

    def __init__(
        self,
        obs_dim: int,
        env_action_dim: int,
        hidden: Sequence[int] = (512, 512, 512, 512),
        horizon: int = 1,
        layer_norm: bool = True,
        time_dim: int = 16,
    ) -> None:
        super().__init__()
        self.obs_dim = obs_dim
        self.env_action_dim = env_action_dim
        self.horizon = horizon
        self.action_dim = horizon * env_action_dim
        self.time_dim = time_dim
        self.mlp = MLP(obs_dim + self.action_dim + time_dim, hidden, self.action_dim, layer_norm)

    def forward(self, obs: Tensor, a_t: Tensor, t: Tensor) -> Tensor:
        emb = timestep_embedding(t.to(a_t.dtype), self.time_dim)
        return self.mlp(torch.cat([obs, a_t, emb], dim=-1))


class EnsembleLinear(nn.Module):
    """``E`` independent linear layers applied as one batched matmul: ``[E,B,I] -> [E,B,O]``."""

    def __init__(self, ensemble: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(ensemble, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(ensemble, 1, out_dim))
        # Same init as nn.Linear, head by head.
        bound = 1.0 / math.sqrt(in_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleLayerNorm(nn.Module):
    """LayerNorm with a separate affine transform per ensemble member."""

    def __init__(self, ensemble: int, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.weight = nn.Parameter(torch.ones(ensemble, 1, dim))
        self.bias = nn.Parameter(torch.zeros(ensemble, 1, dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, (self.dim,)) * self.weight + self.bias


class QEnsemble(nn.Module):
    """``E`` Q heads batched as one module: ``(obs [B,O], a [B,A]) -> [E,B]``.

    Running the heads as one batched matmul instead of ``E`` networks cuts per-op overhead,
    which dominates small-batch guidance on a CPU.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: Sequence[int] = (512, 512, 512, 512),
        ensemble: int = 2,
        layer_norm: bool = True,
    ) -> None:
        super().__init__()
        self.ensemble = ensemble
        layers: list[nn.Module] = []
        width = obs_dim + action_dim
        for h in hidden:
            layers += [EnsembleLinear(ensemble, width, h), nn.GELU()]
            if layer_norm:
                layers.append(EnsembleLayerNorm(ensemble, h))
            width = h
        layers.append(EnsembleLinear(ensemble, width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, obs: Tensor, a: Tensor) -> Tensor:
        x = torch.cat([obs, a], dim=-1)
        x = x.unsqueeze(0).expand(self.ensemble, *x.shape)
        return self.net(x).squeeze(-1)


class Critic(nn.Module):
    """IQL critic: a Q ensemble and a state-value network.

    Calling the critic returns the aggregated Q, ``(obs [B,O], a [B,A]) -> [B]``, which is
    the ``q`` callable the sampler takes.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: Sequence[int] = (512, 512, 512, 512),
        ensemble: int = 2,
        aggregate: str = "min",
        layer_norm: bool = True,
    ) -> None:
        super().__init__()
        if aggregate not in AGGREGATIONS:
            raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}")
        self.obs_dim = obs_dim
        self.action_dim = action_dim
        self.aggregate = aggregate
        self.q_ensemble = QEnsemble(obs_dim, action_dim, hidden, ensemble, layer_norm)
        self.value = MLP(obs_dim, hidden, 1, layer_norm)

    def q_all(self, obs: Tensor, a: Tensor) -> Tensor:
        """``[E, B]`` Q of every head."""
        return self.q_ensemble(obs, a)

    def forward(self, obs: Tensor, a: Tensor) -> Tensor:
        qs = self.q_ensemble(obs, a)
        return qs.min(dim=0).values if self.aggregate == "min" else qs.mean(dim=0)

    def v(self, obs: Tensor) -> Tensor:
        """``[B]`` state value V(s)."""
        return self.value(obs).squeeze(-1)
