"""Networks: the flow-matching velocity field, the batched Q ensemble, the V network and a
one-step policy.

All modules are plain ``torch.nn.Module``s built from one MLP recipe and run on whatever
device and dtype their parameters live on. The recipe has the switches in which the
networks of the codebases people train with differ, each of which moves outputs far more
than rounding does (``MLPStyle``):

================  ==========================  ==========================  =====================
switch            this project                QGF release (JAX)           FQL (JAX)
================  ==========================  ==========================  =====================
activation        GELU, exact (erf)           GELU, tanh approximation    GELU, tanh approx.
LayerNorm place   Linear -> act -> LN         Linear -> LN -> act         Linear -> act -> LN
LayerNorm eps     1e-5                        1e-6                        1e-6
policy's last     LN                          no LN                       LN (if any)
hidden layer
flow time input   sinusoidal, 16 dims         sinusoidal, 16 dims         raw t (1 dim)
================  ==========================  ==========================  =====================

Defaults are this project's own, so a module built without a style is what every checkpoint
before imports held.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

AGGREGATIONS = ("min", "mean")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu", "mish")
NORM_POSITIONS = ("after_activation", "before_activation")
TIME_EMBEDDINGS = ("sinusoidal", "raw")


@dataclass(frozen=True)
class MLPStyle:
    """How each hidden layer of an MLP is built (see the module docstring's table).

    Attributes:
        activation: one of ``ACTIVATIONS``; ``gelu_tanh`` is flax's ``nn.gelu`` default.
        norm_position: ``after_activation`` (Linear -> act -> LayerNorm) or
            ``before_activation`` (Linear -> LayerNorm -> act).
        norm_eps: LayerNorm's epsilon (torch 1e-5, flax 1e-6).
    """

    activation: str = "gelu"
    norm_position: str = "after_activation"
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.norm_position not in NORM_POSITIONS:
            raise ValueError(
                f"norm_position must be one of {NORM_POSITIONS}, got {self.norm_position!r}"
            )
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps!r}")

    def activation_module(self) -> nn.Module:
        """A parameterless module applying the activation."""
        if self.activation == "gelu":
            return nn.GELU()
        if self.activation == "gelu_tanh":
            return nn.GELU(approximate="tanh")
        return {"relu": nn.ReLU, "silu": nn.SiLU, "mish": nn.Mish}[self.activation]()

    def hidden_layer(self, linear: nn.Module, norm: nn.Module | None) -> list[nn.Module]:
        """One hidden layer's modules in order: ``linear``, then activation and ``norm``."""
        if norm is None:
            return [linear, self.activation_module()]
        if self.norm_position == "before_activation":
            return [linear, norm, self.activation_module()]
        return [linear, self.activation_module(), norm]


DEFAULT_STYLE = MLPStyle()


class _Described:
    """A module that can state its constructor arguments as JSON (``architecture``) and be
    rebuilt from them (``from_architecture``): how files describe networks without code."""

    def architecture(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_architecture(cls, arch: dict[str, Any]):
        """Rebuild from ``architecture()``; keys a file written before a switch existed lack
        take the switch's default."""
        kwargs = dict(arch)
        if "style" in kwargs:
            kwargs["style"] = MLPStyle(**kwargs["style"])
        return cls(**kwargs)


def _norm_flags(hidden: Sequence[int], layer_norm: bool, norm_last_hidden: bool) -> list[bool]:
    """Which hidden layers carry a LayerNorm."""
    flags = [layer_norm] * len(hidden)
    if flags and not norm_last_hidden:
        flags[-1] = False
    return flags


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
    """``in -> [Linear, activation, LayerNorm?] x len(hidden) -> Linear -> out``, the
    activation and LayerNorm in the order and kind ``style`` gives.

    Args:
        layer_norm: LayerNorm on the hidden layers.
        norm_last_hidden: with ``layer_norm``, also on the last hidden layer (the QGF
            release's policy has none there).
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        out_dim: int,
        layer_norm: bool = True,
        style: MLPStyle = DEFAULT_STYLE,
        norm_last_hidden: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for h, norm in zip(hidden, _norm_flags(hidden, layer_norm, norm_last_hidden), strict=True):
            ln = nn.LayerNorm(h, eps=style.norm_eps) if norm else None
            layers += style.hidden_layer(nn.Linear(width, h), ln)
            width = h
        layers.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class VelocityField(_Described, nn.Module):
    """Flow-matching velocity ``v(obs [B,O], a_t [B,A], t [B]) -> [B,A]``.

    With action chunking the network sees one flat action of ``A = horizon * action_dim``
    dims; the sampler never needs to know. ``action_dim`` is the flat size ``A`` (what the
    sampler draws noise for); ``env_action_dim`` is the size of one env action.

    Args:
        time_embedding: ``sinusoidal`` (``time_dim`` dims, see ``timestep_embedding``) or
            ``raw`` (t itself, one input; ``time_dim`` must then be 1).
        style, norm_last_hidden: see ``MLP``.
    """

    def __init__(
        self,
        obs_dim: int,
        env_action_dim: int,
        hidden: Sequence[int] = (512, 512, 512, 512),
        horizon: int = 1,
        layer_norm: bool = True,
        time_dim: int = 16,
        time_embedding: str = "sinusoidal",
        style: MLPStyle = DEFAULT_STYLE,
        norm_last_hidden: bool = True,
    ) -> None:
        super().__init__()
        if time_embedding not in TIME_EMBEDDINGS:
            raise ValueError(
                f"time_embedding must be one of {TIME_EMBEDDINGS}, got {time_embedding!r}"
            )
        if time_embedding == "raw" and time_dim != 1:
            raise ValueError(f"raw time is one input: time_dim must be 1, got {time_dim}")
        self.obs_dim = obs_dim
        self.env_action_dim = env_action_dim
        self.horizon = horizon
        self.action_dim = horizon * env_action_dim
        self.hidden = [int(h) for h in hidden]
        self.layer_norm = layer_norm
        self.time_dim = time_dim
        self.time_embedding = time_embedding
        self.style = style
        self.norm_last_hidden = norm_last_hidden
        self.mlp = MLP(
            obs_dim + self.action_dim + time_dim,
            hidden,
            self.action_dim,
            layer_norm,
            style,
            norm_last_hidden,
        )

    def architecture(self) -> dict[str, Any]:
        return {
            "obs_dim": self.obs_dim,
            "env_action_dim": self.env_action_dim,
            "hidden": list(self.hidden),
            "horizon": self.horizon,
            "layer_norm": self.layer_norm,
            "time_dim": self.time_dim,
            "time_embedding": self.time_embedding,
            "style": asdict(self.style),
            "norm_last_hidden": self.norm_last_hidden,
        }

    def embed_time(self, t: Tensor) -> Tensor:
        """``[B] -> [B, time_dim]``: what the network sees of flow time."""
        if self.time_embedding == "raw":
            return t[:, None]
        return timestep_embedding(t, self.time_dim)

    def forward(self, obs: Tensor, a_t: Tensor, t: Tensor) -> Tensor:
        emb = self.embed_time(t.to(a_t.dtype))
        return self.mlp(torch.cat([obs, a_t, emb], dim=-1))


class OneStepPolicy(_Described, nn.Module):
    """A policy that maps noise to an action in one network call:
    ``(obs [B,O], noise [B,A]) -> [B,A]`` (unclipped; FQL clips it to [-1, 1] to act).

    This is FQL's distilled one-step flow policy, kept when such an agent is imported so that
    its actions can be set beside guided sampling from the same noise.
    """

    def __init__(
        self,
        obs_dim: int,
        env_action_dim: int,
        hidden: Sequence[int] = (512, 512, 512, 512),
        horizon: int = 1,
        layer_norm: bool = True,
        style: MLPStyle = DEFAULT_STYLE,
        norm_last_hidden: bool = True,
    ) -> None:
        super().__init__()
        self.obs_dim = obs_dim
        self.env_action_dim = env_action_dim
        self.horizon = horizon
        self.action_dim = horizon * env_action_dim
        self.hidden = [int(h) for h in hidden]
        self.layer_norm = layer_norm
        self.style = style
        self.norm_last_hidden = norm_last_hidden
        self.mlp = MLP(
            obs_dim + self.action_dim, hidden, self.action_dim, layer_norm, style, norm_last_hidden
        )

    def architecture(self) -> dict[str, Any]:
        return {
            "obs_dim": self.obs_dim,
            "env_action_dim": self.env_action_dim,
            "hidden": list(self.hidden),
            "horizon": self.horizon,
            "layer_norm": self.layer_norm,
            "style": asdict(self.style),
            "norm_last_hidden": self.norm_last_hidden,
        }

    def forward(self, obs: Tensor, noise: Tensor) -> Tensor:
        return self.mlp(torch.cat([obs, noise], dim=-1))


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

    def __init__(self, ensemble: int, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(ensemble, 1, dim))
        self.bias = nn.Parameter(torch.zeros(ensemble, 1, dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, (self.dim,), eps=self.eps) * self.weight + self.bias


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
        style: MLPStyle = DEFAULT_STYLE,
    ) -> None:
        super().__init__()
        self.ensemble = ensemble
        layers: list[nn.Module] = []
        width = obs_dim + action_dim
        for h in hidden:
            ln = EnsembleLayerNorm(ensemble, h, style.norm_eps) if layer_norm else None
            layers += style.hidden_layer(EnsembleLinear(ensemble, width, h), ln)
            width = h
        layers.append(EnsembleLinear(ensemble, width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, obs: Tensor, a: Tensor) -> Tensor:
        x = torch.cat([obs, a], dim=-1)
        x = x.unsqueeze(0).expand(self.ensemble, *x.shape)
        return self.net(x).squeeze(-1)


class Critic(_Described, nn.Module):
    """IQL critic: a Q ensemble and (optionally) a state-value network.

    Calling the critic returns the aggregated Q, ``(obs [B,O], a [B,A]) -> [B]``, which is
    the ``q`` callable the sampler takes.

    Args:
        value: whether there is a V network (FQL agents have none; ``v`` then raises).
        style: see ``MLPStyle``; Q heads and V carry LayerNorm on every hidden layer.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: Sequence[int] = (512, 512, 512, 512),
        ensemble: int = 2,
        aggregate: str = "min",
        layer_norm: bool = True,
        style: MLPStyle = DEFAULT_STYLE,
        value: bool = True,
    ) -> None:
        super().__init__()
        if aggregate not in AGGREGATIONS:
            raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}")
        self.obs_dim = obs_dim
        self.action_dim = action_dim
        self.hidden = [int(h) for h in hidden]
        self.aggregate = aggregate
        self.layer_norm = layer_norm
        self.style = style
        self.q_ensemble = QEnsemble(obs_dim, action_dim, hidden, ensemble, layer_norm, style)
        self.value = MLP(obs_dim, hidden, 1, layer_norm, style) if value else None

    def architecture(self) -> dict[str, Any]:
        return {
            "obs_dim": self.obs_dim,
            "action_dim": self.action_dim,
            "hidden": list(self.hidden),
            "ensemble": self.q_ensemble.ensemble,
            "aggregate": self.aggregate,
            "layer_norm": self.layer_norm,
            "style": asdict(self.style),
            "value": self.has_value,
        }

    @property
    def has_value(self) -> bool:
        """Whether this critic has a V network (``v`` works)."""
        return self.value is not None

    def q_all(self, obs: Tensor, a: Tensor) -> Tensor:
        """``[E, B]`` Q of every head."""
        return self.q_ensemble(obs, a)

    def forward(self, obs: Tensor, a: Tensor) -> Tensor:
        qs = self.q_ensemble(obs, a)
        return qs.min(dim=0).values if self.aggregate == "min" else qs.mean(dim=0)

    def v(self, obs: Tensor) -> Tensor:
        """``[B]`` state value V(s).

        Raises:
            ValueError: the critic has no V network (see ``has_value``).
        """
        if self.value is None:
            raise ValueError("this critic has no V network (e.g. an imported FQL agent)")
        return self.value(obs).squeeze(-1)
