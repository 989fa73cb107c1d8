"""The Dear PyGui window of ``qgf view``: scene, overlays, plots, controls and status bar.

Threads (docs/ARCHITECTURE.md says why, and how a change travels to the screen):

- main: Dear PyGui. Builds the widgets, runs their callbacks (manual callback management,
  so every callback runs here, between frames), copies the newest scene frame into the raw
  texture, updates plots and the status bar.
- ``qgf-policy`` (``viewer.worker.Worker``): all session commands (sample, step, reset,
  switches). Widgets send it commands and never wait for it.
- ``qgf-render`` (``viewer.frames.FrameStream``): MuJoCo, on its own GL context.

Every callback goes through ``ViewerApp.callback``, which turns an exception into a message
in the status bar: a failing callback never ends the app. Extension points: ``frame_hooks``
of ``self.frames`` (called with every rendered frame, e.g. a recorder), ``panels`` (functions
that add widgets to the controls column), ``on_tick`` (called every GUI frame).
"""

from __future__ import annotations

import math
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

from core import envs
from core.guidance import ESTIMATOR_DOCS, ESTIMATORS
from core.render import (
    EXECUTED_RGBA,
    GHOST_RGBA,
    GRIPPER_CLOSE_RGBA,
    GRIPPER_OPEN_RGBA,
    OFF_MANIFOLD_RGBA,
    RenderSettings,
    time_color,
)
from viewer.compare_view import CompareView
from viewer.frames import FrameStream
from viewer.landscape_view import LandscapeView
from viewer.manifold_view import ManifoldAnalysis, SweepPreview, sweep_key
from viewer.record import SceneRecorder, default_path
from viewer.session import FrameSpec, Session, SessionView, branch_rgba
from viewer.timeline_file import TIMELINE_DIR, Timeline, read_timeline, save_timeline
from viewer.timeline_file import default_path as timeline_path
from viewer.widgets import STATUS_HEIGHT, line_theme, nan_joined, rgb255
from viewer.worker import REAL_TIME_STEPS, Worker, WorkerError

TITLE = "qgf view"
CONTROLS_WIDTH = 390
PLOT_HEIGHT = 215
LEGEND_HEIGHT = 20
ERROR_SECONDS = 20.0
# Weight slider ranges: linear [0, W_LINEAR_MAX]; log10 w in [W_LOG_MIN, W_LOG_MAX].
W_LINEAR_MAX = 0.3
W_LOG_MIN, W_LOG_MAX = -3.0, 0.0
WEIGHT_STEP = 1.25
_BACKGROUND = (22, 25, 32, 255)
# GUI redraw rates (paced_frame): a new scene frame is drawn at once (at most MAX_GUI_FPS);
# otherwise ACTIVE_GUI_FPS within ACTIVE_SECONDS of input (a dragged slider follows the
# mouse), IDLE_GUI_FPS after.
MAX_GUI_FPS = 30.0
ACTIVE_GUI_FPS = 15.0
IDLE_GUI_FPS = 8.0
ACTIVE_SECONDS = 0.5
_SCREENSHOT_SETTLE_FRAMES = 3
# The effector's neighbourhood, paths magnified: one action moves the effector at most 5 cm,
# which at true size is a few pixels. The legend says so whenever the scale is not 1.
DEFAULT_CAMERA = "follow"
DEFAULT_PATH_SCALE = 3.0
# Mouse motion is handed to MuJoCo as a fraction of the image height, as its viewer does.
_FONT = Path(__import__("matplotlib").get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
_ACTION_NAMES = ("dx", "dy", "dz", "dyaw", "grip")
_DIM_COLORS = (
    (255, 99, 99),
    (99, 200, 99),
    (99, 150, 255),
    (230, 180, 60),
    (200, 120, 255),
)
_RESOLUTIONS = ("fit window", "480x360", "640x480", "960x640", "1280x720")

KEYS = (
    ("Space", "play / pause"),
    ("Right", "single step"),
    ("R", "reset the episode"),
    ("Up / Down", "guidance weight x1.25 / /1.25"),
    ("1 2 3 4", "camera: front, side, top, follow effector"),
    ("G", "toggle the unguided ghost"),
    ("D", "toggle the denoising paths"),
    ("P", "save a screenshot"),
    ("V", "start / stop recording a video of the scene"),
    ("B", "branch: continue from the step shown (or change a setting there)"),
    ("C", "compare every estimator at the step shown"),
    ("L", "the critic's landscape at the step shown (click it to probe an action)"),
    ("H or F1", "this help"),
    ("Esc", "close this help"),
    ("Left drag", "orbit the camera (in the scene)"),
    ("Right drag", "pan the camera (in the scene)"),
    ("Wheel", "zoom (in the scene)"),
)
# The sweep plot's title while playing: a sweep per step would take the steps' time.
SWEEP_WHILE_PLAYING = "Sweep of w: shown when paused"


@dataclass
class Message:
    text: str
    error: bool
    time: float


def _scale_note(k: float) -> str:
    return "" if k == 1.0 else f"paths x{k:.1f} (magnified)"


class ViewerApp:
    """One window over one ``Session``; one per process (Dear PyGui 2.3 crashes on a second
    window in a process whose first ran next to a MuJoCo GL context or loaded a font).

    Args:
        session: the session to show and drive (the app starts its worker and render threads).
        render: render settings for the scene; None picks fast defaults for the GL in use
            and the window's scene size.
        width, height: the window (viewport) size.
    """

    def __init__(
        self,
        session: Session,
        render: RenderSettings | None = None,
        width: int = 1280,
        height: int = 800,
    ) -> None:
        self.session = session
        self.width, self.height = width, height
        # View preferences live here, not in the session's settings.
        self.log_weight = True  # the weight slider's scale: log10 w, else w
        self.messages: deque[Message] = deque(maxlen=50)
        self.errors = 0
        self.panels: list[Callable[[ViewerApp], None]] = []
        self.on_tick: list[Callable[[ViewerApp], None]] = []
        self._pending_errors: deque[str] = deque()
        self._fit = render is None
        self._scene_w, self._scene_h = self._scene_area()
        self.worker = Worker(session, on_error=self._worker_error)
        # Estimators side by side: a controls panel, a window, and paths added to the frames.
        self.compare = CompareView(self)
        self.panels.append(self.compare.build)
        self.on_tick.append(self.compare.tick)
        # The critic's landscape at the step shown: a panel, a window, a probe in the scene.
        self.landscape = LandscapeView(self)
        self.panels.append(self.landscape.build)
        self.on_tick.append(self.landscape.tick)
        self.frames = FrameStream(
            self.session.frame,
            render,
            on_error=self._pending_errors.append,
            size=(self._scene_w, self._scene_h),
        )
        self.worker.after_command.append(self.frames.wake)
        # The record button: the scene's rendered frames, hooked only while recording.
        self.recorder = SceneRecorder(self.frames, on_error=self._pending_errors.append)
        self._saved: tuple[Path, float] | None = None  # last recording, when it was saved
        self._resync = False  # a timeline was opened: set the controls from its settings
        # Distance to the data: the hook runs on the worker with every sample, and the
        # manifold is built there on a checkpoint's first sample, never on the GUI thread.
        self.manifold = ManifoldAnalysis()
        self.sweep: SweepPreview | None = None
        self._sweep_wanted: tuple | None = None
        self._sweep_shown: SweepPreview | None = None
        self._sweep_paused_note = False  # the sweep plot says it waits for a pause
        self.worker.submit("manifold", self.manifold.attach)
        # Play computes the next step while the current one renders, never further ahead.
        self.worker.play_gate = lambda: self.frames.started_version >= self.session.version
        self.frames.set_preset(DEFAULT_CAMERA)
        self.frames.set_path_scale(DEFAULT_PATH_SCALE)
        self.frame_spec: FrameSpec | None = None
        self.frames_shown = 0
        self.gui_frames = 0
        self._plotted_version = -1
        self._texture: int | str | None = None
        self._buffer: np.ndarray | None = None
        self._drag: tuple[int, float, float] | None = None
        self._upload_ms = 0.0
        self._gui_ms = 0.0
        self._last_draw = 0.0
        self._frame_started = 0.0
        self._last_input = 0.0
        self._mouse_last: tuple[float, ...] = ()
        self._rendered_seen = 0
        self._shown_times: deque[float] = deque()
        self._tags: dict[str, int | str] = {}
        self._inputs: list[int | str] = []
        self._closed = False
        self._built = False

    # --- lifetime -----------------------------------------------------------------------
    def build(self) -> None:
        """Create the Dear PyGui context, viewport and every widget."""
        dpg.create_context()
        dpg.configure_app(manual_callback_management=True)
        dpg.create_viewport(title=TITLE, width=self.width, height=self.height, vsync=False)
        dpg.set_viewport_clear_color(_BACKGROUND)
        self._theme()
        with dpg.texture_registry():
            pass
        shape = self.frames.shape
        self._make_texture(shape)
        self._build_window()
        self._build_help()
        self._build_file_dialog()
        self._build_handlers()
        dpg.set_viewport_resize_callback(self.callback("resize", lambda *_: self._layout()))
        dpg.setup_dearpygui()
        dpg.show_viewport()
        self._built = True
        self._layout()
        self._sync_controls()

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

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Finish a recording first, so closing the window leaves a complete file.
        self._finish_recording()
        self.worker.close()
        self.frames.close()
        if self._built:
            dpg.destroy_context()

    # --- the frame ----------------------------------------------------------------------
    def frame(self) -> None:
        """One GUI frame: callbacks, new scene frame, plots, status, then draw."""
        self._frame_started = time.perf_counter()
        self._run_callbacks()
        self._note_input()
        # Every per-frame part runs in the error guard: an error is shown, none ends the app.
        self._call("mouse", self._poll_mouse)
        self._call("upload", self._upload)
        self._call("refresh", self._refresh)
        for fn in list(self.on_tick):
            self._call("tick", fn, self)
        t0 = time.perf_counter()
        dpg.render_dearpygui_frame()
        self._last_draw = time.perf_counter()
        self._gui_ms = 1000 * (self._last_draw - t0)
        self.gui_frames += 1

    def paced_frame(self) -> None:
        """A GUI frame as soon as a new scene frame is ready, else at a modest rate.

        Each Dear PyGui frame costs 25-70 ms of CPU on software GL (the window is rasterised
        and sent to the X server) whether or not anything changed; drawing only when there is
        something new leaves those cores to the renderer and the policy. Input is processed
        only inside a frame, so the idle rate bounds input latency (100 ms).
        """
        now = time.perf_counter()
        # The cap is on the period from frame start to frame start: counted from the end of
        # the last draw it added a whole period to every draw (a 25 ms draw then allowed 17
        # GUI frames/s, and scene frames rendered faster than that were never shown).
        since = now - self._frame_started
        if since < 1.0 / MAX_GUI_FPS:
            time.sleep(1.0 / MAX_GUI_FPS - since)
        active = self._drag is not None or now - self._last_input < ACTIVE_SECONDS
        period = 1.0 / (ACTIVE_GUI_FPS if active else IDLE_GUI_FPS)
        wait = self._last_draw + period - time.perf_counter()
        if wait > 0:
            self.frames.wait_frame(self._rendered_seen, timeout=wait)
        self.frame()

    def _note_input(self) -> None:
        pos = tuple(dpg.get_mouse_pos(local=False))
        if pos != self._mouse_last or dpg.is_mouse_button_down(dpg.mvMouseButton_Left):
            self._last_input = time.perf_counter()
        self._mouse_last = pos

    def _run_callbacks(self) -> None:
        jobs = dpg.get_callback_queue()
        if not jobs:
            return
        self._last_input = time.perf_counter()
        for job in jobs:
            fn = job[0]
            if fn is None:
                continue
            sender, app_data, user_data = (list(job[1:]) + [None, None, None])[:3]
            fn(sender, app_data, user_data)

    def _wait_first_frame(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while self.frames_shown == 0 and time.monotonic() < end:
            self.frame()
            if self.frames_shown == 0:
                self.frames.wait_frame(0, timeout=0.05)

    def _upload(self) -> None:
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
        while self._shown_times and now - self._shown_times[0] > 2.0:
            self._shown_times.popleft()

    @property
    def scene_fps(self) -> float:
        """New scene frames shown per second over the last ~2 s."""
        t = self._shown_times
        if len(t) < 2 or time.perf_counter() - t[-1] > 1.0:
            return 0.0
        return (len(t) - 1) / (t[-1] - t[0])

    # --- callbacks ----------------------------------------------------------------------
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

    def command(self, key: str, fn: Callable[[Session], Any]) -> None:
        """Send a command to the session (runs on the policy thread; newest per key wins)."""
        self.worker.submit(key, fn)

    # --- commands the widgets and keys send ---------------------------------------------
    def set_weight(self, weight: float) -> None:
        weight = float(weight)
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight must be a finite number >= 0, got {weight}")
        self.command("sample", lambda s: s.update(weight=weight))
        self._show_weight(weight)

    def on_weight_slider(self, sender, value, user_data=None) -> None:
        """The weight slider's callback: log10 w in log mode, w in linear mode."""
        w = 10.0 ** float(value) if self._log_weight() else float(value)
        self.set_weight(w)

    def on_weight_input(self, sender, value, user_data=None) -> None:
        self.set_weight(float(value))

    def on_log_weight(self, sender, value, user_data=None) -> None:
        self._set_log(bool(value))

    def on_estimator(self, sender, value, user_data=None) -> None:
        name = str(value)
        self.command("sample", lambda s: s.update(estimator=name))
        dpg.set_value(self._tags["estimator_doc"], ESTIMATOR_DOCS.get(name, ""))

    def select_estimator(self, name: str, pick_best: bool, **settings: Any) -> None:
        """Make ``name`` (with best-of-N on or off) the acting estimator, with other sampling
        ``settings`` (weight, steps, candidates, seed) changed in the same command."""
        self.command("sample", lambda s: s.update(estimator=name, pick_best=pick_best, **settings))
        t = self._tags
        dpg.set_value(t["estimator"], name)
        dpg.set_value(t["estimator_doc"], ESTIMATOR_DOCS.get(name, ""))
        dpg.set_value(t["pick_best"], pick_best)
        if "weight" in settings:
            self._show_weight(float(settings["weight"]))
        for key in ("steps", "candidates", "seed"):
            if key in settings:
                dpg.set_value(t[key], settings[key])

    def on_steps(self, sender, value, user_data=None) -> None:
        steps = int(value)
        self.command("sample", lambda s: s.update(steps=steps))

    def on_candidates(self, sender, value, user_data=None) -> None:
        n = int(value)
        self.command("sample", lambda s: s.update(candidates=n))

    def on_pick_best(self, sender, value, user_data=None) -> None:
        flag = bool(value)
        self.command("sample", lambda s: s.update(pick_best=flag))

    def on_seed(self, sender, value, user_data=None) -> None:
        seed = int(value)
        self.command("sample", lambda s: s.update(seed=seed))

    def on_env(self, sender, value, user_data=None) -> None:
        name = str(value)
        envs.parse_name(name)
        self.worker.pause()
        self.command("env", lambda s: s.set_env(name))
        self.report(f"switching to {name} ...")

    def open_checkpoint(self, path: str | os.PathLike) -> None:
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"not a checkpoint directory: {path}")
        self.worker.pause()
        self.command("checkpoint", lambda s: s.load_checkpoint(path))
        self.report(f"opening {path} ...")

    def on_random_weights(self, *_: Any) -> None:
        self.worker.pause()
        self.command("checkpoint", lambda s: s.use_random_weights())

    def play_pause(self, *_: Any) -> None:
        if self.session.done and not self.worker.playing:
            self.report("the episode has ended: press R to reset")
            return
        self.worker.toggle()

    def single_step(self, *_: Any) -> None:
        self.worker.pause()
        if self.session.done:
            self.report("the episode has ended: press R to reset")
            return
        self.command("step", lambda s: s.step() if not s.done else None)

    def reset(self, *_: Any) -> None:
        self.worker.pause()
        self.command("reset", lambda s: s.reset())

    def view_step(self, index: int | None) -> None:
        """Show recorded step ``index`` of the episode (None or the current step: live).
        Scrubbing pauses playback; nothing is sampled or stepped."""
        if index is not None:
            self.worker.pause()
        self.command("view", lambda s: s.view_step(index))

    def on_timeline(self, sender, value, user_data=None) -> None:
        self.view_step(int(value))

    def go_live(self, *_: Any) -> None:
        self.view_step(None)

    def branch_here(self, *_: Any) -> None:
        """Continue from the step shown in a new branch, with the current settings (then
        change a setting to make it differ; the old line of play is kept)."""
        self.worker.pause()
        self.command("branch", lambda s: s.branch_from())

    def switch_branch(self, branch_id: int) -> None:
        self.worker.pause()
        self.command("branch", lambda s: s.switch_branch(branch_id))

    def on_branch(self, sender, value, user_data=None) -> None:
        labels = [b.label for b in self.session.branches]
        if value not in labels:
            raise ValueError(f"no branch {value!r}")
        self.switch_branch(labels.index(value))

    def on_speed(self, sender, value, user_data=None) -> None:
        self.worker.set_speed(float(value))

    def on_max_speed(self, sender, value, user_data=None) -> None:
        self.worker.set_speed(0.0 if value else float(dpg.get_value(self._tags["speed"])))
        dpg.configure_item(self._tags["speed"], enabled=not value)

    def set_camera(self, name: str) -> None:
        self.frames.set_preset(name)

    def on_layer(self, sender, value, user_data=None) -> None:
        self.frames.set_layers(**{str(user_data): bool(value)})

    def toggle_layer(self, name: str) -> None:
        value = not getattr(self.frames.layers, name)
        self.frames.set_layers(**{name: value})
        dpg.set_value(self._tags[f"layer_{name}"], value)

    def on_path_scale(self, sender, value, user_data=None) -> None:
        k = float(value)
        self.frames.set_path_scale(k)
        dpg.set_value(self._tags["scale_note"], _scale_note(k))

    def on_render_flag(self, sender, value, user_data=None) -> None:
        self.frames.configure(**{str(user_data): bool(value)})

    def on_antialias(self, sender, value, user_data=None) -> None:
        self.frames.configure(offsamples=4 if value else 0)

    def on_resolution(self, sender, value, user_data=None) -> None:
        if value == "fit window":
            self._fit = True
            w, h = self._scene_area()
        else:
            self._fit = False
            w, h = (int(x) for x in str(value).split("x"))
        self.frames.configure(width=w, height=h)

    def nudge_weight(self, factor: float) -> None:
        w = self.session.settings.weight
        w = max(10**W_LOG_MIN, w) * factor if factor > 1 else w * factor
        self.set_weight(w)

    def toggle_recording(self, *_: Any) -> Path | None:
        """Start recording the scene view (to ``recordings/<env>-<time>.<fmt>``, format and
        caption from the widgets), or stop and finish the file; returns it when stopped."""
        if self.recorder.is_recording:
            path = self.recorder.stop()
            self._saved = (path, time.monotonic())
            self.report(f"recording saved: {path}")
            return path
        fmt = str(dpg.get_value(self._tags["record_format"]))
        caption = bool(dpg.get_value(self._tags["record_caption"]))
        path = self.recorder.start(
            default_path(self.session.settings.env_name, fmt), caption=caption
        )
        self.report(f"recording to {path}")
        return None

    def save_timeline(self, path: str | os.PathLike | None = None) -> Path:
        """Save the whole timeline (branches, traces, settings, networks) to one file,
        ``timelines/<env>-<time>.timeline.safetensors`` by default. Written on the worker,
        between two steps; the status bar shows the path once it is written."""
        path = Path(path or timeline_path(self.session.settings.env_name)).resolve()

        view = self.view_prefs()

        def save(session: Session) -> None:
            save_timeline(session, path, view=view)
            self._saved = (path, time.monotonic())

        self.command("save timeline", save)
        self.report(f"saving the timeline to {path} ...")
        return path

    def view_prefs(self) -> dict:
        """The view choices a saved timeline keeps (JSON): the landscape's slice and layers."""
        return {"landscape": self.landscape.prefs()}

    def apply_view_prefs(self, prefs: dict) -> None:
        """Restore ``view_prefs`` from a timeline (missing or bad entries: left as they are)."""
        self.landscape.apply_prefs((prefs or {}).get("landscape"))

    def open_timeline(self, source: str | os.PathLike | Timeline) -> None:
        """Open a saved timeline in place of the episode: read and checked here (a bad file
        is reported at once), installed on the worker. What differs from where it was saved
        (e.g. the checkpoint is missing or has other weights) is shown in the status bar."""
        if isinstance(source, Timeline):
            timeline = source
        else:
            timeline = read_timeline(source, device=self.session.settings.device)
        self.worker.pause()

        def install(session: Session) -> None:
            session.open_timeline(timeline)
            self._resync = True

        self.command("checkpoint", install)
        self.apply_view_prefs(timeline.view)
        self.report(f"opening {timeline.path} ...")
        if timeline.notes:
            self.report("note: " + "; ".join(timeline.notes))

    def _finish_recording(self) -> None:
        if not self.recorder.is_recording:
            return
        try:
            path = self.recorder.stop()
            print(f"recording saved: {path}")
        except Exception:
            traceback.print_exc()
            self.recorder.abort()

    def _record_indicator(self) -> None:
        t = self._tags
        rec = self.recorder
        on = rec.is_recording
        text, color = "", (255, 60, 60)
        if on:
            text = f"\u25cf REC  {rec.frame_count} frames  {rec.elapsed:.1f} s"
        elif self._saved is not None and time.monotonic() - self._saved[1] < ERROR_SECONDS:
            # Shown apart from the notes, so that an error message cannot hide it.
            text, color = f"saved {self._saved[0]}", (140, 210, 255)
        dpg.set_value(t["rec"], text)
        dpg.configure_item(t["rec"], color=color)
        dpg.configure_item(t["record"], label="Stop" if rec.is_recording else "Record")
        dpg.bind_item_theme(t["record"], self._play_theme if rec.is_recording else 0)

    def toggle_help(self, *_: Any) -> None:
        tag = self._tags["help"]
        dpg.configure_item(tag, show=not dpg.is_item_shown(tag))

    def screenshot(self, path: str | os.PathLike | None = None, timeout: float = 20.0) -> Path:
        """Save the whole window to a PNG (``dpg.output_frame_buffer``); waits for the file."""
        if path is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = Path("screenshots") / f"qgf-{stamp}.png"
        path = Path(path).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.unlink()
        # The frame buffer is read a frame or two behind what was last drawn: draw the
        # current state a few times first so the file shows it, not the state before.
        for _ in range(_SCREENSHOT_SETTLE_FRAMES):
            self.frame()
        done: list[Any] = []
        dpg.output_frame_buffer(file=str(path), callback=lambda *a: done.append(a))
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.frame()
            if path.exists() and path.stat().st_size > 0 and (done or self._png_complete(path)):
                break
        else:
            raise TimeoutError(f"screenshot {path} was not written within {timeout:.0f} s")
        self.report(f"screenshot saved: {path}")
        return path

    @staticmethod
    def _png_complete(path: Path) -> bool:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 12))
            return b"IEND" in f.read()

    # --- keys and mouse -----------------------------------------------------------------
    def _typing(self) -> bool:
        return any(dpg.is_item_active(t) for t in self._inputs)

    def _key(self, action: Callable[[], Any]) -> Callable[..., None]:
        def on_key(*_: Any) -> None:
            if not self._typing():
                action()

        return on_key

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
                    h = max(1.0, float(dpg.get_item_height(image) or 1))
                    self.frames.move_camera(kind, dx / h, dy / h)
                    self._drag = (button, pos[0], pos[1])

    def _on_wheel(self, sender, delta, user_data=None) -> None:
        if dpg.is_item_hovered(self._tags["image"]):
            self.frames.move_camera("zoom", 0.0, -0.05 * float(delta))

    # --- building -----------------------------------------------------------------------
    def _theme(self) -> None:
        if _FONT.exists():
            with dpg.font_registry():
                font = dpg.add_font(str(_FONT), 15)
            dpg.bind_font(font)
        with dpg.theme() as theme, dpg.theme_component(dpg.mvAll):
            dpg.add_theme_style(dpg.mvStyleVar_FrameRounding, 3)
            dpg.add_theme_style(dpg.mvStyleVar_ItemSpacing, 6, 5)
            dpg.add_theme_style(dpg.mvStyleVar_WindowPadding, 6, 6)
            # Transparent window backgrounds over the viewport's clear colour: ImGui skips a
            # fully transparent fill, and on software GL filling the 1280x800 window (and
            # its panels) cost ~15 ms of CPU per frame.
            dpg.add_theme_color(dpg.mvThemeCol_WindowBg, (0, 0, 0, 0))
            dpg.add_theme_color(dpg.mvThemeCol_ChildBg, (0, 0, 0, 0))
        dpg.bind_theme(theme)
        with dpg.theme() as self._error_theme, dpg.theme_component(dpg.mvText):
            dpg.add_theme_color(dpg.mvThemeCol_Text, (255, 90, 90))
        with dpg.theme() as self._play_theme, dpg.theme_component(dpg.mvButton):
            dpg.add_theme_color(dpg.mvThemeCol_Button, (40, 120, 60))

    def _make_texture(self, shape: tuple[int, ...]) -> None:
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

    def _build_window(self) -> None:
        t = self._tags
        # Not a primary window: Dear PyGui draws a primary window's background opaque whatever
        # the theme says (a 1280x800 fill, ~8 ms of CPU per GUI frame on software GL). A plain
        # window covering the viewport (_layout keeps it so) and never raised over the others
        # shows the viewport's clear colour instead, for nothing.
        with dpg.window(
            tag="qgf_main", pos=(0, 0), width=self.width, height=self.height, no_scrollbar=True,
            no_background=True, no_title_bar=True, no_resize=True, no_move=True,
            no_collapse=True, no_bring_to_front_on_focus=True,
        ) as t["window"]:  # fmt: skip
            with dpg.group(horizontal=True):
                with dpg.child_window(width=-CONTROLS_WIDTH - 8, height=300, no_scrollbar=True) as (
                    t["scene_panel"]
                ):
                    t["image"] = dpg.add_image(self._texture)
                    self._build_legend()
                with dpg.child_window(width=CONTROLS_WIDTH, height=300) as t["controls"]:
                    self._build_controls()
            with dpg.group(horizontal=True) as t["plots"]:
                self._build_plots()
            with dpg.group(horizontal=True) as t["status"]:
                t["rec"] = dpg.add_text("", color=(255, 60, 60))
                t["status_text"] = dpg.add_text("starting ...")
                t["status_error"] = dpg.add_text("")
                dpg.bind_item_theme(t["status_error"], self._error_theme)
                t["status_note"] = dpg.add_text("", color=(140, 210, 255))

    def _build_legend(self) -> None:
        with dpg.group(horizontal=True):
            dpg.add_text("a_hat at t = 0")
            with dpg.group(horizontal=True, horizontal_spacing=0):
                for tt in np.linspace(0.0, 1.0, 6):
                    dpg.add_text("\u25a0", color=rgb255(time_color(tt)))
            dpg.add_text("1")
            for label, rgba in (
                ("executed", EXECUTED_RGBA),
                ("w=0 ghost", GHOST_RGBA),
                ("off-manifold", OFF_MANIFOLD_RGBA),
                ("gripper open", GRIPPER_OPEN_RGBA),
                ("/ close", GRIPPER_CLOSE_RGBA),
            ):
                dpg.add_text(label, color=rgb255(rgba))
            self._tags["scale_note"] = dpg.add_text(
                _scale_note(DEFAULT_PATH_SCALE), color=(120, 220, 255)
            )
            self._tags["label"] = dpg.add_text("", color=(255, 200, 80))

    def _build_controls(self) -> None:
        t = self._tags
        cb = self.callback
        s = self.session.settings
        t["info"] = dpg.add_text("")
        t["values"] = dpg.add_text("")
        # Playback first: at 1280x800 the column shows it, guidance and the timeline whole.
        with dpg.collapsing_header(label="Playback", default_open=True):
            with dpg.group(horizontal=True):
                t["play"] = dpg.add_button(
                    label="Play", width=70, callback=cb("play", self.play_pause)
                )
                dpg.add_button(label="Step", width=60, callback=cb("step", self.single_step))
                dpg.add_button(label="Reset", width=60, callback=cb("reset", self.reset))
                dpg.add_button(
                    label="Screenshot", callback=cb("screenshot", lambda *_: self.screenshot())
                )
            with dpg.group(horizontal=True):
                t["record"] = dpg.add_button(
                    label="Record", width=70, callback=cb("record", self.toggle_recording)
                )
                t["record_format"] = dpg.add_combo(("mp4", "gif"), default_value="mp4", width=60)
                t["record_caption"] = dpg.add_checkbox(label="caption", default_value=True)
            with dpg.group(horizontal=True):
                t["save_timeline"] = dpg.add_button(
                    label="Save timeline",
                    callback=cb("save timeline", lambda *_: self.save_timeline()),
                )
                dpg.add_button(
                    label="Open timeline...",
                    callback=cb("open dialog", lambda *_: dpg.show_item(t["timeline_dialog"])),
                )
            with dpg.group(horizontal=True):
                t["speed"] = dpg.add_slider_float(
                    label="steps/s", min_value=1, max_value=60, default_value=REAL_TIME_STEPS,
                    width=170, format="%.0f", callback=cb("speed", self.on_speed),
                )  # fmt: skip
                t["max_speed"] = dpg.add_checkbox(
                    label="max", callback=cb("speed", self.on_max_speed)
                )
            with dpg.group(horizontal=True):
                # Scrubs the recorded steps of this episode; the right end is the live step.
                t["timeline"] = dpg.add_slider_int(
                    label="##timeline", min_value=0, max_value=0, width=-80,
                    format="step %d", callback=cb("timeline", self.on_timeline),
                )  # fmt: skip
                t["live"] = dpg.add_button(label="Live", callback=cb("live", self.go_live))
            with dpg.group(horizontal=True):
                # Changing a sampling setting at a past step also branches from it.
                t["branch_here"] = dpg.add_button(
                    label="Branch here", callback=cb("branch", self.branch_here)
                )
                t["branch"] = dpg.add_combo(
                    ["main"], default_value="main", width=-1,
                    callback=cb("switch branch", self.on_branch),
                )  # fmt: skip
        with dpg.collapsing_header(label="Guidance", default_open=True):
            with dpg.group(horizontal=True):
                t["weight_slider"] = dpg.add_slider_float(
                    width=200, callback=cb("weight", self.on_weight_slider)
                )
                t["weight_input"] = dpg.add_input_float(
                    label="w", width=110, step=0, format="%.4f", on_enter=True,
                    callback=cb("weight", self.on_weight_input),
                )  # fmt: skip
            self._inputs.append(t["weight_input"])
            t["log"] = dpg.add_checkbox(
                label="log scale",
                default_value=self.log_weight,
                callback=cb("log", self.on_log_weight),
            )
            t["estimator"] = dpg.add_combo(
                list(ESTIMATORS), default_value=s.estimator, label="estimator", width=-90,
                callback=cb("estimator", self.on_estimator),
            )  # fmt: skip
            t["estimator_doc"] = dpg.add_text(
                ESTIMATOR_DOCS.get(s.estimator, ""), wrap=CONTROLS_WIDTH - 30, color=(170, 175, 185)
            )
            t["steps"] = dpg.add_slider_int(
                label="steps T", min_value=1, max_value=50, default_value=s.steps, width=-90,
                callback=cb("steps", self.on_steps),
            )  # fmt: skip
            t["candidates"] = dpg.add_slider_int(
                label="candidates N", min_value=1, max_value=32, default_value=s.candidates,
                width=-90, callback=cb("candidates", self.on_candidates),
            )  # fmt: skip
            t["pick_best"] = dpg.add_checkbox(
                label="best-of-N (execute the highest-Q candidate)", default_value=s.pick_best,
                callback=cb("best-of", self.on_pick_best),
            )  # fmt: skip
            t["seed"] = dpg.add_input_int(
                label="seed", default_value=s.seed, width=120, on_enter=True,
                callback=cb("seed", self.on_seed),
            )  # fmt: skip
            self._inputs.append(t["seed"])
        with dpg.collapsing_header(label="Policy", default_open=True):
            t["checkpoint"] = dpg.add_text("")
            with dpg.group(horizontal=True):
                dpg.add_button(
                    label="Open checkpoint...",
                    callback=cb("open dialog", lambda *_: dpg.show_item(t["file_dialog"])),
                )
                dpg.add_button(
                    label="Random weights", callback=cb("random", self.on_random_weights)
                )
            names = [n for n in envs.valid_names() if "-play-singletask-task" in n]
            if s.env_name not in names:
                names.insert(0, s.env_name)
            t["env"] = dpg.add_combo(
                names, default_value=s.env_name, label="task", width=-60,
                callback=cb("task", self.on_env),
            )  # fmt: skip
        with dpg.collapsing_header(label="Camera and layers", default_open=False):
            with dpg.group(horizontal=True):
                for name in ("front", "side", "top", "follow"):
                    dpg.add_button(
                        label=name, callback=cb("camera", lambda *_, n=name: self.set_camera(n))
                    )
            t["path_scale"] = dpg.add_slider_float(
                label="path scale", min_value=1.0, max_value=5.0,
                default_value=DEFAULT_PATH_SCALE, width=-110,
                format="x%.1f", callback=cb("path scale", self.on_path_scale),
            )  # fmt: skip
            layers = self.frames.layers
            for name, label in (
                ("denoise", "denoising steps (a_hat at each t)"),
                ("final", "final candidates"),
                ("executed", "executed action"),
                ("ghost", "unguided ghost (w = 0, same noise)"),
                ("gripper", "gripper command"),
                ("off_manifold", "off-manifold marks"),
                ("branches", "branch paths (effector, per branch)"),
            ):
                t[f"layer_{name}"] = dpg.add_checkbox(
                    label=label, default_value=getattr(layers, name), user_data=name,
                    callback=cb("layer", self.on_layer),
                )  # fmt: skip
        with dpg.collapsing_header(label="Render", default_open=False):
            rs = self.frames.settings
            t["gl"] = dpg.add_text("", wrap=CONTROLS_WIDTH - 30, color=(170, 175, 185))
            t["resolution"] = dpg.add_combo(
                _RESOLUTIONS, default_value="fit window", label="resolution", width=-90,
                callback=cb("resolution", self.on_resolution),
            )  # fmt: skip
            t["aa"] = dpg.add_checkbox(
                label="anti-aliasing (4x MSAA)", default_value=rs.offsamples > 0,
                callback=cb("anti-aliasing", self.on_antialias),
            )  # fmt: skip
            for flag in ("shadows", "skybox", "reflection"):
                t[flag] = dpg.add_checkbox(
                    label=flag, default_value=getattr(rs, flag), user_data=flag,
                    callback=cb(flag, self.on_render_flag),
                )  # fmt: skip
        for panel in self.panels:
            self._call("panel", panel, self)
        dpg.add_text("H or F1: keyboard help", color=(150, 155, 165))

    def _build_plots(self) -> None:
        t = self._tags

        def legend() -> None:
            dpg.add_plot_legend(outside=True, location=dpg.mvPlot_Location_North, horizontal=True)

        with dpg.plot(label="Episode", height=PLOT_HEIGHT, width=300) as t["plot_episode"]:
            legend()
            t["ep_x"] = dpg.add_plot_axis(dpg.mvXAxis, label="env step")
            with dpg.plot_axis(dpg.mvYAxis, label="value") as t["ep_y"]:
                t["ep_q"] = dpg.add_line_series([], [], label="Q")
                t["ep_v"] = dpg.add_line_series([], [], label="V")
                t["ep_r"] = dpg.add_line_series([], [], label="reward")
                t["ep_success"] = dpg.add_scatter_series([], [], label="success")
                t["ep_shown"] = dpg.add_inf_line_series([], label="shown")
        with dpg.plot(label="Q(s, a_hat) along denoising", height=PLOT_HEIGHT, width=300) as (
            t["plot_q"]
        ):
            legend()
            t["q_x"] = dpg.add_plot_axis(dpg.mvXAxis, label="denoising step k (T: final action)")
            with dpg.plot_axis(dpg.mvYAxis, label="Q") as t["q_y"]:
                # All candidates of a group in one series, separated by NaN (one draw call).
                t["q_unguided"] = dpg.add_line_series([], [], label="w = 0", skip_nan=True)
                t["q_guided"] = dpg.add_line_series([], [], label="guided", skip_nan=True)
                t["q_exec"] = dpg.add_line_series([], [], label="executed")
                t["q_off"] = dpg.add_scatter_series([], [], label="off data")
        with dpg.plot(label="a_hat of the executed candidate", height=PLOT_HEIGHT, width=300) as (
            t["plot_a"]
        ):
            legend()
            t["a_x"] = dpg.add_plot_axis(dpg.mvXAxis, label="denoising step k (faint: w = 0)")
            with dpg.plot_axis(dpg.mvYAxis, label="action") as t["a_y"]:
                dpg.set_axis_limits(t["a_y"], -1.1, 1.1)
                for j, name in enumerate(_ACTION_NAMES):
                    t[f"a_u{j}"] = dpg.add_line_series([], [], label=f"##{name} w=0")
                    t[f"a_g{j}"] = dpg.add_line_series([], [], label=name)
        with dpg.plot(label="Sweep of w at the live step", height=PLOT_HEIGHT, width=300) as (
            t["plot_sweep"]
        ):
            legend()
            t["sw_x"] = dpg.add_plot_axis(
                dpg.mvXAxis, label="guidance weight w (log)", scale=dpg.mvPlotScale_Log10
            )
            # Until the first sweep arrives (sweeps wait while playing), a sensible empty
            # range: an empty log axis otherwise labels itself 1e-306 .. 1.
            dpg.set_axis_limits(t["sw_x"], 1e-3, 1.0)
            with dpg.plot_axis(dpg.mvYAxis, label="mean Q") as t["sw_y"]:
                t["sw_q"] = dpg.add_line_series([], [], label="Q")
                t["sw_w"] = dpg.add_inf_line_series([], label="current w")
            with dpg.plot_axis(dpg.mvYAxis2, label="distance to data", opposite=True) as (
                t["sw_y2"]
            ):
                t["sw_d"] = dpg.add_line_series([], [], label="distance")
                t["sw_thr"] = dpg.add_inf_line_series([], horizontal=True, label="threshold")
        with dpg.plot(
            label="Branches: Q and return", height=PLOT_HEIGHT, width=300, show=False
        ) as (t["plot_branches"]):
            legend()
            t["br_x"] = dpg.add_plot_axis(dpg.mvXAxis, label="env step")
            t["br_y"] = dpg.add_plot_axis(dpg.mvYAxis, label="Q(s,a) (thick)")
            t["br_y2"] = dpg.add_plot_axis(dpg.mvYAxis2, label="return (thin)", opposite=True)
        self._branch_series: list[tuple[int | str, int | str]] = []
        self._branch_themes: dict[int, tuple[int | str, int | str]] = {}
        self._series_themes()

    def _series_themes(self) -> None:
        t = self._tags
        yellow = rgb255(time_color(1.0))
        self._theme_guided = line_theme((yellow[0], yellow[1], yellow[2], 150))
        # Drawn under the guided lines and wider, so a w = 0 curve that the guided one
        # follows still shows as a grey halo.
        self._theme_unguided = line_theme((160, 168, 180, 130), 4.0)
        self._theme_exec = line_theme((255, 255, 255, 255), 3.0)
        self._theme_dims = [line_theme((*c, 255), 2.0) for c in _DIM_COLORS]
        self._theme_dims_ghost = [line_theme((*c, 110), 1.0) for c in _DIM_COLORS]
        dpg.bind_item_theme(t["q_unguided"], self._theme_unguided)
        dpg.bind_item_theme(t["q_guided"], self._theme_guided)
        dpg.bind_item_theme(t["q_exec"], self._theme_exec)
        off = rgb255(OFF_MANIFOLD_RGBA)
        dpg.bind_item_theme(t["q_off"], line_theme(off, 1.0, marker=dpg.mvPlotMarker_Circle))
        dpg.bind_item_theme(t["sw_q"], line_theme((250, 210, 60, 255), 2.0))
        dpg.bind_item_theme(t["sw_d"], line_theme((90, 170, 255, 255), 2.0))
        dpg.bind_item_theme(t["sw_thr"], line_theme(off, 1.0))
        dpg.bind_item_theme(t["sw_w"], line_theme((255, 255, 255, 160), 1.0))
        for j in range(len(_ACTION_NAMES)):
            dpg.bind_item_theme(t[f"a_u{j}"], self._theme_dims_ghost[j])
            dpg.bind_item_theme(t[f"a_g{j}"], self._theme_dims[j])
        dpg.bind_item_theme(t["ep_q"], line_theme((250, 210, 60, 255), 2.0))
        dpg.bind_item_theme(t["ep_v"], line_theme((90, 170, 255, 255), 2.0))
        dpg.bind_item_theme(t["ep_r"], line_theme((200, 120, 255, 255), 1.5))
        dpg.bind_item_theme(
            t["ep_success"], line_theme((60, 230, 100, 255), 1.0, marker=dpg.mvPlotMarker_Diamond)
        )

    def _build_help(self) -> None:
        with (
            dpg.window(
                label="Keyboard and mouse (H or F1)", modal=False, show=False, no_collapse=True,
                width=430, height=395, pos=(self.width // 2 - 215, 120),
            ) as self._tags["help"],
            dpg.table(header_row=False, borders_innerH=True),
        ):  # fmt: skip
            dpg.add_table_column(width_fixed=True, init_width_or_weight=110)
            dpg.add_table_column()
            for key, what in KEYS:
                with dpg.table_row():
                    dpg.add_text(key, color=(255, 220, 120))
                    dpg.add_text(what)

    def _build_file_dialog(self) -> None:
        def chosen(sender, app_data, user_data=None) -> None:
            path = app_data.get("file_path_name") or app_data.get("current_path")
            if path:
                self.open_checkpoint(path)

        start = self.session.checkpoint_path or Path.cwd() / "checkpoints"
        self._tags["file_dialog"] = dpg.add_file_dialog(
            directory_selector=True, show=False, width=640, height=420,
            default_path=str(start.parent if start.exists() else Path.cwd()),
            callback=self.callback("open checkpoint", chosen),
        )  # fmt: skip

        def chosen_timeline(sender, app_data, user_data=None) -> None:
            path = app_data.get("file_path_name")
            if path:
                self.open_timeline(path)

        folder = Path.cwd() / TIMELINE_DIR
        self._tags["timeline_dialog"] = dpg.add_file_dialog(
            show=False, width=640, height=420,
            default_path=str(folder if folder.is_dir() else Path.cwd()),
            callback=self.callback("open timeline", chosen_timeline),
        )  # fmt: skip
        dpg.add_file_extension(".safetensors", parent=self._tags["timeline_dialog"])
        dpg.add_file_extension(".*", parent=self._tags["timeline_dialog"])

    def _build_handlers(self) -> None:
        keys = (
            ("space", dpg.mvKey_Spacebar, self.play_pause),
            ("right", dpg.mvKey_Right, self.single_step),
            ("r", dpg.mvKey_R, self.reset),
            ("h", dpg.mvKey_H, self.toggle_help),
            ("f1", dpg.mvKey_F1, self.toggle_help),
            ("escape", dpg.mvKey_Escape, lambda: dpg.hide_item(self._tags["help"])),
            ("up", dpg.mvKey_Up, lambda: self.nudge_weight(WEIGHT_STEP)),
            ("down", dpg.mvKey_Down, lambda: self.nudge_weight(1 / WEIGHT_STEP)),
            ("1", dpg.mvKey_1, lambda: self.set_camera("front")),
            ("2", dpg.mvKey_2, lambda: self.set_camera("side")),
            ("3", dpg.mvKey_3, lambda: self.set_camera("top")),
            ("4", dpg.mvKey_4, lambda: self.set_camera("follow")),
            ("g", dpg.mvKey_G, lambda: self.toggle_layer("ghost")),
            ("d", dpg.mvKey_D, lambda: self.toggle_layer("denoise")),
            ("p", dpg.mvKey_P, lambda: self.screenshot()),
            ("v", dpg.mvKey_V, self.toggle_recording),
            ("b", dpg.mvKey_B, self.branch_here),
            ("c", dpg.mvKey_C, self.compare.request),
            ("l", dpg.mvKey_L, self.landscape.toggle_window),
        )
        with dpg.handler_registry():
            for name, key, action in keys:
                self._tags[f"key_{name}"] = dpg.add_key_press_handler(
                    key, callback=self.callback(f"key {name}", self._key(action))
                )
            dpg.add_mouse_wheel_handler(callback=self.callback("zoom", self._on_wheel))

    # --- layout and refresh -------------------------------------------------------------
    def _scene_area(self) -> tuple[int, int]:
        """Pixels available to the scene image for the current window size."""
        if getattr(self, "_built", False):
            vw = dpg.get_viewport_client_width() or self.width
            vh = dpg.get_viewport_client_height() or self.height
        else:
            vw, vh = self.width, self.height
        w = vw - CONTROLS_WIDTH - 40
        h = vh - PLOT_HEIGHT - STATUS_HEIGHT - LEGEND_HEIGHT - 48
        # Multiples of 8 keep texture rows aligned.
        return max(160, w // 8 * 8), max(120, h // 8 * 8)

    def _layout(self) -> None:
        if not self._built:
            return
        t = self._tags
        vw = dpg.get_viewport_client_width() or self.width
        vh = dpg.get_viewport_client_height() or self.height
        dpg.configure_item(t["window"], width=vw, height=vh)
        top = vh - PLOT_HEIGHT - STATUS_HEIGHT - 26
        dpg.configure_item(t["scene_panel"], height=top)
        dpg.configure_item(t["controls"], height=top)
        aw, ah = self._scene_area()
        th, tw = self._buffer.shape[:2]
        scale = min(aw / tw, ah / th)
        dpg.configure_item(t["image"], width=int(tw * scale), height=int(th * scale))
        plots = ("plot_episode", "plot_q", "plot_a", "plot_sweep")
        # The branch plot shows once there is more than one line of play to compare.
        if len(self.session.branches) > 1:
            plots += ("plot_branches",)
        pw = (vw - 20 - 6 * len(plots)) // len(plots)
        for name in plots:
            dpg.configure_item(t[name], width=pw, height=PLOT_HEIGHT)
        if self._fit and (aw, ah) != (self._scene_w, self._scene_h):
            self._scene_w, self._scene_h = aw, ah
            self.frames.configure(width=aw, height=ah)

    def _log_weight(self) -> bool:
        return self.log_weight

    def _set_log(self, log: bool) -> None:
        """The weight slider's scale, a view preference (the session does not know it)."""
        t = self._tags
        self.log_weight = log
        w = float(dpg.get_value(t["weight_input"]))
        if log:
            dpg.configure_item(
                t["weight_slider"], min_value=W_LOG_MIN, max_value=W_LOG_MAX, format="10^%.2f"
            )
            dpg.set_value(t["weight_slider"], math.log10(max(w, 10**W_LOG_MIN)))
        else:
            dpg.configure_item(
                t["weight_slider"], min_value=0.0, max_value=W_LINEAR_MAX, format="%.3f"
            )
            dpg.set_value(t["weight_slider"], w)

    def _show_weight(self, w: float) -> None:
        t = self._tags
        dpg.set_value(t["weight_input"], w)
        if self._log_weight():
            dpg.set_value(t["weight_slider"], math.log10(max(w, 10**W_LOG_MIN)))
        else:
            dpg.set_value(t["weight_slider"], w)

    def _sync_controls(self) -> None:
        """Set every control from the session's settings (after start or a switch)."""
        s = self.session.settings
        t = self._tags
        dpg.set_value(t["log"], self.log_weight)
        self._show_weight(s.weight)
        self._set_log(self.log_weight)
        dpg.set_value(t["estimator"], s.estimator)
        dpg.set_value(t["estimator_doc"], ESTIMATOR_DOCS.get(s.estimator, ""))
        dpg.set_value(t["steps"], s.steps)
        dpg.set_value(t["candidates"], s.candidates)
        dpg.set_value(t["pick_best"], s.pick_best)
        dpg.set_value(t["seed"], s.seed)
        dpg.set_value(t["env"], s.env_name)

    def _refresh(self) -> None:
        """Status bar every frame; text and plots when the shown step changed."""
        while self._pending_errors:
            self.report(self._pending_errors.popleft(), error=True)
        t = self._tags
        spec = self.frame_spec
        view = spec.view if spec is not None else None
        if spec is not None and spec.version != self._plotted_version:
            self._plotted_version = spec.version
            self._plot(spec)
        self._request_sweep()
        if self.sweep is not self._sweep_shown:
            self._plot_sweep()
        elif self.worker.playing != self._sweep_paused_note:
            # The sweep is computed while paused only: say so, rather than show a stale or
            # empty plot without a word.
            self._sweep_paused_note = self.worker.playing
            if self.worker.playing:
                dpg.configure_item(t["plot_sweep"], label=SWEEP_WHILE_PLAYING)
            elif self._sweep_shown is not None:
                self._plot_sweep()
        # After a switch (or a refused one) the controls show what the session really has.
        resync = self._resync or (
            view is not None and dpg.get_value(t["env"]) != view.settings.env_name
        )
        if resync and not self.worker.busy:
            self._resync = False
            self._sync_controls()
        playing = self.worker.playing
        dpg.configure_item(t["play"], label="Pause" if playing else "Play")
        dpg.bind_item_theme(t["play"], self._play_theme if playing else 0)
        self._status()

    def _plot(self, spec: FrameSpec) -> None:
        """Text and plots of the frame's step, from the frame's ``SessionView`` only."""
        t = self._tags
        view = spec.view
        if view is None:
            return
        rec = spec.record
        label = view.label
        random = view.random
        dpg.set_value(
            t["checkpoint"],
            f"checkpoint: {label}" + (" (untrained)" if random else ""),
        )
        dpg.set_value(t["label"], "  RANDOM WEIGHTS" if random else "")
        dpg.set_value(t["gl"], f"GL: {self.frames.stats.gl}")
        if rec is None:
            return
        s = rec.settings
        max_steps = view.max_steps or "?"
        live = view.live_step
        dpg.configure_item(t["timeline"], max_value=max(live, 1))
        dpg.set_value(t["timeline"], rec.index)
        dpg.set_value(t["ep_shown"], [[float(rec.index)]])
        # While playing, the shown frame may trail the worker by a step: that is not scrubbing.
        viewing = view.scrubbing and rec.index < live
        dpg.configure_item(t["live"], label=f"Live ({live})" if viewing else "Live")
        dpg.set_value(
            t["info"],
            f"{s.env_name}\nepisode {view.episode}   step {rec.index}/{max_steps}"
            + (f" (recorded; live at {live})" if viewing else "")
            + f"   return {view.episode_return:.1f}   "
            + ("SUCCESS" if view.success else "done" if view.done else ""),
        )
        # An agent without a V network (FQL) has NaN for V: say so, never draw a number.
        has_v = view.has_value
        v_text = f"{rec.v:.3f}" if has_v else "n/a (no V network)"
        dpg.set_value(
            t["values"],
            f"Q(s,a) = {rec.q:.3f}   V(s) = {v_text}   chunk {rec.chunk_step + 1}/"
            f"{rec.sample.horizon}",
        )
        curves = view.curves
        x = curves["step"].tolist()
        dpg.set_value(t["ep_q"], [x, curves["q"].tolist()])
        dpg.set_value(t["ep_v"], [x, curves["v"].tolist()] if has_v else [[], []])
        dpg.configure_item(t["ep_v"], label="V(s)" if has_v else "V(s): unavailable")
        dpg.set_value(t["ep_r"], [x, curves["reward"].tolist()])
        hit = curves["success"] > 0
        dpg.set_value(
            t["ep_success"], [curves["step"][hit].tolist(), curves["reward"][hit].tolist()]
        )
        if len(x):
            values = np.concatenate([curves["q"], curves["v"], curves["reward"]])
            values = values[np.isfinite(values)]
            lo, hi = float(values.min()), float(values.max())
            pad = 0.08 * (hi - lo) + 0.05
            dpg.set_axis_limits(t["ep_y"], lo - pad, hi + pad)
            dpg.set_axis_limits(t["ep_x"], 0, max(10.0, x[-1] + 1))
        self._plot_denoising(rec.sample, rec.chunk_step)
        dpg.set_value(t["sw_w"], [[float(max(s.weight, 1e-4))]])
        self._plot_branches(view)

    def _plot_branches(self, view: SessionView) -> None:
        """One Q curve (thick, left axis) and one return curve (thin, right axis) per branch,
        in the branch's colour; the branch selector lists them all."""
        t = self._tags
        branches = view.branches
        shown = dpg.is_item_shown(t["plot_branches"])
        if shown != (len(branches) > 1):
            dpg.configure_item(t["plot_branches"], show=len(branches) > 1)
            self._layout()
        labels = [b.label for b in branches]
        dpg.configure_item(t["branch"], items=labels)
        dpg.set_value(t["branch"], next(b.label for b in branches if b.id == view.active))
        if len(branches) == 1 and not self._branch_series:
            return  # the plot is hidden: nothing to draw into it
        while len(self._branch_series) > len(branches):
            for item in self._branch_series.pop():
                dpg.delete_item(item)
        while len(self._branch_series) < len(branches):
            i = len(self._branch_series)
            name = "main" if i == 0 else f"#{i}"
            if i not in self._branch_themes:
                color = rgb255(branch_rgba(i))
                self._branch_themes[i] = (
                    line_theme(color, 2.5),
                    line_theme((*color[:3], 170), 1.0),
                )
            q = dpg.add_line_series([], [], label=f"{name} Q", parent=t["br_y"])
            ret = dpg.add_line_series([], [], label=f"{name} return", parent=t["br_y2"])
            dpg.bind_item_theme(q, self._branch_themes[i][0])
            dpg.bind_item_theme(ret, self._branch_themes[i][1])
            self._branch_series.append((q, ret))
        for b, (q, ret) in zip(branches, self._branch_series, strict=True):
            curves = b.curves
            x = curves["step"].tolist()
            dpg.set_value(q, [x, curves["q"].tolist()])
            dpg.set_value(ret, [x, curves["return"].tolist()])
        for axis in ("br_x", "br_y", "br_y2"):
            dpg.fit_axis_data(t[axis])

    def _request_sweep(self) -> None:
        """Ask the worker for a sweep preview when the step, estimator, T, N or seed changed
        (a pending request is replaced, so requests coalesce). Not while playing: a sweep per
        step would take the worker's time from the steps."""
        spec = self.frame_spec
        if spec is None or spec.view is None or self.worker.playing:
            return
        key = sweep_key(spec.view)
        if key == self._sweep_wanted:
            return
        self._sweep_wanted = key

        def run(session: Session) -> None:
            self.sweep = self.manifold.sweep(session)

        self.worker.submit("sweep", run)

    def _plot_sweep(self) -> None:
        t = self._tags
        sweep = self._sweep_shown = self.sweep
        w = sweep.weights.tolist()
        dpg.set_value(t["sw_q"], [w, sweep.q_mean.tolist()])
        dpg.set_value(t["sw_d"], [w, np.nan_to_num(sweep.distance_mean, nan=0.0).tolist()])
        available = math.isfinite(sweep.threshold)
        dpg.configure_item(t["sw_d"], show=available)
        dpg.configure_item(t["sw_thr"], show=available)
        if available:
            dpg.set_value(t["sw_thr"], [[sweep.threshold]])
            d = np.concatenate([sweep.distance_mean, [sweep.threshold]])
            dpg.set_axis_limits(t["sw_y2"], 0.0, float(d.max()) * 1.1 + 1e-6)
        dpg.configure_item(
            t["plot_sweep"],
            # The sweep is of the live step: scrubbing the timeline never re-samples.
            label=f"Sweep of w at live step {sweep.key[1]} ({sweep.seconds * 1000:.0f} ms)"
            + ("" if available else ": distance n/a"),
        )
        lo, hi = float(sweep.q_mean.min()), float(sweep.q_mean.max())
        pad = 0.08 * (hi - lo) + 1e-3
        dpg.set_axis_limits(t["sw_y"], lo - pad, hi + pad)
        dpg.set_axis_limits(t["sw_x"], w[0] * 0.8, w[-1] * 1.25)

    def _plot_denoising(self, sample, chunk_step: int) -> None:
        t = self._tags
        g, u = sample.guided, sample.unguided
        steps = g.steps
        k = np.arange(steps + 1, dtype=np.float64)
        q_g, q_u = sample.q_denoise, sample.q_denoise_ghost  # [T+1, N]: Q(a_hat), Q(final)
        dpg.set_value(t["q_unguided"], nan_joined(k, q_u))
        dpg.set_value(t["q_guided"], nan_joined(k, q_g))
        e = sample.executed
        dpg.set_value(t["q_exec"], [k.tolist(), q_g[:, e].astype(np.float64).tolist()])
        off = sample.off_manifold if sample.off_manifold is not None else np.zeros(0, bool)
        q_off = q_g[-1][off].astype(np.float64).tolist()
        dpg.set_value(t["q_off"], [[float(steps)] * len(q_off), q_off])
        finite = np.concatenate([q_g.ravel(), q_u.ravel()])
        finite = finite[np.isfinite(finite)]
        if finite.size:
            lo, hi = float(finite.min()), float(finite.max())
            pad = 0.08 * (hi - lo) + 1e-6
            dpg.set_axis_limits(t["q_y"], lo - pad, hi + pad)
        dpg.set_axis_limits(t["q_x"], 0, steps)

        # a_hat at each step, then the final action, of the executed candidate's current
        # action in the chunk (5 env dims), guided solid and unguided faint.
        d = g.a_hat.shape[-1] // sample.horizon
        sl = slice(chunk_step * d, (chunk_step + 1) * d)
        a_g = np.concatenate([g.a_hat[:, e, sl].numpy(), g.final[e, sl].numpy()[None]])
        a_u = np.concatenate([u.a_hat[:, e, sl].numpy(), u.final[e, sl].numpy()[None]])
        for j in range(len(_ACTION_NAMES)):
            shown = j < d
            dpg.configure_item(t[f"a_u{j}"], show=shown)
            dpg.configure_item(t[f"a_g{j}"], show=shown)
            if shown:
                dpg.set_value(t[f"a_u{j}"], [k.tolist(), a_u[:, j].astype(np.float64).tolist()])
                dpg.set_value(t[f"a_g{j}"], [k.tolist(), a_g[:, j].astype(np.float64).tolist()])
        dpg.set_axis_limits(t["a_x"], 0, steps)

    def _status(self) -> None:
        t = self._tags
        spec = self.frame_spec
        if spec is not None and spec.view is not None:
            dpg.set_value(t["status_text"], "  |  ".join(self._status_parts(spec, spec.view)))
        self._record_indicator()
        now = time.monotonic()
        errors = [m for m in self.messages if m.error and now - m.time < ERROR_SECONDS]
        notes = [m for m in self.messages if not m.error and now - m.time < 5.0]
        dpg.set_value(t["status_error"], f"ERROR {errors[-1].text}" if errors else "")
        dpg.set_value(t["status_note"], notes[-1].text if notes and not errors else "")

    def _status_parts(self, spec: FrameSpec, view: SessionView) -> list[str]:
        st = self.frames.stats
        rec = spec.record
        s = view.settings
        parts = [
            f"GUI {dpg.get_frame_rate():4.0f} fps",
            f"scene {self.scene_fps:4.1f} fps",
            f"policy {self.session.timings.policy:5.0f} ms",
            f"render {st.scene_ms + st.render_ms:4.0f} ms",
            f"upload {self._upload_ms:4.1f} ms",
            f"step {rec.index if rec else 0}",
            f"return {view.episode_return:.1f}",
            "success" if view.success else "no success yet",
            f"{s.estimator} w={s.weight:.4g} T={s.steps} N={s.candidates}"
            + (" best-of" if s.pick_best else ""),
        ]
        dist = rec.sample.distances if rec is not None else None
        if dist is not None:
            n = len(dist.off_manifold)
            parts.append(
                f"off-manifold {int(dist.off_manifold.sum())}/{n}"
                f" (w=0: {int(dist.ghost_off_manifold.sum())}/{n})"
            )
        elif rec is not None:
            parts.append("distance to data n/a" + (" (random weights)" if view.random else ""))
        probe = self.landscape.status_part()
        if probe is not None:
            parts.append(probe)
        if self.worker.busy:
            parts.append("sampling ...")
        return parts

    def status_text(self) -> str:
        """The status bar's text as shown (for tests and scripts)."""
        t = self._tags
        return "  ".join(
            dpg.get_value(t[k]) for k in ("status_text", "status_error", "status_note")
        )
