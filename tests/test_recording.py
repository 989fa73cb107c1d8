"""Tests for core/recording.py and `qgf record`: same start, same noise, tiles, interruption."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from helpers import tiny_config

from core import recording as rec
from core.captions import DONE_COLOR, caption_height
from core.cli import main as qgf
from core.recording import (
    Recording,
    RecordSettings,
    parse_layers,
    record,
)
from core.video import VideoWriter

ENV = "cube-single-play-singletask-task2-v0"
W, H = 64, 48  # one panel's scene: tiny, the tests are about frames, not looks


@pytest.fixture(scope="module")
def nets() -> tuple[torch.nn.Module, torch.nn.Module]:
    from core.models import Critic, VelocityField

    torch.manual_seed(0)
    policy = VelocityField(28, 5, hidden=(64, 64)).eval().requires_grad_(False)
    critic = Critic(28, 5, hidden=(64, 64)).eval().requires_grad_(False)
    return policy, critic


def tiny(**changes) -> RecordSettings:
    base = dict(
        weights=[0.0],
        width=W,
        height=H,
        steps=2,
        candidates=2,
        max_steps=3,
        hold_s=0.0,
        fps=10,
    )
    return RecordSettings(**{**base, **changes})


def spy(video: VideoWriter, fail_at: int | None = None, error=KeyboardInterrupt) -> list:
    """Keep a copy of every frame written; raise ``error`` instead of writing frame ``fail_at``."""
    frames: list[np.ndarray] = []
    write = video.write

    def capture(frame: np.ndarray) -> None:
        if fail_at is not None and len(frames) == fail_at:
            raise error("stopped by the test")
        frames.append(frame.copy())
        write(frame)

    video.write = capture
    return frames


def panel(frame: np.ndarray, i: int, scene_only: bool = True) -> np.ndarray:
    """Panel ``i`` of a one-row tiled frame (gap 2); only the scene above the caption."""
    x = i * (W + 2)
    return frame[: H if scene_only else None, x : x + W]


# ------------------------------------------------------------------ fast: no env, no GL


def test_parse_layers() -> None:
    assert parse_layers("all") == rec.OverlayLayers()
    none = parse_layers("none")
    assert not any(getattr(none, name) for name in rec.LAYER_NAMES)
    some = parse_layers("denoise, executed")
    assert some.denoise and some.executed and not some.ghost and not some.final
    with pytest.raises(ValueError, match="bogus.*choose from"):
        parse_layers("denoise,bogus")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"weights": []}, "weight"),
        ({"weights": [float("nan")]}, "finite"),
        ({"estimators": ["qgf", "nope"]}, "unknown estimator 'nope'"),
        ({"episodes": 0}, "episodes"),
        ({"candidates": 0}, "candidates"),
        ({"max_steps": 0}, "max_steps"),
        ({"width": 8}, "panel size"),
        ({"camera": "back"}, "unknown camera"),
        ({"quality": "ultra"}, "quality"),
        ({"hold_s": -1}, "hold_s"),
        ({"path_scale": 0.0}, "path_scale"),
    ],
)
def test_bad_settings_are_named(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny(**changes).check()


def test_bad_path_or_setting_fails_before_any_env_or_frame(
    tmp_path: Path, nets, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_env(*args, **kwargs):
        raise AssertionError("an env was made before the inputs were checked")

    monkeypatch.setattr(rec, "make_env", no_env)
    policy, critic = nets
    with pytest.raises(ValueError, match="does not exist"):
        record(policy, critic, ENV, tmp_path / "missing" / "v.mp4", tiny())
    with pytest.raises(ValueError, match="extension"):
        record(policy, critic, ENV, tmp_path / "v.webm", tiny())
    with pytest.raises(ValueError, match="unknown estimator"):
        record(policy, critic, ENV, tmp_path / "v.mp4", tiny(estimators=["nope"]))
    with pytest.raises(ValueError, match="crf"):
        record(policy, critic, ENV, tmp_path / "v.mp4", tiny(crf=99))
    assert list(tmp_path.iterdir()) == []


def test_cli_bad_input_exits_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rec, "make_env", lambda *a, **k: pytest.fail("env made"))
    cases = [
        (["--out", str(tmp_path / "no" / "v.mp4")], "does not exist"),
        (["--out", str(tmp_path / "v.avi")], "extension"),
        (["--weights", "0,x"], "--weights"),
        (["--size", "64"], "--size"),
        (["--estimators", "qgf,nope"], "unknown estimator"),
        (["--layers", "ghost,bogus"], "unknown overlay layer"),
        (["--camera", "back"], "unknown camera"),
        (["--preset", "warp"], "preset"),
        (["--env", "cube-single-play-v9"], "not an OGBench"),
    ]
    for extra, message in cases:
        args = ["record", "--random-weights", "--out", str(tmp_path / "v.mp4"), *extra]
        assert qgf(args) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert qgf(["record", str(tmp_path / "no-checkpoint"), "--out", str(tmp_path / "v.mp4")]) == 2
    assert "not found" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ slow: envs and rendering


@pytest.mark.slow
def test_recording_reads_back_with_expected_frames_and_size(tmp_path: Path, nets) -> None:
    policy, critic = nets
    out = tmp_path / "grid.mp4"
    settings = tiny(weights=[0.0, 0.5], episodes=2, hold_s=0.2)  # 2 hold frames at 10 fps
    result = record(policy, critic, ENV, out, settings, progress=False)
    # Per episode: max_steps + 1 states shown, then the held end.
    assert result.frames == 2 * (3 + 1 + 2)
    height = H + caption_height(W)
    size = (2 * W + 2, height + height % 2)
    assert result.size == size
    frames = iio.imread(out)
    assert frames.shape == (result.frames, size[1], size[0], 3)
    assert [(e.episode, e.env_steps) for e in result.episodes] == [(0, 3), (0, 3), (1, 3), (1, 3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.mp4"]


@pytest.mark.slow
def test_tiles_identical_for_equal_weights_and_different_otherwise(tmp_path: Path, nets) -> None:
    policy, critic = nets
    settings = tiny(weights=[0.0, 30.0, 30.0], max_steps=4)
    video = VideoWriter(tmp_path / "t.mp4", settings.fps)
    with Recording(policy, critic, ENV, settings) as recording:
        frames = spy(video)
        result = recording.run(video, progress=False)
    assert len(frames) == 5
    # Same weight, same start, same noise: the same pixels, caption included.
    for f in frames:
        assert np.array_equal(panel(f, 1, scene_only=False), panel(f, 2, scene_only=False))
    # The first frame shows the same start state, but guided candidates are drawn elsewhere.
    assert any(not np.array_equal(panel(f, 0), panel(f, 1)) for f in frames)
    q = [e.q for e in result.episodes]
    assert q[1] == q[2] and q[0] != q[1]


@pytest.mark.slow
def test_a_panel_that_ends_early_holds_its_last_frame_marked_done(tmp_path: Path, nets) -> None:
    policy, critic = nets
    settings = tiny(weights=[0.0, 0.0], max_steps=5)
    video = VideoWriter(tmp_path / "early.mp4", settings.fps)
    with Recording(policy, critic, ENV, settings) as recording:
        env = recording.runs[1].env
        step = env.step
        calls = []

        def ends_after_two(action):
            obs, reward, terminated, truncated, info = step(action)
            calls.append(1)
            return obs, reward, terminated, len(calls) >= 2, info

        env.step = ends_after_two
        frames = spy(video)
        result = recording.run(video, progress=False)
    assert [e.env_steps for e in result.episodes] == [5, 2]
    held = [panel(f, 1, scene_only=False) for f in frames[2:]]
    assert all(np.array_equal(held[0], h) for h in held)
    assert (held[0][0, W // 2] == DONE_COLOR).all()  # the amber frame of an ended episode
    # The other panel goes on moving.
    assert not all(np.array_equal(panel(frames[2], 0), panel(f, 0)) for f in frames[3:])


@pytest.mark.slow
@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_interrupted_recording_leaves_no_corrupt_file(tmp_path: Path, nets, error) -> None:
    policy, critic = nets
    out = tmp_path / "cut.mp4"
    settings = tiny(max_steps=6)
    video = VideoWriter(out, settings.fps)
    with Recording(policy, critic, ENV, settings) as recording:
        spy(video, fail_at=3, error=error)
        with pytest.raises(error):
            recording.run(video, progress=False)
    assert not out.exists()
    assert video.kept == tmp_path / "cut.partial.mp4"
    assert iio.imread(video.kept).shape[0] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["cut.partial.mp4"]


@pytest.mark.slow
def test_cli_records_with_random_weights(tmp_path: Path) -> None:
    out = tmp_path / "cli.gif"
    args = ["record", "--random-weights", "--weights", "0,0.1", "--max-steps", "2"]
    args += ["--size", f"{W}x{H}", "--candidates", "2", "--steps", "2", "--hold", "0"]
    args += ["--quiet", "--out", str(out)]
    assert qgf(args) == 0
    frames = iio.imread(out)
    assert frames.shape[0] >= 2 and frames.shape[2] == 2 * W + 2


@pytest.mark.slow
def test_a_panel_replays_what_the_viewer_shows_for_the_same_seed(tmp_path: Path) -> None:
    session_mod = pytest.importorskip("viewer.session")
    session = session_mod.Session(
        settings=session_mod.Settings(env_name=ENV, weight=0.05, candidates=4, seed=3)
    )
    for _ in range(3):
        session.step()
    viewer_q = [r.q for r in session.history]
    viewer_actions = np.stack([r.action for r in session.history])
    session.close()

    settings = tiny(weights=[0.05], candidates=4, steps=10, seed=3, layers=parse_layers("none"))
    video = VideoWriter(tmp_path / "same.mp4", settings.fps)
    with Recording(session.policy, session.critic, ENV, settings) as recording:
        result = recording.run(video, progress=False)
    assert result.episodes[0].q == viewer_q
    assert np.array_equal(result.episodes[0].actions, viewer_actions)


def save_tiny_checkpoint(path: Path, horizon: int) -> Path:
    from core.checkpoints import DatasetSample, save_checkpoint

    config = tiny_config(env=ENV, horizon=horizon, hidden=[32, 32], flow_steps=3)
    torch.manual_seed(horizon)
    rng = np.random.default_rng(0)
    sample = DatasetSample(
        rng.normal(size=(300, 28)).astype(np.float32),
        rng.uniform(-1, 1, size=(300, 5)).astype(np.float32),
    )
    policy, critic = config.build_policy(), config.build_critic()
    return save_checkpoint(path, config, policy, critic, critic, sample)


@pytest.mark.slow
@pytest.mark.parametrize("horizon", [1, 2])
def test_cli_records_a_checkpoint(tmp_path: Path, horizon: int) -> None:
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", horizon)
    out = tmp_path / "ckpt.mp4"
    args = ["record", str(checkpoint), "--weights", "0,0.1", "--max-steps", "3"]
    args += ["--size", f"{W}x{H}", "--candidates", "2", "--hold", "0", "--quiet"]
    args += ["--out", str(out)]
    assert qgf(args) == 0
    height = H + caption_height(W)
    assert iio.imread(out).shape[:3] == (4, height + height % 2, 2 * W + 2)
