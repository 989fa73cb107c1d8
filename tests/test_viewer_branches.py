"""Branches of viewer/session.py: continuing from a past step with other settings, exact
restore and replay, and what a branch costs and draws. No window."""

from __future__ import annotations

import gc
import weakref
from dataclasses import replace

import mujoco
import numpy as np
import pytest
import torch

from core import envs
from core.models import Critic, VelocityField
from core.render import OverlayLayers, draw_overlay, scene_rgba
from viewer.session import BRANCH_RGBA, Session, Settings

pytestmark = pytest.mark.slow

ENV = "cube-single-play-singletask-task2-v0"
BASE = Settings(env_name=ENV, weight=0.05, steps=4, candidates=3, seed=1)


@pytest.fixture(scope="module")
def shared() -> Session:
    s = Session(settings=BASE)
    yield s
    s.close()


@pytest.fixture()
def session(shared: Session) -> Session:
    shared.settings = BASE
    shared.reset()
    return shared


def play(session: Session, steps: int) -> None:
    for _ in range(steps):
        session.step()


def test_branch_restores_the_recorded_state_and_keeps_the_old_line(session):
    play(session, 8)
    main = session.branch
    main_records = list(main.history)
    main_current = main.current

    first = session.branch_from(3, weight=0.5, estimator="ood")

    assert [b.id for b in session.branches] == [0, 1] and session.active == 1
    branch = session.branch
    assert (branch.parent, branch.fork) == (0, 3)
    # The fork state is the recorded one, bit for bit, and the env is in it.
    recorded = main_records[3]
    assert first.index == 3 and first.chunk_step == 0
    assert np.array_equal(first.obs, recorded.obs)
    assert np.array_equal(first.snapshot.physics, recorded.snapshot.physics)
    assert np.array_equal(envs.snapshot(session.env).physics, recorded.snapshot.physics)
    # Sampled afresh with the new settings; the settings now in force are the branch's.
    assert (first.settings.weight, first.settings.estimator) == (0.5, "ood")
    assert session.settings == first.settings == branch.settings
    assert not np.array_equal(first.sample.guided.final, recorded.sample.guided.final)
    # The shared steps are the parent's own records, not copies; the parent is untouched.
    assert all(a is b for a, b in zip(branch.history, main_records[:3], strict=True))
    assert main.history == main_records and main.current is main_current


def test_branch_with_unchanged_settings_replays_the_same_future(session):
    # Noise is a function of (seed, step), so the same settings from the same exact state
    # must take the same actions and reach the same states as the original line.
    play(session, 10)
    original = [r.obs for r in session.history] + [session.current.obs]
    session.branch_from(4)
    play(session, 6)
    again = [r.obs for r in session.history] + [session.current.obs]
    assert len(again) == len(original)
    for a, b in zip(original, again, strict=True):
        assert np.array_equal(a, b)


def test_switching_back_continues_the_old_line_exactly(session, shared):
    play(session, 6)
    session.branch_from(2, weight=1.0)
    play(session, 5)
    session.switch_branch(0)
    assert session.settings == BASE and session.step_index == 6
    play(session, 4)
    continued = [r.obs for r in session.history]

    shared.settings = BASE
    shared.reset()
    play(shared, 10)
    straight = [r.obs for r in shared.history]
    for a, b in zip(continued, straight, strict=True):
        assert np.array_equal(a, b)


def test_replay_of_recorded_actions_reproduces_the_observations(session):
    play(session, 12)
    check = session.replay()
    assert check.exact and check.max_obs_error == 0.0
    assert (check.start, check.stop) == (0, 12)
    mid = session.replay(start=7)
    assert mid.exact and (mid.start, mid.stop) == (7, 12)

    session.branch_from(5, weight=0.0)
    play(session, 4)
    assert session.replay(start=0).exact  # through the fork: shared prefix, then its own
    assert session.replay(branch=0, start=3).exact
    # Replaying leaves the env where the active branch is: stepping on is unaffected.
    before = session.current.obs.copy()
    session.step()
    assert not np.array_equal(session.current.obs, before) or session.done


def test_replay_detects_a_record_that_does_not_match(session):
    play(session, 6)
    rec = session.history[2]
    session.branch.history[2] = replace(rec, action=rec.action + 0.5)
    check = session.replay()
    assert not check.exact
    assert check.mismatched[0] == 2 and check.max_obs_error > 0


def test_branch_from_the_shown_step_by_default(session):
    play(session, 5)
    session.view_step(2)
    first = session.branch_from(weight=0.2)
    assert first.index == 2 and session.viewing is None
    assert session.branch.fork == 2


def test_branch_curves_and_paths(session):
    play(session, 6)
    session.branch_from(3, weight=0.8)
    play(session, 4)
    main, branch = session.episode_curves(0), session.episode_curves(1)
    assert len(main["step"]) == 6 and len(branch["step"]) == 7
    assert np.array_equal(main["q"][:3], branch["q"][:3])  # the shared steps
    assert np.allclose(branch["return"], np.cumsum(branch["reward"]))

    lines = session.frame().overlay.polylines
    assert len(lines) == 2 and {ln.layer for ln in lines} == {"branches"}
    assert [ln.rgba for ln in lines] == [scene_rgba(c) for c in BRANCH_RGBA[:2]]
    # Each branch's path runs from the step before its fork to its current state.
    assert len(lines[0].points) == 7 and len(lines[1].points) == 6
    assert np.array_equal(lines[1].points[0], session.branch.history[2].effector)
    assert np.array_equal(lines[1].points[-1], session.current.effector)

    def geoms(layers: OverlayLayers) -> int:
        scene = mujoco.MjvScene(session.env.unwrapped._model, maxgeom=5000)
        draw_overlay(scene, session.frame().overlay, layers)
        return scene.ngeom

    assert geoms(OverlayLayers()) - geoms(OverlayLayers(branches=False)) == 6 + 5


def test_one_branch_draws_no_branch_paths(session):
    play(session, 3)
    assert session.frame().overlay.polylines == []


def test_branch_costs_only_its_own_steps(session):
    play(session, 10)
    before = session.timeline_nbytes()
    per_step = before / 11
    session.branch_from(8, weight=0.3)
    play(session, 2)
    grown = session.timeline_nbytes() - before
    # Three records of its own (steps 8, 9 and its current 10), not a copy of 0..7.
    assert 2 * per_step < grown < 4.5 * per_step


def test_bad_branch_requests_are_refused_and_nothing_changes(session):
    play(session, 3)
    for call, match in (
        (lambda: session.branch_from(9), "no step 9"),
        (lambda: session.branch_from(1, env_name=ENV), "a branch changes only"),
        (lambda: session.branch_from(1, weight=-1.0), "weight"),
        (lambda: session.switch_branch(4), "no branch 4"),
        (lambda: session.replay(start=7), "no step 7"),
    ):
        with pytest.raises(ValueError, match=match):
            call()
    assert len(session.branches) == 1 and session.step_index == 3
    assert session.settings == BASE


def test_reset_starts_over_with_one_branch(session):
    play(session, 3)
    session.branch_from(1, weight=0.4)
    session.reset()
    assert len(session.branches) == 1 and session.branch.parent is None
    assert session.step_index == 0


def test_reset_lets_the_old_episodes_branches_go(session):
    # The per-branch curve cache kept them alive: over a long run every episode's branches.
    play(session, 3)
    session.branch_from(1, weight=0.4)
    session.switch_branch(0)
    old = [weakref.ref(b) for b in session.branches]
    session.reset()
    gc.collect()
    assert all(ref() is None for ref in old)


def test_branch_inside_a_chunk_samples_a_new_chunk():
    torch.manual_seed(0)
    s = Session(settings=replace(BASE, seed=2))
    try:
        obs_dim, act_dim = 28, 5
        s.use_networks(
            VelocityField(obs_dim, act_dim, hidden=(32, 32), horizon=3),
            Critic(obs_dim, act_dim * 3, hidden=(32, 32)),
        )
        play(s, 5)
        assert s.history[4].chunk_step == 1
        first = s.branch_from(4, weight=0.0)
        assert first.chunk_step == 0 and first.sample is not s.branches[0].history[4].sample
        play(s, 3)
        assert [r.chunk_step for r in s.history[4:]] == [0, 1, 2]
        assert s.replay().exact
    finally:
        s.close()


def test_a_setting_changed_at_a_past_step_branches_from_it(session):
    play(session, 6)
    session.view_step(2)
    session.update(weight=0.7)
    assert len(session.branches) == 2 and session.branch.fork == 2
    assert session.current.index == 2 and session.current.settings.weight == 0.7
    # Now live on the branch: further changes re-sample its current step, no new branch.
    session.update(weight=0.9)
    assert len(session.branches) == 2 and session.branch.settings.weight == 0.9
    # An unchanged setting while viewing branches nothing.
    session.step()
    session.view_step(1)
    session.update(weight=session.settings.weight)
    assert len(session.branches) == 2 and session.viewing == 1
