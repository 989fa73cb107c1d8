"""The networks against the reference architecture, each recomputed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.models import (
    MLP,
    Critic,
    EnsembleLayerNorm,
    EnsembleLinear,
    QEnsemble,
    VelocityField,
    timestep_embedding,
)

F64 = torch.float64


def _randomize(module: nn.Module) -> nn.Module:
    """Random LayerNorm affines (they start at 1 and 0, which would hide mistakes)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.LayerNorm, EnsembleLayerNorm)):
                m.weight.normal_(1.0, 0.5)
                m.bias.normal_(0.0, 0.2)
    return module


def test_timestep_embedding_is_cos_then_sin_of_scaled_time():
    t = torch.tensor([0.0, 0.1, 0.5, 1.0], dtype=F64)
    emb = timestep_embedding(t, 16)
    assert emb.shape == (4, 16) and emb.dtype == F64
    freqs = np.exp(-np.log(10000.0) * np.arange(8) / 8)
    args = (t.numpy() * 10000.0)[:, None] * freqs[None, :]
    np.testing.assert_allclose(emb.numpy(), np.concatenate([np.cos(args), np.sin(args)], 1))
    assert torch.equal(emb[0], torch.cat([torch.ones(8), torch.zeros(8)]).to(F64))
    # The T = 10 grid lands on distinct embeddings.
    grid = timestep_embedding(torch.arange(11, dtype=F64) / 10)
    assert torch.cdist(grid, grid).add(torch.eye(11, dtype=F64)).min() > 0.1
    assert timestep_embedding(t.float()).dtype == torch.float32
    with pytest.raises(ValueError, match="even"):
        timestep_embedding(t, 15)


def test_mlp_layers_follow_the_reference():
    mlp = MLP(7, (32, 16), 3)
    kinds = [type(m) for m in mlp.net]
    assert kinds == [nn.Linear, nn.GELU, nn.LayerNorm, nn.Linear, nn.GELU, nn.LayerNorm, nn.Linear]
    assert [type(m) for m in MLP(7, (32,), 3, layer_norm=False).net] == [
        nn.Linear,
        nn.GELU,
        nn.Linear,
    ]
    _randomize(mlp).double()
    x = torch.randn(5, 7, dtype=F64)
    h = x
    for lin, norm in ((mlp.net[0], mlp.net[2]), (mlp.net[3], mlp.net[5])):
        h = F.gelu(h @ lin.weight.T + lin.bias)
        mu, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
        h = (h - mu) / torch.sqrt(var + 1e-5) * norm.weight + norm.bias
    out = h @ mlp.net[6].weight.T + mlp.net[6].bias
    torch.testing.assert_close(mlp(x), out)


def test_velocity_field_input_is_obs_action_and_time_embedding():
    v = _randomize(VelocityField(4, 2, hidden=(16, 16), horizon=3)).double()
    assert v.action_dim == 6 and v.env_action_dim == 2 and v.horizon == 3
    obs, a = torch.randn(5, 4, dtype=F64), torch.randn(5, 6, dtype=F64)
    t = torch.rand(5, dtype=F64)
    out = v(obs, a, t)
    assert out.shape == (5, 6) and out.dtype == F64
    torch.testing.assert_close(out, v.mlp(torch.cat([obs, a, timestep_embedding(t)], -1)))
    # t may come in another float dtype: it follows the action's.
    torch.testing.assert_close(v(obs, a, t.float()), v(obs, a, t.float().double()))
    assert v.mlp.net[0].in_features == 4 + 6 + 16


def _head(ens: QEnsemble, e: int, x: torch.Tensor) -> torch.Tensor:
    """Head ``e`` of the ensemble as a plain MLP, by hand."""
    h = x
    layers = list(ens.net)
    for layer in layers:
        if isinstance(layer, EnsembleLinear):
            h = h @ layer.weight[e] + layer.bias[e, 0]
        elif isinstance(layer, nn.GELU):
            h = F.gelu(h)
        else:
            mu, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
            h = (h - mu) / torch.sqrt(var + 1e-5) * layer.weight[e, 0] + layer.bias[e, 0]
    return h.squeeze(-1)


@pytest.mark.parametrize("ensemble", [1, 2, 3])
@pytest.mark.parametrize("layer_norm", [True, False])
def test_q_ensemble_is_independent_heads_in_one_batched_module(ensemble, layer_norm):
    ens = _randomize(QEnsemble(4, 3, hidden=(16, 8), ensemble=ensemble, layer_norm=layer_norm))
    ens = ens.double()
    obs, a = torch.randn(6, 4, dtype=F64), torch.randn(6, 3, dtype=F64)
    qs = ens(obs, a)
    assert qs.shape == (ensemble, 6)
    x = torch.cat([obs, a], -1)
    for e in range(ensemble):
        torch.testing.assert_close(qs[e], _head(ens, e, x))
    if ensemble > 1:
        # Changing the last head's parameters leaves the others alone.
        with torch.no_grad():
            for p in ens.parameters():
                p[-1].add_(0.3)
        changed = ens(obs, a)
        torch.testing.assert_close(changed[:-1], qs[:-1])
        assert (changed[-1] - qs[-1]).abs().max() > 1e-3
        assert not torch.allclose(qs[0], qs[1])  # heads are initialised differently


def test_ensemble_linear_initialises_like_nn_linear():
    layer = EnsembleLinear(3, 64, 32)
    bound = 1 / math.sqrt(64)
    assert layer.weight.shape == (3, 64, 32) and layer.bias.shape == (3, 1, 32)
    assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
    assert layer.weight.std() > 0.5 * bound / math.sqrt(3)  # uniform, not collapsed


def test_critic_aggregates_heads_and_has_a_value_network():
    obs, a = torch.randn(5, 4, dtype=F64), torch.randn(5, 3, dtype=F64)
    for aggregate, reduce in (("min", lambda q: q.min(0).values), ("mean", lambda q: q.mean(0))):
        critic = Critic(4, 3, hidden=(16, 16), ensemble=2, aggregate=aggregate).double()
        qs = critic.q_all(obs, a)
        assert qs.shape == (2, 5)
        torch.testing.assert_close(critic(obs, a), reduce(qs))
        v = critic.v(obs)
        assert v.shape == (5,)
        torch.testing.assert_close(v, critic.value(obs).squeeze(-1))
    with pytest.raises(ValueError, match="aggregate"):
        Critic(4, 3, aggregate="max")


def test_rows_are_independent_and_dtypes_follow_parameters():
    torch.manual_seed(0)
    v, critic = VelocityField(4, 2, hidden=(16,)), Critic(4, 2, hidden=(16,))
    obs, a, t = torch.randn(7, 4), torch.randn(7, 2), torch.rand(7)
    batch_v, batch_q = v(obs, a, t), critic(obs, a)
    for i in range(7):
        one = slice(i, i + 1)
        torch.testing.assert_close(v(obs[one], a[one], t[one]), batch_v[one])
        torch.testing.assert_close(critic(obs[one], a[one]), batch_q[one])
    assert batch_v.dtype == batch_q.dtype == torch.float32
    v64 = v.double()
    assert v64(obs.double(), a.double(), t.double()).dtype == F64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_models_run_on_cuda():
    v = VelocityField(4, 2, hidden=(16,)).cuda()
    critic = Critic(4, 2, hidden=(16,)).cuda()
    obs, a, t = torch.randn(3, 4).cuda(), torch.randn(3, 2).cuda(), torch.rand(3).cuda()
    assert v(obs, a, t).device.type == "cuda" and critic(obs, a).device.type == "cuda"
