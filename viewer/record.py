"""Record what the scene view shows: the viewer's record button, without the window.

``SceneRecorder`` hooks ``FrameStream.frame_hooks`` only while recording, so it costs nothing
on the render thread otherwise. The hook receives the uint8 frame the scene texture is made
from (overlays included, before the float conversion) and hands it to ``Recorder``,
which writes it to an MP4 (H.264) or GIF file atomically, with the caption strip below when
asked. Frames are recorded as they are rendered: the scene renders when something visible
changes, so a paused, untouched view adds no frames.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

from core.captions import CaptionFields, with_caption
from core.video import DEFAULT_CRF, DEFAULT_PRESET, VIDEO_FORMATS, VideoWriter
from viewer.frames import FrameStream
from viewer.session import FrameSpec

RECORD_DIR = "recordings"
RECORD_FPS = 20.0


def default_path(env_name: str, fmt: str = "mp4", directory: str | Path = RECORD_DIR) -> Path:
    """``<directory>/<env>-<YYYYmmdd-HHMMSS>.<fmt>`` relative to the working directory."""
    if f".{fmt}" not in VIDEO_FORMATS:
        raise ValueError(f"unknown video format {fmt!r}; choose one of mp4, gif")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(directory) / f"{env_name}-{stamp}.{fmt}"


def caption_fields(spec: FrameSpec, path_scale: float = 1.0) -> CaptionFields:
    """The caption of one shown frame: env, estimator, weight, step, Q and success of the
    step record it shows (blank fields before the first step exists)."""
    rec = spec.record
    if rec is None:
        return CaptionFields(env="", estimator="", weight=0.0, step=0, path_scale=path_scale)
    s = rec.settings
    done = bool(rec.terminated) or bool(rec.truncated)
    return CaptionFields(
        env=s.env_name,
        estimator=s.estimator,
        weight=float(s.weight),
        step=int(rec.index),
        q=float(rec.sample.q_executed),
        success=bool(rec.success),
        done=done,
        path_scale=path_scale,
    )


class SceneRecorder:
    """Start/stop recording of a ``FrameStream``'s frames.

    Args:
        frames: the stream whose rendered frames are recorded.
        on_error: called (on the render thread) with a message when writing a frame fails;
            the recording is then aborted (``VideoWriter``'s partial-file policy) and the
            render thread goes on.
    """

    def __init__(self, frames: FrameStream, on_error: Callable[[str], None] | None = None) -> None:
        self.frames = frames
        self.on_error = on_error
        self.recorder = Recorder()
        self.failed: str | None = None
        self._lock = threading.Lock()

    @property
    def is_recording(self) -> bool:
        return self.recorder.is_recording

    @property
    def frame_count(self) -> int:
        return self.recorder.frames

    @property
    def elapsed(self) -> float:
        return self.recorder.elapsed

    @property
    def path(self) -> Path | None:
        return self.recorder.path

    def start(self, path: str | Path, fps: float = RECORD_FPS, caption: bool = True) -> Path:
        """Begin recording to ``path`` (``.mp4`` or ``.gif``; its directory is created).

        Returns the absolute final path. Raises ``core.video.VideoPathError`` for a bad path
        and ``RuntimeError`` when already recording; nothing is started then.
        """
        with self._lock:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            final = self.recorder.start(path, fps=fps, caption=caption)
            self.failed = None
            self.frames.frame_hooks.append(self._hook)
            # The view as it is now is the first frame, even if nothing moves afterwards.
            self.frames.request()
            return final

    def stop(self) -> Path:
        """Finish the file and return its path."""
        with self._lock:
            self._unhook()
            return self.recorder.stop()

    def abort(self) -> Path | None:
        """Stop without completing (the partial file kept, if any)."""
        with self._lock:
            self._unhook()
            return self.recorder.abort()

    def _unhook(self) -> None:
        if self._hook in self.frames.frame_hooks:
            self.frames.frame_hooks.remove(self._hook)

    def _hook(self, rgb: np.ndarray, spec: FrameSpec) -> None:
        # Runs on the render thread. A failure must not stop the scene from being shown.
        try:
            caption = caption_fields(spec, self.frames.path_scale)
            self.recorder.add_frame(rgb, caption)
        except Exception as e:
            traceback.print_exc()
            self.failed = f"recording: {type(e).__name__}: {e}"
            if self._hook in self.frames.frame_hooks:
                self.frames.frame_hooks.remove(self._hook)
            try:
                self.recorder.abort()
            except Exception:
                traceback.print_exc()
            if self.on_error is not None:
                self.on_error(self.failed)


class Recorder:
    """Record frames as they are shown, with start and stop driven by a GUI.

    The viewer's record button uses it::

        rec = Recorder()
        rec.start("run.mp4", fps=20, caption=True)   # checks the path now (VideoPathError)
        ...
        rec.add_frame(rgb, CaptionFields(env, "qgf", 0.03, step, q, success))  # per shown frame
        ...
        path = rec.stop()          # the finished file; rec.last_path keeps it for the status bar

    ``is_recording`` drives the red indicator. ``add_frame`` may be called from the render
    thread while ``stop``/``abort`` come from the GUI thread: a lock orders them, and a frame
    that arrives after ``stop`` is ignored. ``abort()`` (e.g. from an error handler) follows
    ``VideoWriter``'s interruption policy. Frames are ``[H, W, 3]`` uint8 RGB, exactly what the
    scene view shows; with ``caption=True`` the strip is appended below each frame.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._writer: VideoWriter | None = None
        self._caption = True
        self._started = 0.0
        self.last_path: Path | None = None

    @property
    def is_recording(self) -> bool:
        return self._writer is not None

    @property
    def path(self) -> Path | None:
        """The file being recorded (final name), or None."""
        writer = self._writer
        return writer.path if writer is not None else None

    @property
    def frames(self) -> int:
        writer = self._writer
        return writer.frames if writer is not None else 0

    @property
    def elapsed(self) -> float:
        """Seconds since ``start`` (0 when not recording)."""
        return time.perf_counter() - self._started if self._writer is not None else 0.0

    def start(
        self,
        path: str | os.PathLike[str],
        fps: float = 20.0,
        caption: bool = True,
        *,
        crf: int = DEFAULT_CRF,
        preset: str = DEFAULT_PRESET,
    ) -> Path:
        """Begin recording to ``path`` (``.mp4`` or ``.gif``); returns its absolute path.

        Raises:
            RuntimeError: already recording.
            VideoPathError: bad path or option (nothing is started).
        """
        with self._lock:
            if self._writer is not None:
                raise RuntimeError(f"already recording to {str(self._writer.path)!r}")
            self._writer = VideoWriter(path, fps, crf=crf, preset=preset)
            self._caption = caption
            self._started = time.perf_counter()
            return self._writer.path

    def add_frame(self, rgb: np.ndarray, caption: CaptionFields | None = None) -> None:
        """Append the frame shown now, ``[H, W, 3]`` uint8; ``caption`` needed when captioning."""
        with self._lock:
            if self._writer is None:
                return
            if self._caption:
                if caption is None:
                    raise ValueError("recording with caption=True needs caption fields per frame")
                rgb = with_caption(rgb, caption)
            self._writer.write(rgb)

    def stop(self) -> Path:
        """Finish the file; returns its path (also in ``last_path``)."""
        with self._lock:
            if self._writer is None:
                raise RuntimeError("not recording")
            writer, self._writer = self._writer, None
            self.last_path = writer.close()
            return self.last_path

    def abort(self) -> Path | None:
        """Stop without completing: returns the ``.partial`` file kept, if any."""
        with self._lock:
            if self._writer is None:
                return None
            writer, self._writer = self._writer, None
            self.last_path = writer.abort()
            return self.last_path
