"""``qgf view --demo``: the live demo window, for a talk.

Two to four panes of one episode in lockstep (``viewer.demo_session``), tiled into one
texture, each with a large caption (estimator and weight), the current Q, the success
tally of the demo and a banner when it solves the task; below them a large weight slider
for the live pane. Readable from the back of a room: large fonts, a high-contrast theme,
thicker overlays.

Threads, as in the debugger (``viewer/app.py`` says why): Dear PyGui on the main thread;
the demo's steps and commands on ``viewer.worker.Worker``'s thread; MuJoCo on one render
thread (``DemoFrameStream``), which draws every pane with one renderer and one shared
camera and hands the GUI one tiled frame, captions burnt in, so the recorder (``V``) writes
exactly what the audience sees.

Keys: space play/pause; wheel, up/down, right/left, +/- step the live weight along
``WEIGHT_GRID``; 1-9 the live estimator; C cycles camera presets (drag orbits, right-drag
pans); O overlays; N next episode; Tab the full debugger at this state (and back); V record;
P screenshot; F11 full screen; H help.
"""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dearpygui.dearpygui as dpg
import mujoco
import numpy as np

from core.captions import draw_border, grid_shape, tile
from core.guidance import ESTIMATORS
from core.render import CAMERA_PRESETS, RenderSettings, SceneRenderer
from viewer.demo_session import DemoFrame, DemoSession, PaneView, step_weight
from viewer.frames import FrameStream
from viewer.record import SceneRecorder, default_path
from viewer.window import ERROR_RGB, SceneWindow
from viewer.worker import Worker

TITLE = "qgf demo"
BAR_HEIGHT = 150
GAP = 6  # pixels between panes
THICKNESS = 2.2  # overlay lines and markers, times the debugger's
PATH_SCALE = 3.0  # candidate paths magnified about the effector, as in the debugger
FONT_SIZE = 30
SMALL_FONT_SIZE = 20
ERROR_SECONDS = 20.0
MIN_SCALE = 0.35  # the render scale never drops below this
SCALE_STEP = 0.8
SCALE_SETTLE = 2.0  # seconds between two scale changes
MAX_GUI_FPS = 30.0
LOG_W_MIN = -3.25  # the slider's left end: w = 0 below LOG_W_ZERO
LOG_W_ZERO = -3.1
_STATE = int(mujoco.mjtState.mjSTATE_INTEGRATION)
_FONT = Path(__import__("matplotlib").get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
_FONT_BOLD = _FONT.with_name("DejaVuSans-Bold.ttf")
_LIVE_RGB = (60, 210, 255)
_SUCCESS_RGB = (30, 170, 70)
_HELP = (
    "space play/pause   wheel, arrows, +/- weight   1-{n} estimator   C camera   O overlays   "
    "N next episode   Tab debugger   V record   P screenshot   F11 full screen"
)


def _font(size: int, bold: bool = False):
    from PIL import ImageFont

    path = _FONT_BOLD if bold and _FONT_BOLD.exists() else _FONT
    if path.exists():
        return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


_FONTS: dict[tuple[int, bool], Any] = {}


def font(size: int, bold: bool = False):
    """A cached PIL font of ``size`` pixels (DejaVu Sans, Pillow's own without it)."""
    key = (size, bold)
    if key not in _FONTS:
        _FONTS[key] = _font(size, bold)
    return _FONTS[key]


def decorate(tile_rgb: np.ndarray, pane: PaneView, live: bool) -> None:
    """Burn a pane's caption into its frame, in place: estimator and weight large, then Q,
    step and the success tally; a SUCCESS banner when it solved the task; a border when it
    is the live pane. Only the caption band and the banner are drawn through PIL (copying
    a whole 1920-wide frame in and out of PIL cost more than rendering its text)."""
    from PIL import Image, ImageDraw

    h, w = tile_rgb.shape[:2]
    big, small = max(12, w // 20), max(10, w // 34)
    pad = max(4, big // 4)
    band = min(h, big + small + 3 * pad)
    img = Image.fromarray(tile_rgb[:band])
    draw = ImageDraw.Draw(img, "RGBA")
    draw.rectangle((0, 0, w, band), fill=(0, 0, 0, 175))
    colour = _LIVE_RGB if live else (255, 255, 255)
    draw.text((pad, pad), pane.caption, font=font(big, bold=True), fill=colour)
    q = "Q  -" if not math.isfinite(pane.q) else f"Q {pane.q:.1f}"
    line = f"{q}     step {pane.step}     solved {pane.wins} / {pane.episodes}"
    draw.text((pad, 2 * pad + big), line, font=font(small), fill=(235, 235, 235))
    if live:
        tag = "LIVE"
        tw = draw.textlength(tag, font=font(small, bold=True))
        draw.text((w - pad - tw, pad), tag, font=font(small, bold=True), fill=_LIVE_RGB)
    tile_rgb[:band] = np.asarray(img)
    if pane.success or pane.done:
        text = "SUCCESS" if pane.success else "not solved"
        fill = _SUCCESS_RGB if pane.success else (90, 90, 90)
        bh = min(h - band, int(big * 1.6), h // 8)
        banner = Image.new("RGB", (w, bh), fill)
        draw = ImageDraw.Draw(banner)
        size = min(big, int(bh * 0.7))
        tw = draw.textlength(text, font=font(size, bold=True))
        draw.text(((w - tw) / 2, (bh - size) / 2 - size // 8), text, font=font(size, True))
        tile_rgb[h - bh :] = np.asarray(banner)
    if live:
        draw_border(tile_rgb, _LIVE_RGB, width=max(3, w // 160))


def grid_of(panes: int) -> tuple[int, int]:
    """``(rows, cols)`` of the tiling: side by side up to three, then two by two."""
    return grid_shape(panes, cols=panes if panes <= 3 else 2)


class DemoFrameStream(FrameStream):
    """A ``FrameStream`` that draws each pane of a ``DemoFrame`` with the one renderer and
    camera of its thread (each with its own model fields: colours, targets) and tiles
    them, captions included, into one frame. ``overlays`` shows or hides every pane's
    candidates."""

    overlays = True

    def set_overlays(self, on: bool) -> int:
        self.overlays = bool(on)
        return self.request()

    def set_thickness(self, k: float) -> int:
        def apply(r: SceneRenderer) -> None:
            r.thickness = float(k)

        return self._command(apply)

    def _render(self, renderer: SceneRenderer, spec, rgb: np.ndarray) -> None:
        if not isinstance(spec, DemoFrame) or not spec.panes:
            return super()._render(renderer, spec, rgb)
        t0 = time.perf_counter()
        model, data = spec.model, self._data
        tiles, gl = [], 0.0
        for i, pane in enumerate(spec.panes):
            for name, value in pane.fields.items():
                getattr(model, name)[...] = value
            mujoco.mj_setState(model, data, pane.physics, _STATE)
            mujoco.mj_forward(model, data)
            renderer.update(data, pane.overlay if self.overlays else None, self.layers)
            g = time.perf_counter()
            renderer.render_scene(out=rgb)
            gl += time.perf_counter() - g
            panel = rgb.copy()
            decorate(panel, pane, live=i == spec.live)
            tiles.append(panel)
        rows, cols = grid_of(len(tiles))
        out = tile(tiles, cols=cols, gap=GAP, fill=(0, 0, 0))
        t2 = time.perf_counter()
        frame = np.empty(out.shape, np.float32)
        np.multiply(out, np.float32(1.0 / 255.0), out=frame)
        t3 = time.perf_counter()
        # "scene" counts the scene builds and captions; "render" the GL work of every pane.
        self._publish(out, frame, spec, (t0, t2 - gl, t2, t3), renderer.dropped_geoms)


class DemoApp(SceneWindow):
    """The demo window over one ``DemoSession`` (one per process, like ``ViewerApp``).

    Args:
        session: the demo to show and drive.
        render: render settings of one pane; None fits the panes to the window.
        width, height: the window size.
    """

    title = TITLE
    screenshot_prefix = "qgf-demo"

    def __init__(
        self,
        session: DemoSession,
        render: RenderSettings | None = None,
        width: int = 1600,
        height: int = 900,
    ) -> None:
        super().__init__(width, height)
        self.session = session
        self.preset = session.preset
        self.fullscreen = False
        self.render_scale = 1.0
        self.target_fps = self.preset.target_fps
        self.on_tick: list[Callable[[DemoApp], None]] = []
        self._fit = render is None
        self._full = self._pane_area()  # a pane's size at render scale 1
        self.worker = Worker(session, on_error=self._worker_error)
        self.worker.set_speed(self.preset.speed)
        self.frames = DemoFrameStream(
            session.frame, render, on_error=self._pending_errors.append, size=self._full
        )
        self.worker.after_command.append(self.frames.wake)
        # Play stays at most one step ahead of what is drawn.
        self.worker.play_gate = lambda: self.frames.started_version >= self.session.version
        self.frames.set_preset(self.preset.camera)
        self.frames.set_path_scale(PATH_SCALE)
        self.frames.set_thickness(THICKNESS)
        self.recorder = SceneRecorder(self.frames, on_error=self._pending_errors.append)
        self.frame_spec: DemoFrame | None = None
        self._scale_changed = 0.0
        self._slider_weight: float | None = None
        self._saved: Path | None = None
        # Tab: the debugger runs in a process of its own (one Dear PyGui window per process).
        self.debugger: subprocess.Popen | None = None
        self._debugger_file: Path | None = None
        self._was_playing = False

    # --- lifetime -----------------------------------------------------------------------
    def _build_widgets(self) -> None:
        self._build_window()
        self._build_handlers()

    def _after_build(self) -> None:
        self._show_weight()

    def _before_close(self) -> None:
        if self.recorder.is_recording:
            self.recorder.stop()
        self._close_debugger()

    def _after_close(self) -> None:
        self.session.close()

    # --- the frame ----------------------------------------------------------------------
    def frame(self) -> None:
        """One GUI frame: callbacks, newest tiled frame, render scale, status, draw."""
        self._frame_started = time.perf_counter()
        self._run_callbacks()
        self._call("mouse", self._poll_mouse)
        self._call("upload", self._upload)
        self._call("render scale", self._adapt_scale)
        self._call("debugger", self._watch_debugger)
        self._call("status", self._status)
        for fn in list(self.on_tick):
            self._call("tick", fn, self)
        dpg.render_dearpygui_frame()
        self.gui_frames += 1

    def paced_frame(self) -> None:
        """A GUI frame when a new tiled frame is ready, at most ``MAX_GUI_FPS``."""
        since = time.perf_counter() - self._frame_started
        if since < 1.0 / MAX_GUI_FPS:
            time.sleep(1.0 / MAX_GUI_FPS - since)
        self.frames.wait_frame(self._rendered_seen, timeout=0.1)
        self.frame()

    # --- commands -----------------------------------------------------------------------
    @property
    def live_weight(self) -> float | None:
        live = self.session.live
        return None if live is None else live.spec.weight

    def set_weight(self, weight: float) -> None:
        """The live pane's weight (the other panes keep theirs)."""
        weight = float(weight)
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight must be a finite number >= 0, got {weight}")
        if self.session.live is None:
            raise ValueError("this demo has no live pane")
        self._slider_weight = weight
        self.worker.submit("weight", lambda s: s.set_weight(weight))
        self._show_weight()

    def nudge_weight(self, steps: int) -> None:
        """Step the live weight ``steps`` places along the log grid."""
        base = self._slider_weight if self._slider_weight is not None else self.live_weight
        if base is not None:
            self.set_weight(step_weight(base, steps))

    def on_slider(self, sender, value, user_data=None) -> None:
        """The weight slider's callback (log10 w, w = 0 at the far left). A value typed
        past its ends (ctrl+click), or not a number, is refused and the slider shows the
        live weight again."""
        try:
            v = float(value)
        except (TypeError, ValueError):
            v = math.nan
        if not LOG_W_MIN <= v <= 0.0:
            self._show_weight()
            raise ValueError(
                f"the weight slider takes log10 w in [{LOG_W_MIN:g}, 0], got {value!r}"
            )
        self.set_weight(0.0 if v < LOG_W_ZERO else 10.0**v)

    def select_estimator(self, index: int) -> None:
        """The live pane's estimator: the ``index``-th registered one (number keys, from 1)."""
        names = list(ESTIMATORS)
        if not 1 <= index <= len(names):
            raise ValueError(f"no estimator {index}: 1..{len(names)} are {', '.join(names)}")
        name = names[index - 1]
        self.worker.submit("estimator", lambda s: s.set_estimator(name))
        self.report(f"live pane: {name}")

    def play_pause(self, *_: Any) -> None:
        self.worker.toggle()

    def next_episode(self, *_: Any) -> None:
        self.worker.submit("next", lambda s: s.next_episode())

    def toggle_overlays(self, *_: Any) -> None:
        self.frames.set_overlays(not self.frames.overlays)

    def cycle_camera(self, *_: Any) -> None:
        names = list(CAMERA_PRESETS)
        current = self.frames.preset if self.frames.preset in names else names[-1]
        self.set_camera(names[(names.index(current) + 1) % len(names)])

    def set_camera(self, name: str) -> None:
        self.frames.set_preset(name)
        self.report(f"camera: {name}")

    def toggle_fullscreen(self, *_: Any) -> None:
        dpg.toggle_viewport_fullscreen()
        self.fullscreen = not self.fullscreen

    def toggle_recording(self, *_: Any) -> Path | None:
        """Start or stop recording the tiled panes, captions included (``recordings/``)."""
        if self.recorder.is_recording:
            path = self.recorder.stop()
            self._saved = path
            self.report(f"recording saved: {path}")
            return path
        path = self.recorder.start(default_path(f"demo-{self.session.env_name}"), caption=False)
        self.report(f"recording to {path}")
        return path

    def toggle_debugger(self, *_: Any) -> None:
        """Tab: open the full debugger (``qgf view``) at the live pane's state, the demo
        paused; Tab again, or closing the debugger, comes back and play resumes.

        The session is replayed and saved as a timeline on the demo's worker thread
        (``DemoSession.debugger_session``), then ``qgf view --open`` runs it in a child
        process: Dear PyGui allows one window per process.
        """
        if self.debugger is not None:
            self._close_debugger()
            return
        self._was_playing = self.worker.playing
        self.worker.pause()
        self.report("opening the debugger at this state ...")
        folder = Path(tempfile.mkdtemp(prefix="qgf-demo-"))

        def prepare(demo: DemoSession) -> None:
            from viewer.timeline_file import save_timeline

            session = demo.debugger_session()
            try:
                self._debugger_file = save_timeline(session, folder / "demo.timeline.safetensors")
            finally:
                session.close()

        self.worker.submit("debugger", prepare)

    def _watch_debugger(self) -> None:
        """Start the debugger once its timeline is written; notice when it is closed."""
        if self._debugger_file is not None and self.debugger is None:
            path, self._debugger_file = self._debugger_file, None
            vw, vh = self._viewport()
            cmd = [sys.executable, "-m", "core.cli", "view", "--open", str(path)]
            cmd += ["--width", str(vw), "--height", str(vh)]
            self.debugger = subprocess.Popen(cmd)
            self.report("debugger open: close it or press Tab to come back")
        elif self.debugger is not None and self.debugger.poll() is not None:
            code = self.debugger.returncode
            self.debugger = None
            self.report("back from the debugger" + (f" (it exited with {code})" if code else ""))
            if self._was_playing:
                self.worker.play()

    def _close_debugger(self) -> None:
        if self.debugger is None:
            return
        if self.debugger.poll() is None:
            self.debugger.terminate()
            try:
                self.debugger.wait(10)
            except subprocess.TimeoutExpired:
                self.debugger.kill()
                self.debugger.wait(10)
        self.debugger = None
        self.report("back from the debugger")
        if self._was_playing and not self._closed:
            self.worker.play()

    def set_render_scale(self, scale: float) -> int:
        """Render each pane at ``scale`` of the size it is shown at (1 = full); returns the
        render thread's ticket (``FrameStream.wait_served``)."""
        self.render_scale = float(min(max(scale, MIN_SCALE), 1.0))
        self._scale_changed = time.perf_counter()
        w, h = self._full
        return self.frames.configure(
            width=max(64, int(w * self.render_scale) // 8 * 8),
            height=max(48, int(h * self.render_scale) // 8 * 8),
        )

    def _adapt_scale(self) -> None:
        """While playing below the target fps with the renderer the bottleneck, drop the
        render scale; back to full when paused. It holds while recording."""
        if not self._fit or self.recorder.is_recording:
            return  # a video's frames must all have one size: the scale holds while recording
        now = time.perf_counter()
        if not self.worker.playing:
            if self.render_scale < 1.0:
                self.set_render_scale(1.0)
            return
        if now - self._scale_changed < SCALE_SETTLE or self.render_scale <= MIN_SCALE:
            return
        st = self.frames.stats
        frame_ms = st.scene_ms + st.render_ms + st.convert_ms
        fps = self.scene_fps
        if 0 < fps < self.target_fps and frame_ms > 1000.0 / self.target_fps:
            self.set_render_scale(self.render_scale * SCALE_STEP)

    # --- mouse --------------------------------------------------------------------------
    def _drag_unit(self) -> float:
        """Pixels of one pane's height: all panes share the camera, each shows a row."""
        rows, _ = grid_of(len(self.session.panes))
        return super()._drag_unit() / rows

    def _on_wheel(self, sender, delta, user_data=None) -> None:
        self.nudge_weight(1 if float(delta) > 0 else -1)

    # --- building -----------------------------------------------------------------------
    def _theme(self) -> None:
        with dpg.font_registry():
            if _FONT.exists():
                self._font = dpg.add_font(str(_FONT), FONT_SIZE)
                self._small_font = dpg.add_font(str(_FONT), SMALL_FONT_SIZE)
                dpg.bind_font(self._font)
            else:
                self._font = self._small_font = None
                dpg.set_global_font_scale(FONT_SIZE / 13)
        white, black = (255, 255, 255), (0, 0, 0)
        with dpg.theme() as theme, dpg.theme_component(dpg.mvAll):
            dpg.add_theme_color(dpg.mvThemeCol_WindowBg, (0, 0, 0, 0))
            dpg.add_theme_color(dpg.mvThemeCol_Text, white)
            dpg.add_theme_color(dpg.mvThemeCol_FrameBg, (45, 45, 45))
            dpg.add_theme_color(dpg.mvThemeCol_FrameBgHovered, (70, 70, 70))
            dpg.add_theme_color(dpg.mvThemeCol_FrameBgActive, (90, 90, 90))
            dpg.add_theme_color(dpg.mvThemeCol_SliderGrab, _LIVE_RGB)
            dpg.add_theme_color(dpg.mvThemeCol_SliderGrabActive, white)
            dpg.add_theme_color(dpg.mvThemeCol_Button, (55, 55, 55))
            dpg.add_theme_color(dpg.mvThemeCol_ButtonHovered, (90, 90, 90))
            dpg.add_theme_color(dpg.mvThemeCol_Border, (200, 200, 200))
            dpg.add_theme_color(dpg.mvThemeCol_PopupBg, black)
            dpg.add_theme_style(dpg.mvStyleVar_FramePadding, 12, 12)
            dpg.add_theme_style(dpg.mvStyleVar_GrabMinSize, 36)
            dpg.add_theme_style(dpg.mvStyleVar_FrameBorderSize, 1)
            dpg.add_theme_style(dpg.mvStyleVar_ItemSpacing, 14, 8)
        dpg.bind_theme(theme)
        self._build_error_theme()

    def _build_window(self) -> None:
        t = self._tags
        live = self.session.live is not None
        with dpg.window(
            tag="qgf_demo", pos=(0, 0), width=self.width, height=self.height,
            no_scrollbar=True, no_background=True, no_title_bar=True, no_resize=True,
            no_move=True, no_collapse=True, no_bring_to_front_on_focus=True,
        ) as t["window"]:  # fmt: skip
            t["image"] = dpg.add_image(self._texture)
            with dpg.group(horizontal=True) as t["bar"]:
                t["weight_label"] = dpg.add_text("w")
                t["slider"] = dpg.add_slider_float(
                    min_value=LOG_W_MIN,
                    max_value=0.0,
                    format="",
                    width=600,
                    enabled=live,
                    callback=self.callback("weight slider", self.on_slider),
                )
                t["weight_text"] = dpg.add_text("")
                t["play"] = dpg.add_button(
                    label="pause", callback=self.callback("play", self.play_pause)
                )
                dpg.add_button(label="next", callback=self.callback("next", self.next_episode))
                dpg.add_button(label="camera", callback=self.callback("camera", self.cycle_camera))
                t["rec"] = dpg.add_text("", color=(255, 60, 60))
            with dpg.group(horizontal=True) as t["status"]:
                t["status_text"] = dpg.add_text("starting ...")
                t["status_error"] = dpg.add_text("")
                dpg.bind_item_theme(t["status_error"], self._error_theme)
            t["help"] = dpg.add_text(_HELP.format(n=len(ESTIMATORS)), color=(170, 170, 170))
            if self._small_font is not None:
                for name in ("status", "help"):
                    dpg.bind_item_font(t[name], self._small_font)

    def _build_handlers(self) -> None:
        keys = [
            ("space", dpg.mvKey_Spacebar, self.play_pause),
            ("up", dpg.mvKey_Up, lambda: self.nudge_weight(1)),
            ("right", dpg.mvKey_Right, lambda: self.nudge_weight(1)),
            ("down", dpg.mvKey_Down, lambda: self.nudge_weight(-1)),
            ("left", dpg.mvKey_Left, lambda: self.nudge_weight(-1)),
            ("plus", dpg.mvKey_Add, lambda: self.nudge_weight(1)),
            ("equal", dpg.mvKey_Plus, lambda: self.nudge_weight(1)),
            ("minus", dpg.mvKey_Minus, lambda: self.nudge_weight(-1)),
            ("subtract", dpg.mvKey_Subtract, lambda: self.nudge_weight(-1)),
            ("f11", dpg.mvKey_F11, self.toggle_fullscreen),
            ("tab", dpg.mvKey_Tab, self.toggle_debugger),
            ("o", dpg.mvKey_O, self.toggle_overlays),
            ("n", dpg.mvKey_N, self.next_episode),
            ("c", dpg.mvKey_C, self.cycle_camera),
            ("v", dpg.mvKey_V, self.toggle_recording),
            ("p", dpg.mvKey_P, lambda: self.screenshot()),
            ("h", dpg.mvKey_H, lambda: dpg.configure_item(
                self._tags["help"], show=not dpg.is_item_shown(self._tags["help"]))),
        ]  # fmt: skip
        digits = [getattr(dpg, f"mvKey_{i}") for i in range(1, 10)]
        for i, key in enumerate(digits[: len(ESTIMATORS)], start=1):
            keys.append((str(i), key, lambda i=i: self.select_estimator(i)))
        with dpg.handler_registry():
            for name, key, action in keys:
                self._tags[f"key_{name}"] = dpg.add_key_press_handler(
                    key, callback=self.callback(f"key {name}", lambda *_, a=action: a())
                )
            dpg.add_mouse_wheel_handler(callback=self.callback("wheel", self._on_wheel))

    # --- layout and refresh -------------------------------------------------------------
    def _viewport(self) -> tuple[int, int]:
        if self._built:
            return (
                dpg.get_viewport_client_width() or self.width,
                dpg.get_viewport_client_height() or self.height,
            )
        return self.width, self.height

    def _pane_area(self) -> tuple[int, int]:
        """A pane's size in pixels when the tiled image fills the window above the bar."""
        vw, vh = self._viewport()
        rows, cols = grid_of(len(self.session.panes))
        w = (vw - 16 - GAP * (cols - 1)) // cols
        h = (vh - BAR_HEIGHT - 16 - GAP * (rows - 1)) // rows
        return max(160, w // 8 * 8), max(120, h // 8 * 8)

    def _layout(self) -> None:
        if not self._built:
            return
        t = self._tags
        vw, vh = self._viewport()
        dpg.configure_item(t["window"], width=vw, height=vh)
        aw, ah = vw - 16, vh - BAR_HEIGHT - 16
        th, tw = self._buffer.shape[:2]
        scale = min(aw / tw, ah / th)
        dpg.configure_item(t["image"], width=int(tw * scale), height=int(th * scale))
        dpg.configure_item(t["slider"], width=max(200, int(vw * 0.45)))
        if self._fit and self._pane_area() != self._full:
            self._full = self._pane_area()
            self.set_render_scale(self.render_scale)

    def _show_weight(self) -> None:
        w = self._slider_weight if self._slider_weight is not None else self.live_weight
        if w is None:
            dpg.set_value(self._tags["weight_text"], "no live pane")
            return
        dpg.set_value(self._tags["slider"], math.log10(w) if w > 0 else LOG_W_MIN)
        dpg.set_value(self._tags["weight_text"], f"w = {w:g}")

    def _status(self) -> None:
        self._drain_errors()
        t = self._tags
        spec = self.frame_spec
        playing = self.worker.playing
        dpg.configure_item(t["play"], label="pause" if playing else "play")
        w, h = self.frames.settings.width, self.frames.settings.height
        parts = [
            f"{self.scene_fps:4.1f} fps (target {self.target_fps:g})",
            f"render scale {self.render_scale:.0%} ({w}x{h} per pane)",
            "playing" if playing else "paused",
        ]
        if spec is not None:
            parts += [f"seed {spec.seed}", f"episode {spec.episode}"]
        parts.append(f"sample {self.session.sample_ms:.0f} ms")
        dpg.set_value(t["status_text"], "   ".join(parts))
        now = time.monotonic()
        recent = [m for m in self.messages if now - m.time < ERROR_SECONDS]
        last = recent[-1] if recent else None
        dpg.set_value(t["status_error"], f"   {last.text}" if last else "")
        dpg.configure_item(t["status_error"], color=ERROR_RGB if last and last.error else
                           (140, 210, 255))  # fmt: skip
        rec = self.recorder
        dpg.set_value(t["rec"], f"REC {rec.elapsed:.0f} s" if rec.is_recording else "")


def main(args) -> int:
    """``qgf view --demo``: the preset (or the default two panes) is read and checked
    before any window opens."""
    import sys

    import torch

    from core.defaults import default_checkpoint
    from viewer.demo_session import PresetError, default_preset, load_preset

    torch.set_num_threads(max(1, args.threads))
    try:
        if args.demo_preset:
            preset = load_preset(args.demo_preset, checkpoint=args.checkpoint)
        else:
            checkpoint = args.checkpoint or (None if args.random_weights else default_checkpoint())
            preset = default_preset(checkpoint)
    except PresetError as e:
        print(f"qgf view: error: {e}", file=sys.stderr)
        return 2
    session = DemoSession(preset, device=args.device)
    app = DemoApp(session, width=args.width, height=args.height)
    if args.play or args.frames is None:
        app.worker.play()
    return app.run(frames=args.frames, screenshot=args.screenshot)
