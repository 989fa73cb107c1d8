"""Tests for core/manifold.py: distances against a brute-force reference, the threshold, the
off-manifold flag, and the weight sweep against separate sampler calls."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import tiny_config

import core.manifold as manifold_mod
from core.guidance import guided_sample
from core.manifold import DataManifold, chunk_actions, episode_index, weight_sweep
from core.models import Critic, VelocityField

CUDA = torch.cuda.is_available()


def _dataset(episodes: int = 12, steps: int = 25, obs_dim: int = 4, act_dim: int = 2, seed=0):
    """Random-walk trajectories: observations [N, O], actions [N, a], terminals [N]."""
    rng = np.random.default_rng(seed)
    obs = np.cumsum(rng.normal(size=(episodes, steps, obs_dim)), axis=1)
    obs *= rng.uniform(0.5, 5.0, size=obs_dim)  # unequal scales: standardisation matters
    act = np.tanh(rng.normal(size=(episodes, steps, act_dim)))
    terminals = np.zeros((episodes, steps), dtype=bool)
    terminals[:, -1] = True
    return obs.reshape(-1, obs_dim), act.reshape(-1, act_dim), terminals.reshape(-1)


def _brute_force(ref_z, ref_act, mean, std, k, horizon, obs, actions):
    """d(s, a) by explicit loops: the k nearest standardised states, then the closest action."""
    out = []
    for s, a in zip(obs, actions, strict=True):
        z = (s - mean) / std
        state_d = [math.sqrt(sum((z[d] - x[d]) ** 2 for d in range(len(z)))) for x in ref_z]
        order = sorted(range(len(ref_z)), key=lambda j: state_d[j])[:k]
        act_d = [math.sqrt(sum((a[d] - ref_act[j][d]) ** 2 for d in range(len(a)))) for j in order]
        best = min(range(len(order)), key=lambda i: act_d[i])
        out.append((act_d[best] / math.sqrt(horizon), order[best], state_d[order[0]]))
    return out


def _reference_states(m: DataManifold, obs_raw: np.ndarray):
    """Standardised reference states rebuilt from the raw rows named by ``source_rows``."""
    mean, std = m.obs_mean.double().numpy(), m.obs_std.double().numpy()
    return (obs_raw[m.source_rows.numpy()] - mean) / std, mean, std


def test_episode_index_and_chunks_stay_inside_trajectories():
    terminals = np.array([0, 0, 1, 0, 0, 0, 1, 0, 1], dtype=bool)
    assert episode_index(terminals).tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2]
    actions = np.arange(9, dtype=np.float64)[:, None]
    chunks, rows = chunk_actions(actions, episode_index(terminals), 2)
    assert rows.tolist() == [0, 1, 3, 4, 5, 7]
    assert chunks.tolist() == [[0, 1], [1, 2], [3, 4], [4, 5], [5, 6], [7, 8]]
    chunks3, rows3 = chunk_actions(actions, episode_index(terminals), 3)
    assert rows3.tolist() == [0, 3, 4]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_distances_match_brute_force(dtype):
    obs, act, terminals = _dataset()
    m = DataManifold.from_trajectories(obs, act, terminals, k=5, dtype=dtype)
    ref_z, mean, std = _reference_states(m, obs)
    ref_act = act[m.source_rows.numpy()]
    np.testing.assert_allclose(mean, obs.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, obs.std(0), rtol=1e-6)

    rng = np.random.default_rng(1)
    q_obs = obs[rng.choice(len(obs), 20)] + rng.normal(scale=0.3, size=(20, obs.shape[1]))
    q_act = rng.uniform(-1, 1, size=(20, act.shape[1]))
    got = m.query(torch.tensor(q_obs, dtype=dtype), torch.tensor(q_act, dtype=dtype))
    want = _brute_force(ref_z, ref_act, mean, std, 5, 1, q_obs, q_act)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    np.testing.assert_allclose(got.distance.numpy(), [w[0] for w in want], rtol=tol, atol=tol)
    np.testing.assert_allclose(got.state_distance.numpy(), [w[2] for w in want], rtol=tol)
    assert got.nearest.tolist() == [w[1] for w in want]
    assert got.distance.dtype == dtype


def test_chunked_distances_match_brute_force():
    horizon = 3
    obs, act, terminals = _dataset(episodes=8, steps=15)
    m = DataManifold.from_trajectories(
        obs, act, terminals, horizon=horizon, k=4, dtype=torch.float64
    )
    assert m.action_dim == horizon * act.shape[1]
    rows = m.source_rows.numpy()
    # Chunks rebuilt by hand: a_j, a_{j+1}, a_{j+2}, all in the trajectory of row j.
    ep = np.repeat(np.arange(8), 15)
    assert all(ep[j] == ep[j + horizon - 1] for j in rows)
    ref_act = [np.concatenate([act[j + h] for h in range(horizon)]) for j in rows]
    np.testing.assert_array_equal(m.actions.numpy(), np.array(ref_act))
    ref_z, mean, std = _reference_states(m, obs)

    rng = np.random.default_rng(2)
    q_obs = obs[rng.choice(len(obs), 10)] + rng.normal(scale=0.2, size=(10, obs.shape[1]))
    q_act = rng.uniform(-1, 1, size=(10, horizon * act.shape[1]))
    got = m.query(torch.tensor(q_obs), torch.tensor(q_act))
    want = _brute_force(ref_z, ref_act, mean, std, 4, horizon, q_obs, q_act)
    np.testing.assert_allclose(got.distance.numpy(), [w[0] for w in want], rtol=1e-10)


def test_fit_holds_out_whole_trajectories_and_threshold_is_their_quantile():
    obs, act, terminals = _dataset(episodes=20, steps=20)
    m = DataManifold.from_trajectories(obs, act, terminals, k=6, quantile=0.9, holdout=0.2, seed=3)
    ep = episode_index(terminals)
    held_eps = set(ep[m.calibration_rows.numpy()].tolist())
    ref_eps = set(ep[m.source_rows.numpy()].tolist())
    assert len(held_eps) == 4 and not held_eps & ref_eps
    assert len(m) + len(m.calibration_rows) == len(obs)

    # The threshold recomputed from scratch: brute-force distances of the held-out pairs.
    ref_z, mean, std = _reference_states(m, obs)
    ref_act = act[m.source_rows.numpy()]
    cal = m.calibration_rows.numpy()
    want = [w[0] for w in _brute_force(ref_z, ref_act, mean, std, 6, 1, obs[cal], act[cal])]
    np.testing.assert_allclose(m.calibration.numpy(), np.sort(want), rtol=1e-5, atol=1e-6)
    assert m.threshold == pytest.approx(float(np.quantile(want, 0.9)), rel=1e-5)


def test_fit_without_terminals_holds_out_rows():
    obs, act, _ = _dataset(episodes=4, steps=50)
    m = DataManifold.fit(obs, act, k=3, holdout=0.1, max_calibration=7)
    assert len(m) == 180 and len(m.calibration_rows) == 7
    assert not set(m.calibration_rows.tolist()) & set(m.source_rows.tolist())


def test_off_manifold_flag_on_a_hand_made_case():
    # States on a line; the data pushes right (+1, 0) left of 0 and up (0, +1) right of it.
    states = torch.linspace(-1, 1, 21, dtype=torch.float64)[:, None]
    actions = torch.where(states < 0, torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    m = DataManifold(
        states=states,
        actions=actions.double(),
        obs_mean=torch.zeros(1, dtype=torch.float64),
        obs_std=torch.ones(1, dtype=torch.float64),
        k=3,
        threshold=0.5,
    )
    obs = torch.tensor([[-0.52], [-0.52], [0.48], [0.48], [0.48]], dtype=torch.float64)
    cand = torch.tensor(
        [[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 0.6], [0.0, 0.4]], dtype=torch.float64
    )
    got = m.query(obs, cand)
    # Right action for the state; the other region's action; right; 0.4 away; 0.6 away.
    np.testing.assert_allclose(got.distance.numpy(), [0, math.sqrt(2), 0, 0.4, 0.6], atol=1e-12)
    assert got.off_manifold.tolist() == [False, True, False, False, True]
    assert torch.equal(m.off_manifold(obs, cand), got.off_manifold)
    np.testing.assert_allclose(got.state_distance.numpy(), [0.02, 0.02, 0.02, 0.02, 0.02])


def test_query_blocks_and_repeated_states_do_not_change_results(monkeypatch):
    obs, act, terminals = _dataset()
    m = DataManifold.from_trajectories(obs, act, terminals, k=5, dtype=torch.float64)
    rng = np.random.default_rng(4)
    q_obs = torch.tensor(obs[rng.choice(len(obs), 6)]).repeat_interleave(4, dim=0)
    q_act = torch.tensor(rng.uniform(-1, 1, size=(24, 2)))
    together = m.query(q_obs, q_act)
    one_by_one = [m.query(q_obs[i : i + 1], q_act[i : i + 1]) for i in range(24)]
    monkeypatch.setattr(manifold_mod, "_SCORE_ELEMENTS", 2 * len(m))  # 2 states per block
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(0))
    blocked = m.query(q_obs[perm], q_act[perm])  # shuffled: no runs of equal states left
    for i, single in enumerate(one_by_one):
        assert together.distance[i] == single.distance[0]
        assert together.nearest[i] == single.nearest[0]
    assert torch.equal(blocked.distance, together.distance[perm])
    assert torch.equal(blocked.nearest, together.nearest[perm])


def test_query_rejects_wrong_shapes_with_a_message():
    obs, act, terminals = _dataset()
    m = DataManifold.from_trajectories(obs, act, terminals, horizon=2, k=3)
    with pytest.raises(ValueError, match="horizon 2"):
        m.query(torch.zeros(3, 4), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="obs has 5 dims"):
        m.query(torch.zeros(3, 5), torch.zeros(3, 4))


@pytest.mark.skipif(not CUDA, reason="no CUDA device on this machine")
def test_cuda_matches_cpu():
    obs, act, terminals = _dataset()
    m = DataManifold.from_trajectories(obs, act, terminals, k=5, dtype=torch.float64)
    mc = m.to("cuda")
    q_obs = torch.tensor(obs[:30] + 0.1)
    q_act = torch.rand(30, 2, dtype=torch.float64)
    got = mc.query(q_obs.cuda(), q_act.cuda())
    assert got.distance.device.type == "cuda"
    np.testing.assert_allclose(got.distance.cpu(), m.distances(q_obs, q_act), rtol=1e-12)
    assert mc.threshold == m.threshold


def _tiny_policy(obs_dim=4, horizon=1, act_dim=2, seed=0):
    torch.manual_seed(seed)
    velocity = VelocityField(obs_dim, act_dim, hidden=(32, 32), horizon=horizon).double()
    critic = Critic(obs_dim, horizon * act_dim, hidden=(32, 32)).double()
    return velocity, critic


def test_weight_sweep_equals_separate_calls_with_the_same_noise():
    obs, act, terminals = _dataset()
    m = DataManifold.from_trajectories(obs, act, terminals, k=5, dtype=torch.float64)
    velocity, critic = _tiny_policy()
    state = torch.tensor(obs[7])
    weights = [0.0, 0.03, 0.3, 3.0]
    noise = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    sweep = weight_sweep(velocity, critic, state, weights, m, estimator="qgf", noise=noise)
    assert sweep.q.shape == (4, 3) and sweep.actions.shape == (4, 3, 2)
    for i, w in enumerate(weights):
        alone = guided_sample(
            velocity, critic, state.expand(3, -1), estimator="qgf", weight=w, noise=noise
        )
        torch.testing.assert_close(sweep.actions[i], alone.actions, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(sweep.q[i], alone.q_final, rtol=1e-10, atol=1e-12)
        expect = m.query(state.expand(3, -1), alone.actions)
        torch.testing.assert_close(sweep.distance[i], expect.distance, rtol=1e-9, atol=1e-12)
        assert torch.equal(sweep.off_manifold[i], expect.off_manifold)
    # Guidance changed something, so the comparison above is not between constants.
    assert not torch.allclose(sweep.actions[0], sweep.actions[-1])
    assert sweep.q_mean.shape == sweep.distance_mean.shape == sweep.off_fraction.shape == (4,)


def test_weight_sweep_draws_noise_from_the_generator_and_works_without_manifold():
    velocity, critic = _tiny_policy(horizon=2)
    state = torch.zeros(1, 4, dtype=torch.float64)
    a = weight_sweep(
        velocity,
        critic,
        state,
        [0.0, 0.1],
        candidates=5,
        generator=torch.Generator().manual_seed(0),
    )
    b = weight_sweep(
        velocity, critic, state, [0.1], candidates=5, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(a.actions[1], b.actions[0], rtol=1e-10, atol=1e-12)
    assert a.actions.shape == (2, 5, 4)
    assert torch.isnan(a.distance).all() and not a.off_manifold.any()
    assert a.threshold == math.inf


def test_from_sample_without_terminals_compares_the_first_action_of_a_chunk():
    obs, act, terminals = _dataset()
    sample = {"observations": obs, "actions": act}
    m = DataManifold.from_sample(sample, horizon=3, k=4, dtype=torch.float64)
    assert m.horizon == 1 and m.action_dim == 2
    chunks = torch.rand(5, 6, dtype=torch.float64)
    q_obs = torch.tensor(obs[:5])
    torch.testing.assert_close(m.distances(q_obs, chunks), m.distances(q_obs, chunks[:, :2]))
    with pytest.raises(ValueError, match="multiple of 2"):
        m.query(q_obs, torch.zeros(5, 5, dtype=torch.float64))
    # With trajectory ends the sample gives real chunks.
    mc = DataManifold.from_sample({**sample, "terminals": terminals}, horizon=3, k=4)
    assert mc.horizon == 3 and mc.action_dim == 6
    # Pre-built chunks and trajectory ids (what a checkpoint sample can carry).
    ep = episode_index(terminals)
    chunks, rows = chunk_actions(act, ep, 3)
    pre = {
        "observations": obs[rows],
        "actions": act[rows],
        "action_chunks": chunks,
        "episodes": ep[rows],
    }
    mp = DataManifold.from_sample(pre, horizon=3, k=4, seed=1)
    assert mp.horizon == 3
    held = set(ep[rows][mp.calibration_rows.numpy()].tolist())
    assert held and not held & set(ep[rows][mp.source_rows.numpy()].tolist())


def test_from_checkpoint_uses_the_sample_and_the_policy_horizon(tmp_path):
    from core.checkpoints import DatasetSample, save_checkpoint

    obs, act, _ = _dataset()
    config = tiny_config(
        obs_dim=4,
        action_dim=2,
        horizon=2,
        hidden=[8],
        data_fingerprint={"arrays_sha256": "synthetic"},
    )
    net, critic = config.build_policy(), config.build_critic()
    sample = DatasetSample(obs.astype(np.float32), act.astype(np.float32))
    save_checkpoint(tmp_path / "ck", config, net, critic, critic, sample)
    m = DataManifold.from_checkpoint(tmp_path / "ck", k=5)
    want = DataManifold.from_sample(sample, horizon=2, k=5)
    assert m.horizon == 1 and m.threshold == want.threshold and torch.equal(m.states, want.states)
    chunks = torch.rand(3, 4)
    torch.testing.assert_close(
        m.distances(torch.tensor(obs[:3]), chunks), want.distances(torch.tensor(obs[:3]), chunks)
    )
