"""core/landscape.py: every layer against the function that defines it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.landscape import (
    SliceSpec,
    base_action,
    critic_landscape,
    data_density,
    grid_actions,
    project,
)
from core.manifold import DataManifold
from core.models import Critic

OBS, ACT, H = 6, 3, 2


@pytest.fixture(scope="module")
def critic():
    torch.manual_seed(0)
    return Critic(OBS, ACT * H, hidden=(16, 16), ensemble=3).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def manifold():
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(300, OBS)).astype(np.float32)
    actions = np.tanh(rng.normal(size=(300, ACT))).astype(np.float32)
    return DataManifold.fit(obs, actions, k=12)


def test_grid_values_are_direct_critic_calls(critic):
    spec = SliceSpec(dims=(2, 0), chunk_index=1, resolution=9)
    obs, base = torch.randn(OBS), torch.rand(ACT * H) * 2 - 1
    land = critic_landscape(critic, obs, base, spec, ACT, H)
    assert land.q.shape == (9, 9) and land.heads.shape == (3, 9, 9)
    coords = np.linspace(-1, 1, 9)
    np.testing.assert_allclose(land.xs, coords, atol=1e-7)
    rng = np.random.default_rng(1)
    for i, j in rng.integers(0, 9, size=(12, 2)):
        a = base.clone()
        a[1 * ACT + 2] = float(land.xs[j])  # dims[0] varies along x
        a[1 * ACT + 0] = float(land.ys[i])
        with torch.no_grad():
            q = critic(obs[None], a[None])
            heads = critic.q_all(obs[None], a[None])
        assert land.q[i, j] == pytest.approx(float(q), abs=1e-5)
        np.testing.assert_allclose(land.heads[:, i, j], heads[:, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(land.disagreement, land.heads.std(axis=0))
    # The dims outside the slice are the base's everywhere.
    grid, _ = grid_actions(base, spec, ACT)
    others = [d for d in range(ACT * H) if d not in (ACT + 2, ACT + 0)]
    assert torch.equal(grid[:, others], base[others].expand(81, -1))


def test_a_plain_callable_critic_has_one_head():
    def q(obs, a):
        return -(a**2).sum(-1)

    spec = SliceSpec(resolution=5)
    land = critic_landscape(q, torch.zeros(OBS), torch.zeros(ACT), spec, ACT)
    assert land.heads.shape == (1, 5, 5) and np.all(land.disagreement == 0)
    assert land.q[2, 2] == pytest.approx(0.0) and land.q[0, 0] == pytest.approx(-2.0)


def test_projection_is_the_two_coordinates():
    spec = SliceSpec(dims=(1, 2), chunk_index=1)
    a = torch.randn(4, 7, ACT * H)
    p = project(a, spec, ACT)
    assert p.shape == (4, 7, 2)
    np.testing.assert_array_equal(p[..., 0], a[..., ACT + 1].numpy())
    np.testing.assert_array_equal(p[..., 1], a[..., ACT + 2].numpy())


def test_density_is_a_kernel_density_of_the_distance_neighbours(manifold):
    obs = torch.randn(OBS)
    spec = SliceSpec(dims=(0, 2), resolution=41)
    coords = np.linspace(-1, 1, 41)
    density, points, note, bw = data_density(manifold, obs, spec, ACT, coords)
    rows, _ = manifold.neighbours(obs[None])
    expect = manifold.actions[rows[0]].numpy()[:, [0, 2]]
    np.testing.assert_allclose(points, expect)
    assert note == "" and points.shape == (12, 2)
    # At one grid point, by the formula.
    i, j = 13, 27
    x, y = coords[j], coords[i]
    k = np.exp(-0.5 * ((x - points[:, 0]) / bw[0]) ** 2 - 0.5 * ((y - points[:, 1]) / bw[1]) ** 2)
    assert density[i, j] == pytest.approx(k.sum() / (12 * 2 * math.pi * bw[0] * bw[1]))
    np.testing.assert_allclose(bw, np.maximum(points.std(axis=0) * 12 ** (-1 / 6), 0.02))
    # The density of points well inside the box integrates to about 1 over it.
    cell = (coords[1] - coords[0]) ** 2
    inside = np.abs(points).max() < 0.6
    if inside:
        assert density.sum() * cell == pytest.approx(1.0, abs=0.05)


def test_a_later_action_of_a_chunk_has_no_density_from_single_actions(manifold, critic):
    spec = SliceSpec(chunk_index=1, resolution=4)
    land = critic_landscape(critic, torch.zeros(OBS), torch.zeros(ACT * H), spec, ACT, H, manifold)
    assert land.density is None and "no data for action 2" in land.density_note
    first = critic_landscape(
        critic, torch.zeros(OBS), torch.zeros(ACT * H), SliceSpec(resolution=4), ACT, H, manifold
    )
    assert first.density is not None and first.density.shape == (4, 4)


def test_base_action_and_bad_slices():
    final = torch.tensor([[0.1, 0.2, 0.3], [0.5, -0.2, 0.1]])
    assert torch.equal(base_action(final, 1, "executed"), final[1])
    assert torch.allclose(base_action(final, 0, "mean"), final.mean(0))
    assert torch.equal(base_action(final, 1, "ghost", ghost=-final), -final[1])
    with pytest.raises(ValueError, match="w = 0"):
        base_action(final, 0, "ghost")
    for spec, message in [
        (SliceSpec(dims=(1, 1)), "two different dims"),
        (SliceSpec(dims=(0, 3)), "two different dims"),
        (SliceSpec(chunk_index=2), "chunk_index"),
        (SliceSpec(hold="median"), "hold"),
        (SliceSpec(resolution=1), "resolution"),
    ]:
        with pytest.raises(ValueError, match=message):
            spec.validate(ACT, H)
    spec = SliceSpec(dims=(2, 1), chunk_index=1, hold="mean", resolution=32)
    assert SliceSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.slow
def test_episode_slices_share_the_noise_across_weights():
    from core.checkpoints import load_checkpoint
    from core.landscape import episode_slices, figure
    from core.manifold import DataManifold as M

    ck = "checkpoints/cube-single-task2"
    policy, critic, config = load_checkpoint(ck)
    slices = episode_slices(
        policy,
        critic,
        config.env,
        [0, 4],
        weight=0.03,
        weights=[0.0, 0.3],
        steps=4,
        candidates=3,
        seed=2,
        spec=SliceSpec(resolution=8),
        manifold=M.from_checkpoint(ck),
    )
    assert [s.step for s in slices] == [0, 4]
    for s in slices:
        zero, strong = s.paths[0.0], s.paths[0.3]
        # w = 0 is the ghost; both weights start from the same noise.
        np.testing.assert_array_equal(zero.a_hat, zero.ghost_a_hat)
        np.testing.assert_array_equal(zero.a_hat[0], strong.a_hat[0])
        assert not np.array_equal(zero.final, strong.final)
        assert strong.off_manifold is not None and strong.off_manifold.shape == (3,)
        figure(s.landscape, strong, "test")
