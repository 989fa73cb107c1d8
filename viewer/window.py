"""What the debugger's window (``viewer/app.py``) and the demo's (``viewer/demo_app.py``)
share: the error guard every callback goes through, the status messages, the scene texture
and its upload, the scene's frame rate, the frame loop of ``run`` and screenshots.

A subclass builds its widgets and its ``FrameStream`` (``self.frames``) and defines
``build``, ``frame``, ``paced_frame``, ``close`` and ``_layout``; everything here runs on
the GUI thread, except ``_worker_error``, which only queues.
"""

from __future__ import annotations

import os
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dearpygui.dearpygui as dpg
import numpy as np

from viewer.frames import FrameStream
from viewer.worker import Worker, WorkerError

ERROR_RGB = (255, 85, 85)
FPS_WINDOW = 2.0  # seconds of shown frames that scene_fps averages over


@dataclass
class Message:
    """A status-bar message and when it was reported (``time.monotonic``)."""

    text: str
    error: bool
    time: float


class SceneWindow:
    """Base of the two windows: one Dear PyGui context per process, one scene texture.

    Every callback goes through ``callback``, which turns an exception into an error in the
    status bar (``report``): a failing callback never ends the app. Errors from other threads
    (the worker, the renderer) are queued in ``_pending_errors`` and shown by the subclass's
    status code on the GUI thread (``_drain_errors``).
    """

    frames: FrameStream
    worker: Worker
    title = "qgf"
    clear_color: tuple[int, int, int, int] = (0, 0, 0, 255)
    screenshot_prefix = "qgf"
    screenshot_settle_frames = 3  # the frame buffer is read a frame or two behind

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.messages: deque[Message] = deque(maxlen=50)
        self.errors = 0
        self._pending_errors: deque[str] = deque()
        self.frame_spec: Any = None
        self.frames_shown = 0
        self.gui_frames = 0
        self._texture: int | str | None = None
        self._buffer: np.ndarray | None = None
        self._tags: dict[str, int | str] = {}
        self._shown_times: deque[float] = deque()
        self._upload_ms = 0.0
        self._drag: tuple[int, float, float] | None = None  # button, x, y while dragging
        self._frame_started = 0.0
        self._rendered_seen = 0
        self._built = False
        self._closed = False

    # --- to be defined by the window -----------------------------------------------------
    def frame(self) -> None:
        raise NotImplementedError

    def paced_frame(self) -> None:
        raise NotImplementedError

    def _theme(self) -> None:
        raise NotImplementedError

    def _build_widgets(self) -> None:
        raise NotImplementedError

    def _layout(self) -> None:
        raise NotImplementedError

    def _after_build(self) -> None:
        """Set the controls from the session, once the widgets exist."""

    def _before_close(self) -> None:
        """Finish what must not be cut off (a recording), before the threads stop."""

    def _after_close(self) -> None:
        """Release what the window's threads used."""

    # --- lifetime -----------------------------------------------------------------------
    def build(self) -> None:
        """Create the Dear PyGui context, viewport, the scene texture and every widget."""
        dpg.create_context()
        dpg.configure_app(manual_callback_management=True)
        dpg.create_viewport(title=self.title, width=self.width, height=self.height, vsync=False)
        dpg.set_viewport_clear_color(self.clear_color)
        self._theme()
        self._make_texture(self.frames.shape)
        self._build_widgets()
        dpg.set_viewport_resize_callback(self.callback("resize", lambda *_: self._layout()))
        dpg.setup_dearpygui()
        dpg.show_viewport()
        self._built = True
        self._layout()
        self._after_build()

    def close(self) -> None:
        """Stop the worker and render threads and destroy the context (once)."""
        if self._closed:
            return
        self._closed = True
        self._before_close()
        self.worker.close()
        self.frames.close()
        self._after_close()
        if self._built:
            dpg.destroy_context()

    # --- the loop ----------------------------------------------------------------------
    def run(self, frames: int | None = None, screenshot: str | os.PathLike | None = None) -> int:
        """Run the window until closed, or for ``frames`` GUI frames; then save ``screenshot``.

        With ``frames``, the scene's first frame is waited for (up to a minute) before the
        count starts, so a screenshot always shows the rendered scene.
        """
        if not self._built:
            self.build()
        try:
            if frames is not None:
                self._wait_first_frame()
                for _ in range(frames):
                    if not dpg.is_dearpygui_running():
                        break
                    self.frame()
                if screenshot is not None:
                    self.screenshot(screenshot)
            else:
                while dpg.is_dearpygui_running():
                    self.paced_frame()
        finally:
            self.close()
        return 0

    def _run_callbacks(self) -> bool:
        """Run the callbacks Dear PyGui queued (manual callback management); True if any."""
        jobs = dpg.get_callback_queue()
        if not jobs:
            return False
        for job in jobs:
            fn = job[0]
            if fn is None:
                continue
            sender, app_data, user_data = (list(job[1:]) + [None, None, None])[:3]
            fn(sender, app_data, user_data)
        return True

    def _wait_first_frame(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while self.frames_shown == 0 and time.monotonic() < end:
            self.frame()
            if self.frames_shown == 0:
                self.frames.wait_frame(0, timeout=0.05)

    # --- the scene texture -------------------------------------------------------------
    def _make_texture(self, shape: tuple[int, ...]) -> None:
        """A raw float texture of the scene's size (a new one when the size changes)."""
        h, w = int(shape[0]), int(shape[1])
        buffer = np.zeros((h, w, 3), np.float32)
        old = self._texture
        with dpg.texture_registry():
            self._texture = dpg.add_raw_texture(w, h, buffer, format=dpg.mvFormat_Float_rgb)
        self._buffer = buffer
        if "image" in self._tags:
            dpg.configure_item(self._tags["image"], texture_tag=self._texture)
            self._layout()
        if old is not None:
            dpg.delete_item(old)

    def _upload(self) -> None:
        """Copy the newest rendered frame, if there is one, into the texture's buffer."""
        assert self._buffer is not None, "build() makes the texture first"
        shape = self.frames.latest_shape()
        if shape is not None and shape != self._buffer.shape:
            self._make_texture(shape)
        t0 = time.perf_counter()
        rendered = self.frames.stats.frames
        spec = self.frames.take(self._buffer)
        if spec is None:
            return
        self._rendered_seen = rendered
        self._upload_ms = 1000 * (time.perf_counter() - t0)
        self.frame_spec = spec
        self.frames_shown += 1
        now = time.perf_counter()
        self._shown_times.append(now)
        while self._shown_times and now - self._shown_times[0] > FPS_WINDOW:
            self._shown_times.popleft()

    @property
    def scene_fps(self) -> float:
        """New scene frames shown per second over the last ``FPS_WINDOW`` seconds."""
        t = self._shown_times
        if len(t) < 2 or time.perf_counter() - t[-1] > 1.0:
            return 0.0
        return (len(t) - 1) / (t[-1] - t[0])

    # --- the camera -------------------------------------------------------------------
    def _poll_mouse(self) -> None:
        """Left drag orbits, right drag pans: polled each frame, starting on the image."""
        image = self._tags["image"]
        pos = dpg.get_mouse_pos(local=False)
        for button, kind in ((dpg.mvMouseButton_Left, "orbit"), (dpg.mvMouseButton_Right, "pan")):
            down = dpg.is_mouse_button_down(button)
            if self._drag is None and down and dpg.is_item_hovered(image):
                self._drag = (button, pos[0], pos[1])
            elif self._drag is not None and self._drag[0] == button:
                if not down:
                    self._drag = None
                    continue
                _, x0, y0 = self._drag
                dx, dy = pos[0] - x0, pos[1] - y0
                if dx or dy:
                    h = self._drag_unit()
                    self.frames.move_camera(kind, dx / h, dy / h)
                    self._drag = (button, pos[0], pos[1])

    def _drag_unit(self) -> float:
        """Pixels of drag that move the camera by one unit: the scene image's height."""
        return max(1.0, float(dpg.get_item_height(self._tags["image"]) or 1))

    # --- errors and messages -----------------------------------------------------------
    def callback(self, what: str, fn: Callable[..., Any]) -> Callable[..., None]:
        """Wrap ``fn(sender, app_data, user_data)`` so an exception becomes a status message."""

        def wrapped(sender=None, app_data=None, user_data=None) -> None:
            self._call(what, fn, sender, app_data, user_data)

        wrapped.__name__ = f"cb_{what}"
        return wrapped

    def _call(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as e:  # every callback error is shown, none ends the app
            traceback.print_exc()
            self.report(f"{what}: {type(e).__name__}: {e}", error=True)

    def report(self, text: str, error: bool = False) -> None:
        """Show a message in the status bar (errors in red, kept for a while)."""
        self.messages.append(Message(text, error, time.monotonic()))
        if error:
            self.errors += 1

    def _worker_error(self, err: WorkerError) -> None:
        # Called on the worker thread: only queue it; the GUI thread shows it.
        self._pending_errors.append(f"{err.what}: {err.message}")

    def _drain_errors(self) -> None:
        """Report the errors other threads queued (GUI thread)."""
        while self._pending_errors:
            self.report(self._pending_errors.popleft(), error=True)

    def _build_error_theme(self) -> None:
        with dpg.theme() as self._error_theme, dpg.theme_component(dpg.mvText):
            dpg.add_theme_color(dpg.mvThemeCol_Text, ERROR_RGB)

    # --- screenshots -------------------------------------------------------------------
    def screenshot(self, path: str | os.PathLike | None = None, timeout: float = 20.0) -> Path:
        """Save the whole window to a PNG (``dpg.output_frame_buffer``); waits for the file."""
        if path is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = Path("screenshots") / f"{self.screenshot_prefix}-{stamp}.png"
        path = Path(path).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.unlink()
        # Draw the current state a few times first so the file shows it, not the state before.
        for _ in range(self.screenshot_settle_frames):
            self.frame()
        done: list[Any] = []
        dpg.output_frame_buffer(file=str(path), callback=lambda *a: done.append(a))
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.frame()
            if path.exists() and path.stat().st_size > 0 and (done or _png_complete(path)):
                break
        else:
            raise TimeoutError(f"screenshot {path} was not written within {timeout:.0f} s")
        self.report(f"screenshot saved: {path}")
        return path


def _png_complete(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 12))
        return b"IEND" in f.read()
