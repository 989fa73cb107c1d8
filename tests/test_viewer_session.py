"""viewer/session.py (and its threads, viewer/worker.py, viewer/frames.py), with no window."""

from __future__ import annotations

import time

import mujoco
import numpy as np
import pytest
import torch
from helpers import tiny_config

from core import envs
from core.guidance import ESTIMATORS, guided_sample
from core.models import Critic, VelocityField
from core.render import RenderSettings
from core.step import step_noise
from viewer.session import (
    RANDOM_LABEL,
    Session,
    Settings,
)

pytestmark = pytest.mark.slow

ENV = "cube-single-play-singletask-task2-v0"
BASE = Settings(env_name=ENV, weight=0.05, steps=5, candidates=4, seed=0)


@pytest.fixture(scope="module")
def shared() -> Session:
    s = Session(settings=BASE)
    yield s
    s.close()


@pytest.fixture()
def session(shared: Session) -> Session:
    """The module's session, back at the base settings and a fresh episode."""
    shared.settings = BASE
    shared.reset()
    return shared


def test_opens_with_random_weights_labelled(session):
    assert session.label == RANDOM_LABEL and session.config is None
    rec = session.current
    assert rec.index == 0 and not rec.executed
    assert rec.obs.shape == (28,)
    assert session.frame().record is rec


def test_sample_shapes_and_shared_noise(session):
    sample = session.current.sample
    t, n, h = BASE.steps, BASE.candidates, session.horizon
    assert sample.guided.a_t.shape == (t + 1, n, 5 * h)
    assert sample.ee_denoise.shape == (t, n, h, 3)
    assert sample.ee_final.shape == sample.ee_ghost.shape == (n, h, 3)
    assert sample.gripper.shape == (n, h)
    # Guided and ghost start from the same noise, drawn from (seed, step) by the recorder's
    # convention, so a recording with the same seed draws the same candidates.
    assert torch.equal(sample.guided.a_t[0], sample.unguided.a_t[0])
    expected = step_noise(0, 0, n, 5 * h)
    assert torch.equal(sample.noise, expected)
    assert np.allclose(sample.origin, envs.effector_state(session.env)[0])


def test_ghost_is_exactly_unguided_sampling(session):
    rec = session.current
    obs = torch.as_tensor(rec.obs, dtype=torch.float32)[None]
    plain = guided_sample(
        session.policy,
        session.critic,
        obs,
        estimator="none",
        weight=0.0,
        steps=BASE.steps,
        noise=rec.sample.noise,
        best_of=BASE.candidates,
    )
    assert torch.equal(rec.sample.unguided.final, plain.final)


def test_targets_use_the_env_mapping(session):
    sample = session.current.sample
    n, h = BASE.candidates, session.horizon
    final = sample.guided.final.numpy().reshape(n, h, 5)
    expected = envs.action_to_ee_targets(session.env, final)
    assert np.allclose(sample.ee_final, expected.xyz, atol=1e-6)
    assert np.allclose(sample.gripper, expected.gripper, atol=1e-6)


def test_weight_change_resamples_same_noise_new_candidates(session):
    before = session.current.sample
    version = session.version
    session.update(weight=2.0)
    after = session.current.sample
    assert session.version > version
    assert torch.equal(before.noise, after.noise)
    assert torch.equal(before.unguided.final, after.unguided.final)
    assert not np.allclose(before.ee_final, after.ee_final)
    assert session.frame().overlay.final is after.ee_final or np.allclose(
        session.frame().overlay.final, after.ee_final
    )


def test_weight_zero_guided_equals_ghost(session):
    session.update(weight=0.0)
    sample = session.current.sample
    assert torch.equal(sample.guided.final, sample.unguided.final)


def test_step_records_and_advances(session):
    first = session.current
    rec = session.step()
    assert rec.executed and rec.index == 0
    assert rec.action.shape == (5,)
    assert np.allclose(rec.action, first.sample.chunk[0])
    assert rec.reward is not None and rec.success is not None
    assert session.history == [rec]
    assert session.current.index == 1
    assert not np.array_equal(session.current.obs, first.obs)
    curves = session.episode_curves()
    assert curves["q"].tolist() == [rec.q] and curves["v"].tolist() == [rec.v]


def test_snapshot_restores_the_recorded_state(session):
    for _ in range(3):
        session.step()
    rec = session.history[1]
    obs = envs.restore(session.env, rec.snapshot)
    assert np.allclose(obs, rec.obs)
    replay, *_ = session.env.step(rec.action)
    assert np.allclose(replay, session.history[2].obs)


def test_reset_with_same_seed_repeats_the_episode(session):
    a = session.reset(seed=3)
    for _ in range(2):
        session.step()
    obs_a = session.current.obs.copy()
    b = session.reset(seed=3)
    assert np.array_equal(a.obs, b.obs)
    for _ in range(2):
        session.step()
    assert np.array_equal(session.current.obs, obs_a)
    assert session.history[0].index == 0 and session.step_index == 2


def test_best_of_executes_argmax_q(session):
    session.update(pick_best=True)
    sample = session.current.sample
    assert sample.executed == int(sample.guided.q_final.argmax())
    session.update(pick_best=False)
    assert session.current.sample.executed == 0


def test_every_registered_estimator(session):
    for name in ESTIMATORS:
        session.update(estimator=name)
        sample = session.current.sample
        assert sample.guided.estimator == name
        assert np.isfinite(sample.ee_final).all()


def test_bad_settings_are_refused_and_nothing_changes(session):
    before = session.settings
    for bad in ({"steps": 0}, {"candidates": 0}, {"estimator": "nope"}, {"weight": -1.0}):
        with pytest.raises(ValueError):
            session.update(**bad)
        assert session.settings == before
    with pytest.raises(ValueError, match="unknown settings"):
        session.update(colour="red")


def test_chunked_networks_execute_open_loop(session):
    torch.manual_seed(0)
    policy = VelocityField(28, 5, hidden=(64, 64), horizon=3)
    critic = Critic(28, 15, hidden=(64, 64))
    session.use_networks(policy, critic)
    try:
        first = session.current
        assert first.sample.ee_final.shape == (BASE.candidates, 3, 3)
        r0, r1 = session.step(), session.step()
        assert r1.sample is r0.sample and (r0.chunk_step, r1.chunk_step) == (0, 1)
        assert np.allclose(r1.action, first.sample.chunk[1])
        r2 = session.step()
        assert r2.chunk_step == 2
        assert session.current.sample is not r0.sample  # a new chunk at step 3
        # A weight change resamples from here: a new chunk starts at the current step.
        session.step()
        session.update(weight=0.2)
        assert session.current.chunk_step == 0
        with pytest.raises(ValueError, match="dims"):
            session.use_networks(VelocityField(30, 5, hidden=(8,)), Critic(30, 5, hidden=(8,)))
    finally:
        session.use_random_weights()
    assert session.label == RANDOM_LABEL


def test_task_and_env_switch():
    s = Session(settings=BASE)
    try:
        s.step()
        s.set_env("cube-single-play-singletask-task3-v0")
        assert s.settings.env_name.endswith("task3-v0")
        assert s.step_index == 0 and s.current.obs.shape == (28,)
        s.set_env("cube-double-play-singletask-task1-v0")
        assert s.current.obs.shape == (37,) and s.policy.obs_dim == 37
        frame = s.frame()
        assert frame.physics.shape == (
            mujoco.mj_stateSize(frame.model, mujoco.mjtState.mjSTATE_INTEGRATION),
        )
        with pytest.raises(ValueError):
            s.set_env("cube-single-play-singletask-task99-v0")
        assert s.settings.env_name == "cube-double-play-singletask-task1-v0"
    finally:
        s.close()


def _tiny_checkpoint(path, env: str, obs_dim: int):
    from core.checkpoints import DatasetSample, save_checkpoint

    config = tiny_config(
        env=env,
        dataset=envs.parse_name(env).dataset_name,
        task=envs.parse_name(env).task_id,
        obs_dim=obs_dim,
        hidden=[32, 32],
        flow_steps=10,
    )
    policy, critic = config.build_policy(), config.build_critic()
    sample = DatasetSample(np.zeros((4, obs_dim), np.float32), np.zeros((4, 5), np.float32))
    return save_checkpoint(path, config, policy, critic, critic, sample)


def test_checkpoint_open_and_mismatch(session, tmp_path):
    good = _tiny_checkpoint(tmp_path / "good", ENV, 28)
    bad = _tiny_checkpoint(tmp_path / "bad", "cube-double-play-singletask-task1-v0", 37)
    try:
        session.load_checkpoint(good)
        assert session.label == "good" and session.config.env == ENV
        assert session.current.index == 0
        session.step()
        # A checkpoint for another env is refused when forced onto this one ...
        with pytest.raises(Exception, match="37"):
            Session(bad, settings=BASE, env_name=ENV)
        # ... and a task switch to an env it does not fit is refused, nothing changed.
        with pytest.raises(Exception, match="37|28"):
            session.set_env("cube-double-play-singletask-task1-v0")
        assert session.settings.env_name == ENV and session.label == "good"
        with pytest.raises(Exception):  # noqa: B017 (any CheckpointError or OSError)
            session.load_checkpoint(tmp_path / "missing")
        assert session.label == "good"
    finally:
        session.use_random_weights()


# --- the worker thread ------------------------------------------------------------------


def test_worker_coalesces_and_survives_errors(session):
    from viewer.worker import Worker

    errors = []
    w = Worker(session, on_error=errors.append)
    try:
        block = []
        w.submit("hold", lambda s: block.append(time.sleep(0.3)))
        ran = []
        for i in range(5):
            w.submit("sample", lambda s, i=i: ran.append(i))
        assert w.wait_idle(30)
        assert ran == [4]  # only the newest of a key runs
        w.submit("boom", lambda s: 1 / 0)
        w.submit("after", lambda s: ran.append("after"))
        assert w.wait_idle(30)
        assert ran[-1] == "after"
        assert errors and "ZeroDivisionError" in errors[0].message and errors[0].what == "boom"
    finally:
        w.close()


def test_worker_plays_and_pauses(session):
    from viewer.worker import Worker

    w = Worker(session)
    try:
        w.set_speed(0)
        w.play()
        end = time.monotonic() + 60
        while session.step_index < 3 and time.monotonic() < end:
            time.sleep(0.02)
        w.pause()
        assert w.wait_idle(30)
        steps = session.step_index
        assert steps >= 3
        time.sleep(0.2)
        assert session.step_index == steps
    finally:
        w.close()


def test_worker_counts_the_episodes_play_ran_to_their_end():
    from viewer.worker import Worker

    class Episode:
        """Three steps, then done (all the worker asks of a session)."""

        def __init__(self) -> None:
            self.steps = 0

        @property
        def done(self) -> bool:
            return self.steps >= 3

        def step(self) -> None:
            self.steps += 1

    episode = Episode()
    w = Worker(episode)
    try:
        w.set_speed(0)
        w.play()
        end = time.monotonic() + 30
        while w.playing and time.monotonic() < end:
            time.sleep(0.01)
        assert w.wait_idle(30)
        # Play stops where the episode ended and says so (the viewer's loop moves on then).
        assert not w.playing and episode.steps == 3 and w.episodes_ended == 1
        w.submit("reset", lambda e: setattr(e, "steps", 0))
        w.play()
        end = time.monotonic() + 30
        while w.episodes_ended < 2 and time.monotonic() < end:
            time.sleep(0.01)
        assert w.episodes_ended == 2
    finally:
        w.close()


# --- the render thread ------------------------------------------------------------------


def test_frame_stream_renders_new_states_and_calls_hooks(session):
    from viewer.frames import FrameStream

    stream = FrameStream(session.frame, RenderSettings(160, 120))
    seen = []
    stream.frame_hooks.append(lambda rgb, spec: seen.append((rgb.dtype, rgb.shape, spec.version)))
    try:
        assert stream.wait_frame(0, 60)
        out = np.zeros((120, 160, 3), np.float32)
        spec = stream.take(out)
        assert spec is not None and spec.version == session.version
        assert out.min() >= 0.0 and out.max() <= 1.0 and out.std() > 0.01
        assert stream.take(out) is None  # nothing new
        frames = stream.stats.frames
        session.step()
        assert stream.wait_frame(frames, 60)
        assert stream.take(out).version == session.version
        assert seen[-1] == (np.uint8, (120, 160, 3), session.version)
        stream.configure(width=200, height=100)
        frames = stream.stats.frames
        assert stream.wait_frame(frames, 60)
        assert stream.latest_shape() == (100, 200, 3)
        assert stream.take(out) is None  # a buffer of the old size is not written
        assert stream.take(np.zeros((100, 200, 3), np.float32)) is not None
    finally:
        stream.close()


def test_weight_change_reuses_the_unguided_candidates(session):
    before = session.current.sample
    session.update(weight=0.5)
    after = session.current.sample
    assert after.unguided is before.unguided  # not sampled again: same state, seed, T, N
    assert np.array_equal(after.q_denoise_ghost, before.q_denoise_ghost)
    session.update(steps=BASE.steps + 1)
    assert session.current.sample.unguided.steps == BASE.steps + 1
    # Q along denoising is Q(s, a_hat) then Q(s, final), for guided and unguided alike.
    sample = session.current.sample
    obs = torch.as_tensor(session.current.obs, dtype=torch.float32)[None]
    q_final = session.critic(obs.expand(BASE.candidates, -1), sample.guided.final)
    assert np.allclose(sample.q_denoise[-1], q_final.numpy(), atol=1e-5)
    assert np.allclose(sample.q_denoise[-1], sample.guided.q_final.numpy(), atol=1e-5)
    q_hat0 = session.critic(obs.expand(BASE.candidates, -1), sample.unguided.a_hat[0])
    assert np.allclose(sample.q_denoise_ghost[0], q_hat0.numpy(), atol=1e-5)


def test_q_along_denoising_is_at_a_hat_for_every_estimator(session):
    obs = torch.as_tensor(session.current.obs, dtype=torch.float32)[None]
    for name in ("qgf", "ood", "qgf_chain"):
        session.update(estimator=name)
        sample = session.current.sample
        expected = session.critic(
            obs.expand(BASE.steps * BASE.candidates, -1),
            sample.guided.a_hat.reshape(-1, sample.guided.a_hat.shape[-1]),
        ).reshape(BASE.steps, BASE.candidates)
        assert np.allclose(sample.q_denoise[:-1], expected.numpy(), atol=1e-5), name


def test_sample_hooks_flag_candidates_before_they_are_shown(session):
    def flag_first(s, sample, obs):
        assert obs.shape == (28,)
        sample.off_manifold = np.arange(sample.ee_final.shape[0]) == 0

    session.sample_hooks.append(flag_first)
    try:
        session.update(weight=0.2)
        overlay = session.frame().overlay
        assert overlay.off_manifold.tolist() == [True] + [False] * (BASE.candidates - 1)
        session.step()
        assert session.frame().overlay.off_manifold[0]
    finally:
        session.sample_hooks.clear()


def _count_calls(session: Session) -> dict[str, int]:
    """Count every forward of the policy and critic and every env step from now on."""
    calls = {"policy": 0, "critic": 0, "env": 0}

    def hook(name):
        def count(*_):
            calls[name] += 1

        return count

    session.policy.register_forward_hook(hook("policy"))
    session.critic.register_forward_hook(hook("critic"))
    env_step = session.env.step

    def step(action):
        calls["env"] += 1
        return env_step(action)

    session.env.step = step
    return calls


def test_timeline_scrub_shows_the_record_without_running_anything(session):
    recorded = []
    for _ in range(4):
        rec = session.step()
        recorded.append(
            (rec.obs.copy(), rec.snapshot.physics.copy(), rec.sample.guided.a_t.clone())
        )
    current = session.current
    calls = _count_calls(session)
    try:
        for i in (2, 0, 3, 1):
            version = session.version
            shown = session.view_step(i)
            assert shown is session.history[i] is session.viewed and session.viewing == i
            obs, physics, a_t = recorded[i]
            assert np.array_equal(shown.obs, obs)
            assert torch.equal(shown.sample.guided.a_t, a_t)
            spec = session.frame()
            assert spec.version > version and spec.record is shown
            assert np.array_equal(spec.physics, physics)
            assert np.array_equal(spec.overlay.final, shown.sample.ee_final)
            assert spec.overlay.executed == shown.sample.executed
        # The current step is still there, untouched; its index means live again.
        assert session.current is current and session.step_index == 4
        assert session.view_step(4) is current and session.viewing is None
        session.view_step(-3)
        assert session.viewing == 0
        assert session.view_step(99) is current and session.viewing is None
        session.view_step(1)
        assert session.live() is current and session.frame().record is current
        assert calls == {"policy": 0, "critic": 0, "env": 0}
        # Stepping (as play does) while scrubbing goes back to live.
        session.view_step(2)
        rec = session.step()
        assert rec.index == 4 and session.viewing is None
        assert session.frame().record is session.current
        assert calls["env"] == 1 and calls["policy"] > 0
        session.view_step(0)
        session.reset()
        assert session.viewing is None and session.frame().record is session.current
    finally:
        del session.env.step
        for net in (session.policy, session.critic):
            net._forward_hooks.clear()


def test_timeline_memory_per_step_is_bounded(session):
    # Default settings' sample size (T=10, N=8): the figure in viewer/session.py's docstring.
    session.update(steps=10, candidates=8)
    steps = 20
    for _ in range(steps):
        session.step()
    total = session.timeline_nbytes()
    per_step = total / (steps + 1)
    rec = session.history[0]
    trace = rec.sample.guided
    # Counts at least the state, the observation and the guided iterates of every step ...
    floor = rec.snapshot.physics.nbytes + rec.obs.nbytes + trace.a_t.numel() * 4
    assert per_step > floor
    # ... and stays within the bound stated in the docstring (measured: about 19 KB).
    assert per_step < 32_000
    # Shared arrays count once: the same records listed twice add nothing.
    from viewer.session import _nbytes

    assert _nbytes([*session.history, *session.history, session.current], set()) == total


def test_the_gui_view_is_a_snapshot_made_per_change(session):
    session.reset()
    session.step()
    view = session.frame().view
    assert view.version == session.version and view.live_step == 1
    assert view.settings == session.settings and view.sampled == session.current.sample.settings
    curves = {k: v.copy() for k, v in view.curves.items()}
    session.step()
    # The worker went on; what the GUI holds is unchanged.
    assert view.live_step == 1 and all(np.array_equal(curves[k], view.curves[k]) for k in curves)
    now = session.frame().view
    assert now.live_step == 2 and len(now.curves["step"]) == 2
    assert [b.label for b in now.branches] == ["main"] and now.active == 0
