"""Video files written atomically.

``VideoWriter`` encodes RGB frames to MP4 (H.264 by the ffmpeg that imageio-ffmpeg ships,
yuv420p) or to GIF (Pillow), chosen by the file's extension. Frames go to a hidden temporary
file in the destination directory; only a complete, finalised file is renamed to the final
name, so a file under that name is always a whole recording.

Interruption policy (an exception or Ctrl-C inside ``with VideoWriter(...)``, or ``abort()``):
the container is finalised with the frames recorded so far and kept as
``<stem>.partial<ext>`` next to the final name (``run.mp4`` -> ``run.partial.mp4``); the final
name is not touched, so an older complete file there survives. If nothing was recorded, or
the partial file could not be finalised (the encoder died, a second Ctrl-C), nothing is kept.
``keep_partial=False`` keeps nothing at all. ffmpeg runs in its own process group, so the
Ctrl-C that reaches Python does not kill it before it can finalise. A process killed outright
(SIGKILL, power loss) can leave the hidden temporary file ``.<name>.<random>.tmp<ext>``
behind, never a file under the final name.

Everything that can be checked about the output (extension, directory, permission, options)
is checked when the writer is constructed, before a caller renders any frame.

Panel tiling and caption strips are in ``core.captions``; the viewer's start/stop
``Recorder`` is in ``viewer.record``.

Frame layout everywhere: ``[H, W, 3]`` uint8 RGB, row 0 at the top.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import subprocess
import tempfile
import weakref
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from types import TracebackType

import numpy as np

from core.files import OutputError, check_output_dir, write_failure

VIDEO_FORMATS = {".mp4": "mp4", ".gif": "gif"}
PARTIAL_TAG = ".partial"
X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)
# veryfast keeps encoding well ahead of software rendering on a 2-core machine; crf 20 keeps
# the one-pixel overlay lines sharp.
DEFAULT_PRESET = "veryfast"
DEFAULT_CRF = 20
# How long to let ffmpeg finish writing the container before giving up on it.
_FINALISE_TIMEOUT_S = 120.0


class VideoPathError(ValueError):
    """The output path or an option cannot produce a video; raised before any frame."""


# ---------------------------------------------------------------------------------------------
# Paths and options


def video_format(path: str | os.PathLike[str]) -> str:
    """``"mp4"`` or ``"gif"`` from the extension; anything else raises ``VideoPathError``."""
    ext = Path(path).suffix.lower()
    if ext not in VIDEO_FORMATS:
        known = ", ".join(VIDEO_FORMATS)
        raise VideoPathError(f"cannot write video {str(path)!r}: extension must be one of {known}")
    return VIDEO_FORMATS[ext]


def partial_path(path: str | os.PathLike[str]) -> Path:
    """Where an interrupted recording of ``path`` is kept: ``run.mp4`` -> ``run.partial.mp4``."""
    p = Path(path)
    return p.with_name(p.stem + PARTIAL_TAG + p.suffix)


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """Check that a video can be written at ``path``, without writing it.

    Checks the extension, that the directory exists and is writable (``check_output_dir``'s
    one-byte probe file, which also catches read-only mounts and a full disk), and that ``path`` is
    not a directory. An existing file at ``path`` is fine: it is replaced, atomically, only
    when the new recording is complete.

    Returns:
        The absolute path.

    Raises:
        VideoPathError: with a message naming what is wrong.
    """
    p = Path(path).expanduser()
    video_format(p)
    p = p.absolute()
    parent = p.parent
    if not parent.exists():
        raise VideoPathError(
            f"cannot write video {str(p)!r}: directory {str(parent)!r} does not exist"
        )
    if not parent.is_dir():
        raise VideoPathError(f"cannot write video {str(p)!r}: {str(parent)!r} is not a directory")
    if p.is_dir():
        raise VideoPathError(f"cannot write video {str(p)!r}: it is a directory")
    try:
        check_output_dir(parent)
    except OutputError as err:
        reason = os.strerror(err.errno).lower() if err.errno else str(err)
        raise VideoPathError(
            f"cannot write video {str(p)!r}: directory {str(parent)!r} is not writable ({reason})"
        ) from None
    return p


def _check_fps(fps: float) -> Fraction:
    try:
        rate = Fraction(fps).limit_denominator(1001)
    except (TypeError, ValueError):
        raise VideoPathError(f"fps must be a positive number, got {fps!r}") from None
    if not 0 < rate <= 1000:
        raise VideoPathError(f"fps must be in (0, 1000], got {fps!r}")
    return rate


@lru_cache(maxsize=1)
def _ffmpeg_with_x264() -> str:
    """The ffmpeg executable, checked once to have libx264."""
    import imageio_ffmpeg

    exe = imageio_ffmpeg.get_ffmpeg_exe()
    out = subprocess.run([exe, "-hide_banner", "-encoders"], capture_output=True, text=True)
    if "libx264" not in out.stdout:
        raise VideoPathError(
            f"the ffmpeg at {exe} has no libx264 encoder; MP4 needs it (or use .gif)"
        )
    return exe


# ---------------------------------------------------------------------------------------------
# Encoders: one per container, same small interface (start, write, finish, kill).


class _Mp4Encoder:
    """Raw RGB frames piped to ffmpeg's libx264, yuv420p, ``+faststart`` for web players."""

    def __init__(self, tmp: Path, fps: Fraction, crf: int, preset: str) -> None:
        self.tmp, self.fps, self.crf, self.preset = tmp, fps, crf, preset
        self.proc: subprocess.Popen[bytes] | None = None
        # ffmpeg's messages, read back only to explain a failure; lives as long as the encoder.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115

    def start(self, width: int, height: int) -> None:
        cmd = [
            _ffmpeg_with_x264(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-s",
            f"{width}x{height}",
            "-r",
            str(self.fps),
            "-i",
            "-",
            "-an",
            "-c:v",
            "libx264",
            "-preset",
            self.preset,
            "-crf",
            str(self.crf),
            "-pix_fmt",
            "yuv420p",
            "-movflags",
            "+faststart",
            "-f",
            "mp4",
            str(self.tmp),
        ]
        # start_new_session: the terminal's Ctrl-C must reach Python only, so that ffmpeg is
        # still alive to finalise what was recorded.
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            start_new_session=True,
        )

    def write(self, frame: np.ndarray) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(frame.data.cast("B"))
        except (BrokenPipeError, OSError) as err:
            raise RuntimeError(
                f"ffmpeg stopped accepting frames: {self._log_tail() or err}"
            ) from None

    def finish(self) -> None:
        """Close the stream and wait for ffmpeg to write the container; raise if it failed."""
        assert self.proc is not None and self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, OSError):
            self.proc.stdin.close()
        try:
            rc = self.proc.wait(timeout=_FINALISE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(
                f"ffmpeg did not finish within {_FINALISE_TIMEOUT_S:.0f} s"
            ) from None
        if rc != 0:
            raise RuntimeError(f"ffmpeg failed (exit {rc}): {self._log_tail()}")
        self.log.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError, ValueError):
            if self.proc is not None and self.proc.stdin is not None:
                self.proc.stdin.close()
        self.log.close()

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            self.log.seek(0)
            return self.log.read().decode(errors="replace").strip()[-2000:]
        return ""


class _GifEncoder:
    """Frames quantised to 256 colours as they arrive, written by Pillow at the end.

    GIF cannot be streamed with Pillow, so the palette images (1 byte per pixel) stay in
    memory: fine for the short clips GIF is meant for. Frame delays are stored in 10 ms units,
    and Pillow merges identical consecutive frames into one longer frame (same timing).
    """

    def __init__(self, tmp: Path, fps: Fraction) -> None:
        self.tmp = tmp
        self.duration_ms = round(1000 / float(fps))
        self.frames: list = []

    def start(self, width: int, height: int) -> None:
        del width, height

    def write(self, frame: np.ndarray) -> None:
        from PIL import Image

        self.frames.append(Image.fromarray(frame).quantize(256, method=Image.Quantize.FASTOCTREE))

    def finish(self) -> None:
        first, *rest = self.frames
        with open(self.tmp, "xb") as f:
            first.save(
                f,
                format="GIF",
                save_all=True,
                append_images=rest,
                duration=self.duration_ms,
                loop=0,
                disposal=1,
            )
        self.frames = []

    def kill(self) -> None:
        self.frames = []


def _output_error(path: Path, error: Exception) -> Exception:
    """``error`` of an encoder as ``OutputError`` naming ``path`` when the disk refused the
    write (ffmpeg reports a full disk only in its log text); otherwise ``error`` itself."""
    if isinstance(error, RuntimeError) and "No space left on device" in str(error):
        error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return write_failure(path, error) or error


def _cleanup(encoder: _Mp4Encoder | _GifEncoder, tmp: Path) -> None:
    """Last resort when a writer is dropped unclosed: stop the encoder, remove the temp file."""
    encoder.kill()
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()


# ---------------------------------------------------------------------------------------------
# The writer


class VideoWriter:
    """Write ``[H, W, 3]`` uint8 RGB frames to an MP4 or GIF file, atomically.

    Use as a context manager::

        with VideoWriter("out.mp4", fps=20) as video:
            for frame in frames:
                video.write(frame)
        video.path        # the final file, present only because the block completed

    Leaving the block by an exception or Ctrl-C follows the module's interruption policy
    (the recorded frames kept as ``out.partial.mp4``, or nothing); ``video.kept`` says which
    file, if any, exists afterwards. Without ``with``, call ``close()`` or ``abort()``.

    The frame size is fixed by the first frame. MP4 needs even dimensions: an odd width or
    height is padded by repeating the last column/row (``size`` is the encoded size).

    Args:
        path: output file; ``.mp4`` (H.264, yuv420p) or ``.gif``.
        fps: frames per second of playback.
        crf: x264 constant rate factor 0 (lossless) .. 51; lower is better and bigger.
        preset: x264 speed preset, one of ``X264_PRESETS``.
        keep_partial: on interruption keep the recorded frames as ``<stem>.partial<ext>``.

    Raises:
        VideoPathError: bad path, extension or option, at construction.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float = 20.0,
        *,
        crf: int = DEFAULT_CRF,
        preset: str = DEFAULT_PRESET,
        keep_partial: bool = True,
    ) -> None:
        self.path = check_output_path(path)
        self.format = video_format(self.path)
        self.fps = _check_fps(fps)
        if not (isinstance(crf, int) and 0 <= crf <= 51):
            raise VideoPathError(f"crf must be an integer in 0..51, got {crf!r}")
        if preset not in X264_PRESETS:
            raise VideoPathError(
                f"unknown x264 preset {preset!r}; choose from {', '.join(X264_PRESETS)}"
            )
        self.keep_partial = keep_partial
        self.frames = 0
        self.size: tuple[int, int] | None = None  # (width, height) as encoded
        self.kept: Path | None = None
        self.closed = False
        self._input_shape: tuple[int, int] | None = None
        self._pad: tuple[int, int] = (0, 0)
        # Hidden, unique, same directory (so the final rename is atomic), same extension.
        self._tmp = self.path.with_name(
            f".{self.path.name}.{secrets.token_hex(4)}.tmp{self.path.suffix}"
        )
        if self.format == "mp4":
            _ffmpeg_with_x264()
            self._encoder: _Mp4Encoder | _GifEncoder = _Mp4Encoder(self._tmp, self.fps, crf, preset)
        else:
            self._encoder = _GifEncoder(self._tmp, self.fps)
        self._finalizer = weakref.finalize(self, _cleanup, self._encoder, self._tmp)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.closed:
            return
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, frame: np.ndarray) -> None:
        """Append one ``[H, W, 3]`` uint8 frame (every frame must have the first one's size)."""
        if self.closed:
            raise RuntimeError(f"video {str(self.path)!r} is already closed")
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(
                f"frames must be [H, W, 3] uint8, got {frame.dtype} {list(frame.shape)}"
            )
        if self._input_shape is None:
            self._open(frame.shape[0], frame.shape[1])
        elif frame.shape[:2] != self._input_shape:
            raise ValueError(
                f"frame size changed from {list(self._input_shape)} to {list(frame.shape[:2])}"
            )
        if self._pad != (0, 0):
            frame = np.pad(frame, ((0, self._pad[0]), (0, self._pad[1]), (0, 0)), mode="edge")
        try:
            self._encoder.write(np.ascontiguousarray(frame))
        except Exception as e:
            raise _output_error(self.path, e) from e
        self.frames += 1

    def _open(self, height: int, width: int) -> None:
        self._input_shape = (height, width)
        if self.format == "mp4":
            self._pad = (height % 2, width % 2)
        self.size = (width + self._pad[1], height + self._pad[0])
        self._encoder.start(*self.size)

    def close(self) -> Path:
        """Finalise the file and move it to ``path``; returns ``path``.

        A recording with no frame is not a video: it raises ``RuntimeError`` and leaves nothing.
        """
        if self.closed:
            if self.kept != self.path:
                raise RuntimeError(f"video {str(self.path)!r} was aborted")
            return self.path
        self.closed = True
        if self.frames == 0:
            self._discard()
            raise RuntimeError(f"no frames were written; {str(self.path)!r} not created")
        try:
            self._encoder.finish()
        except BaseException as e:
            self._discard()
            if isinstance(e, Exception):
                raise _output_error(self.path, e) from e
            raise
        os.replace(self._tmp, self.path)
        self._finalizer.detach()
        self.kept = self.path
        return self.path

    def abort(self) -> Path | None:
        """Stop recording under the interruption policy; returns the partial file kept, if any."""
        if self.closed:
            return self.kept if self.kept != self.path else None
        self.closed = True
        if not (self.keep_partial and self.frames > 0):
            self._discard()
            return None
        try:
            self._encoder.finish()
        except BaseException:
            # Includes a second Ctrl-C while ffmpeg finalises: keep nothing rather than a
            # file that might not play.
            self._discard()
            return None
        target = partial_path(self.path)
        os.replace(self._tmp, target)
        self._finalizer.detach()
        self.kept = target
        return target

    def _discard(self) -> None:
        self._finalizer()
