"""Tests for core/video.py: atomic writing, interruption policy, path checks, tiling, captions."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from core.captions import (
    DONE_COLOR,
    SUCCESS_COLOR,
    CaptionFields,
    caption_height,
    caption_strip,
    grid_shape,
    tile,
    with_caption,
)
from core.video import VideoPathError, VideoWriter, partial_path
from viewer.record import Recorder  # the viewer's start/stop recorder over VideoWriter


def frame(i: int, h: int = 48, w: int = 64) -> np.ndarray:
    """A frame whose brightness encodes ``i``, so frames are distinct and order shows."""
    f = np.zeros((h, w, 3), np.uint8)
    f[..., 0] = (20 * i) % 250
    f[: h // 2, : w // 2, 1] = 200
    return f


def files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


@pytest.mark.parametrize("ext", [".mp4", ".gif"])
def test_roundtrip_count_size_and_content(tmp_path: Path, ext: str) -> None:
    out = tmp_path / f"clip{ext}"
    with VideoWriter(out, fps=10) as video:
        for i in range(7):
            video.write(frame(i))
    assert video.path == out and video.kept == out
    back = iio.imread(out)
    assert back.shape == (7, 48, 64, 3)
    # Lossy codecs: compare brightness per frame, not bytes.
    means = back[..., 0].reshape(7, -1).mean(axis=1)
    assert np.allclose(means, [frame(i)[..., 0].mean() for i in range(7)], atol=4)
    assert files(tmp_path) == [out.name]


def test_mp4_odd_size_is_padded_to_even(tmp_path: Path) -> None:
    out = tmp_path / "odd.mp4"
    with VideoWriter(out) as video:
        for i in range(3):
            video.write(frame(i, 31, 45))
    assert video.size == (46, 32)
    assert iio.imread(out).shape == (3, 32, 46, 3)


def test_replaces_existing_file_only_when_complete(tmp_path: Path) -> None:
    out = tmp_path / "v.mp4"
    out.write_bytes(b"old")
    video = VideoWriter(out)
    video.write(frame(0))
    assert out.read_bytes() == b"old"
    video.close()
    assert iio.imread(out).shape[0] == 1


@pytest.mark.parametrize("ext", [".mp4", ".gif"])
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_interruption_keeps_a_playable_partial_and_never_the_final_name(
    tmp_path: Path, ext: str, error: type[BaseException]
) -> None:
    out = tmp_path / f"run{ext}"
    with pytest.raises(error), VideoWriter(out, fps=10) as video:
        for i in range(20):
            if i == 5:
                raise error("interrupted mid-recording")
            video.write(frame(i))
    assert not out.exists()
    assert video.kept == partial_path(out) == tmp_path / f"run.partial{ext}"
    assert iio.imread(video.kept).shape == (5, 48, 64, 3)
    assert files(tmp_path) == [video.kept.name]


def test_interruption_leaves_an_older_complete_file_alone(tmp_path: Path) -> None:
    out = tmp_path / "run.mp4"
    with VideoWriter(out) as video:
        video.write(frame(1))
    before = out.read_bytes()
    with pytest.raises(KeyboardInterrupt), VideoWriter(out) as video:
        video.write(frame(2))
        raise KeyboardInterrupt
    assert out.read_bytes() == before


def test_interruption_without_frames_or_without_keep_partial_leaves_nothing(
    tmp_path: Path,
) -> None:
    with pytest.raises(KeyboardInterrupt), VideoWriter(tmp_path / "a.mp4"):
        raise KeyboardInterrupt
    with pytest.raises(ValueError), VideoWriter(tmp_path / "b.mp4", keep_partial=False) as video:
        video.write(frame(0))
        raise ValueError("boom")
    assert video.kept is None
    assert files(tmp_path) == []


def test_encoder_dying_leaves_no_file(tmp_path: Path) -> None:
    out = tmp_path / "dead.mp4"
    video = VideoWriter(out)
    video.write(frame(0))
    video._encoder.proc.kill()  # the encoder crashes mid-recording
    video._encoder.proc.wait()
    with pytest.raises(RuntimeError):
        for i in range(200):  # the pipe breaks at once or at the latest on close
            video.write(frame(i))
        video.close()
    video.abort()
    assert files(tmp_path) == []


def test_closing_with_no_frames_raises_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="no frames"):
        VideoWriter(tmp_path / "empty.mp4").close()
    assert files(tmp_path) == []


def test_dropped_writer_cleans_its_temp_file(tmp_path: Path) -> None:
    video = VideoWriter(tmp_path / "dropped.mp4")
    video.write(frame(0))
    del video
    assert files(tmp_path) == []


@pytest.mark.parametrize(
    ("path", "kwargs", "message"),
    [
        ("missing/v.mp4", {}, "does not exist"),
        ("v.avi", {}, "extension must be one of"),
        ("v", {}, "extension must be one of"),
        ("adir.mp4", {}, "is a directory"),
        ("v.mp4", {"fps": 0}, "fps"),
        ("v.mp4", {"fps": "fast"}, "fps"),
        ("v.mp4", {"crf": 60}, "crf"),
        ("v.mp4", {"preset": "warp"}, "preset"),
    ],
)
def test_bad_path_or_option_fails_at_construction(
    tmp_path: Path, path: str, kwargs: dict, message: str
) -> None:
    (tmp_path / "adir.mp4").mkdir()
    with pytest.raises(VideoPathError, match=message):
        VideoWriter(tmp_path / path, **kwargs)
    assert files(tmp_path) == ["adir.mp4"]


def test_unwritable_directory_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(VideoPathError, match="not writable"):
        VideoWriter("/proc/v.mp4")
    if os.geteuid() == 0:
        return  # root writes through permission bits; /proc above covers the check
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(VideoPathError, match="not writable"):
            VideoWriter(ro / "v.gif")
    finally:
        ro.chmod(0o700)


def test_frame_checks(tmp_path: Path) -> None:
    with VideoWriter(tmp_path / "v.gif") as video:
        video.write(frame(0))
        with pytest.raises(ValueError, match="size changed"):
            video.write(frame(1, 50, 64))
        with pytest.raises(ValueError, match="uint8"):
            video.write(frame(1).astype(np.float32))


def test_grid_shape() -> None:
    assert grid_shape(1) == (1, 1)
    assert grid_shape(3) == (2, 2)
    assert grid_shape(3, cols=3) == (1, 3)
    assert grid_shape(5, cols=2) == (3, 2)
    assert grid_shape(2, cols=8) == (1, 2)
    with pytest.raises(ValueError):
        grid_shape(0)


def test_tile_places_panels_row_major_with_gaps() -> None:
    panels = [np.full((4, 6, 3), 10 * (i + 1), np.uint8) for i in range(3)]
    out = tile(panels, cols=2, gap=1, fill=(255, 0, 0))
    assert out.shape == (9, 13, 3)
    assert (out[:4, :6] == 10).all() and (out[:4, 7:] == 20).all() and (out[5:, :6] == 30).all()
    assert (out[4] == (255, 0, 0)).all() and (out[:, 6] == (255, 0, 0)).all()
    assert (out[5:, 7:] == (255, 0, 0)).all()  # the empty cell
    again = tile(panels, cols=2, gap=1, fill=(255, 0, 0), out=out)
    assert again is out
    with pytest.raises(ValueError, match="differ"):
        tile([panels[0], np.zeros((5, 6, 3), np.uint8)])


def test_caption_strip_shape_status_colours_and_text() -> None:
    base = CaptionFields("cube-single-play-singletask-task2-v0", "qgf", 0.02, 37, q=-12.5)
    strip = caption_strip(base, 320)
    assert strip.shape == (caption_height(320), 320, 3) and strip.dtype == np.uint8
    assert not (strip == strip[0, 0]).all()  # some text was drawn

    def has(img: np.ndarray, color: tuple[int, int, int]) -> bool:
        return bool((np.abs(img.astype(int) - color).sum(-1) < 30).any())

    ok = caption_strip(CaptionFields("e", "qgf", 0.02, 37, success=True, done=True), 320)
    ended = caption_strip(CaptionFields("e", "qgf", 0.02, 37, done=True), 320)
    assert has(ok, SUCCESS_COLOR) and not has(ok, DONE_COLOR)
    assert has(ended, DONE_COLOR) and not has(ended, SUCCESS_COLOR)
    assert not has(strip, SUCCESS_COLOR) and not has(strip, DONE_COLOR)
    other = caption_strip(CaptionFields(base.env, "qgf", 0.08, 37, q=-12.5), 320)
    assert not np.array_equal(strip, other)
    scaled = CaptionFields(base.env, "qgf", 0.02, 37, q=-12.5, path_scale=3.0)
    assert not np.array_equal(strip, caption_strip(scaled, 320))  # a scaled view says so
    # Long text is cut to fit rather than drawn past the edge.
    assert caption_strip(CaptionFields("x" * 200, "qgf" * 30, 1.0, 1), 120).shape[1] == 120


def test_with_caption_appends_below() -> None:
    f = frame(3)
    out = with_caption(f, CaptionFields("env", "none", 0.0, 0))
    assert out.shape == (48 + caption_height(64), 64, 3)
    assert np.array_equal(out[:48], f)


def test_recorder_start_add_stop(tmp_path: Path) -> None:
    rec = Recorder()
    assert not rec.is_recording
    with pytest.raises(VideoPathError):
        rec.start(tmp_path / "nope" / "x.mp4")
    assert not rec.is_recording
    path = rec.start(tmp_path / "r.mp4", fps=15, caption=True)
    assert rec.is_recording and rec.path == path
    with pytest.raises(RuntimeError, match="already recording"):
        rec.start(tmp_path / "s.mp4")
    for i in range(4):
        rec.add_frame(frame(i), CaptionFields("env", "qgf", 0.03, i, q=1.0))
    with pytest.raises(ValueError, match="caption fields"):
        rec.add_frame(frame(0))
    assert rec.frames == 4
    assert rec.stop() == path == rec.last_path
    assert not rec.is_recording
    rec.add_frame(frame(9), None)  # a frame arriving after stop is dropped
    back = iio.imread(path)
    height = 48 + caption_height(64)
    assert back.shape == (4, height + height % 2, 64, 3)


def test_recorder_without_caption_and_abort(tmp_path: Path) -> None:
    rec = Recorder()
    rec.start(tmp_path / "r.gif", caption=False)
    rec.add_frame(frame(0))
    rec.add_frame(frame(1))
    kept = rec.abort()
    assert kept == tmp_path / "r.partial.gif" and not rec.is_recording
    assert iio.imread(kept).shape == (2, 48, 64, 3)
    assert rec.abort() is None


def test_recorder_stop_from_another_thread_while_frames_arrive(tmp_path: Path) -> None:
    rec = Recorder()
    rec.start(tmp_path / "t.mp4", caption=False)
    running = threading.Event()
    errors: list[BaseException] = []

    def render_loop() -> None:
        try:
            for i in range(400):
                rec.add_frame(frame(i))
                running.set()
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    thread = threading.Thread(target=render_loop)
    thread.start()
    running.wait(5)
    path = rec.stop()
    thread.join(30)
    assert not errors
    n = iio.imread(path).shape[0]
    assert 1 <= n <= 400
