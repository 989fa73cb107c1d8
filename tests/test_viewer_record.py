"""viewer/record.py: the record button's recorder, driven through a FrameStream without a window."""

from __future__ import annotations

import time

import imageio.v3 as iio
import numpy as np
import pytest

from core.captions import caption_height
from core.render import RenderSettings
from core.video import VideoPathError
from viewer.record import SceneRecorder, caption_fields, default_path
from viewer.session import Session, Settings

pytestmark = pytest.mark.slow

ENV = "cube-single-play-singletask-task2-v0"
W, H = 160, 120


@pytest.fixture(scope="module")
def stream():
    from viewer.frames import FrameStream

    session = Session(settings=Settings(env_name=ENV, weight=0.05, steps=3, candidates=3))
    s = FrameStream(session.frame, RenderSettings(W, H))
    s.session = session
    assert s.wait_frame(0, 60)
    yield s
    s.close()
    session.close()


def record_steps(stream, rec: SceneRecorder, n: int) -> None:
    """Step the session ``n`` times, waiting for each new state's frame to be rendered."""
    session = stream.session
    for _ in range(n):
        session.step()
        stream.wake()
        end = time.monotonic() + 60
        while stream._shown_version != session.version:
            assert time.monotonic() < end, "frame of the new state not rendered"
            time.sleep(0.01)


def test_records_rendered_frames_to_mp4(stream, tmp_path):
    rec = SceneRecorder(stream)
    seen: list[np.ndarray] = []
    stream.frame_hooks.append(lambda rgb, spec: seen.append(rgb.copy()) if rec.is_recording else 0)
    try:
        path = rec.start(tmp_path / "sub" / "clip.mp4", caption=False)
        assert path == (tmp_path / "sub" / "clip.mp4").resolve() and rec.is_recording
        record_steps(stream, rec, 6)
        n = rec.frame_count
        out = rec.stop()
    finally:
        stream.frame_hooks.clear()
    assert out == path and out.exists() and not rec.is_recording
    assert rec._hook not in stream.frame_hooks
    assert n >= 6
    video = iio.imread(out)
    assert video.shape == (n, H, W, 3)
    # The file holds the scene the view shows (lossy H.264: close, not equal).
    assert abs(video[-1].astype(float).mean() - seen[-1].astype(float).mean()) < 6
    assert video[-1].std() > 5


def test_records_gif_with_caption_strip(stream, tmp_path):
    rec = SceneRecorder(stream)
    rec.start(tmp_path / "clip.gif", caption=True)
    record_steps(stream, rec, 3)
    n = rec.frame_count
    out = rec.stop()
    frames = iio.imread(out, index=None)
    assert frames.shape[0] == n >= 3
    assert frames.shape[1:3] == (H + caption_height(W), W)
    spec = stream.session.frame()
    fields = caption_fields(spec)
    assert fields.env == ENV and fields.step == spec.record.index and fields.q is not None


def test_bad_path_starts_nothing_and_write_failure_keeps_rendering(stream, tmp_path):
    rec = SceneRecorder(stream)
    with pytest.raises(VideoPathError):
        rec.start(tmp_path / "clip.avi")
    assert not rec.is_recording and rec._hook not in stream.frame_hooks
    errors: list[str] = []
    rec = SceneRecorder(stream, on_error=errors.append)
    rec.start(tmp_path / "bad.mp4", caption=False)
    rec.recorder.add_frame = lambda *a: 1 / 0  # the encoder breaks mid-recording
    frames = stream.stats.frames
    stream.request()
    assert stream.wait_frame(frames, 30)
    assert errors and "ZeroDivisionError" in errors[0] and not rec.is_recording
    assert not (tmp_path / "bad.mp4").exists()
    frames = stream.stats.frames
    stream.request()
    assert stream.wait_frame(frames, 30)  # the render thread goes on


def test_default_path():
    p = default_path(ENV, "gif")
    assert p.parent.name == "recordings" and p.name.startswith(ENV) and p.suffix == ".gif"
    with pytest.raises(ValueError):
        default_path(ENV, "avi")
