"""The Dear PyGui window of ``qgf view``: scene, overlays, plots, controls and status bar.

Threads (docs/ARCHITECTURE.md says why, and how a change travels to the screen):

- main: Dear PyGui. Builds the widgets, runs their callbacks (manual callback management,
  so every callback runs here, between frames), copies the newest scene frame into the raw
  texture, updates plots and the status bar.
- ``qgf-policy`` (``viewer.worker.Worker``): all session commands (sample, step, reset,
  switches). Widgets send it commands and never wait for it.
- ``qgf-render`` (``viewer.frames.FrameStream``): MuJoCo, on its own GL context.

Every callback goes through ``callback`` (``viewer.window.SceneWindow``, shared with the
demo's window), which turns an exception into a message in the status bar: a failing
callback never ends the app. Extension points: ``frame_hooks`` of ``self.frames`` (called
with every rendered frame, e.g. a recorder), ``panels`` (functions that add widgets to the
controls column), ``on_tick`` (called every GUI frame).
"""

from __future__ import annotations

import math
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dearpygui.dearpygui as dpg

from core import envs
from core.guidance import ESTIMATOR_DOCS
from core.render import (
    RenderSettings,
)
from viewer.compare_view import CompareView
from viewer.controls import ControlsMixin
from viewer.frames import FrameStream
from viewer.landscape_view import LandscapeView
from viewer.manifold_view import ManifoldAnalysis, SweepPreview
from viewer.plots import PlotsMixin
from viewer.record import SceneRecorder, default_path
from viewer.session import FrameSpec, Session, SessionView
from viewer.timeline_file import Timeline, read_timeline, save_timeline
from viewer.timeline_file import default_path as timeline_path
from viewer.widgets import (
    _BACKGROUND,
    ACTIVE_GUI_FPS,
    ACTIVE_SECONDS,
    CONTROLS_WIDTH,
    DEFAULT_CAMERA,
    DEFAULT_PATH_SCALE,
    ERROR_SECONDS,
    IDLE_GUI_FPS,
    LEGEND_HEIGHT,
    LOOP_HOLD,
    MAX_GUI_FPS,
    PLOT_HEIGHT,
    STATUS_HEIGHT,
    SWEEP_WHILE_PLAYING,
    TITLE,
    W_LINEAR_MAX,
    W_LOG_MAX,
    W_LOG_MIN,
    scale_note,
    whole_number,
)
from viewer.window import SceneWindow
from viewer.worker import Worker


class ViewerApp(ControlsMixin, PlotsMixin, SceneWindow):
    """One window over one ``Session``; one per process (Dear PyGui 2.3 crashes on a second
    window in a process whose first ran next to a MuJoCo GL context or loaded a font).

    Args:
        session: the session to show and drive (the app starts its worker and render threads).
        render: render settings for the scene; None picks fast defaults for the GL in use
            and the window's scene size.
        width, height: the window (viewport) size.
    """

    title = TITLE
    clear_color = _BACKGROUND

    def __init__(
        self,
        session: Session,
        render: RenderSettings | None = None,
        width: int = 1280,
        height: int = 800,
    ) -> None:
        super().__init__(width, height)
        self.session = session
        # View preferences live here, not in the session's settings.
        self.log_weight = True  # the weight slider's scale: log10 w, else w
        # Loop: an episode played to its end is followed by the next seed's (for a screen
        # left running); its last frame stays ``loop_hold`` seconds first.
        self.loop = False
        self.loop_hold = LOOP_HOLD
        self._loop_at: float | None = None
        self._loop_state: tuple[int, int] = (-1, -1)  # session version, worker pauses at the end
        self.panels: list[Callable[[ViewerApp], None]] = []
        self.on_tick: list[Callable[[ViewerApp], None]] = []
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
        self.on_tick.append(self._loop_tick)
        self._ended_seen = self.worker.episodes_ended
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
        # Set the controls from the session's settings once the worker is idle: after a
        # timeline was opened, and after any error (a refused value must not stay shown).
        self._resync = False
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
        self._plotted_version = -1
        self._gui_ms = 0.0
        self._last_draw = 0.0
        self._last_input = 0.0
        self._mouse_last: tuple[float, ...] = ()
        self._inputs: list[int | str] = []

    # --- lifetime -----------------------------------------------------------------------
    def _build_widgets(self) -> None:
        self._build_window()
        self._build_help()
        self._build_file_dialog()
        self._build_handlers()

    def _after_build(self) -> None:
        self._sync_controls()

    def _before_close(self) -> None:
        # Finish a recording first, so closing the window leaves a complete file.
        self._finish_recording()

    # --- the frame ----------------------------------------------------------------------
    def frame(self) -> None:
        """One GUI frame: callbacks, new scene frame, plots, status, then draw."""
        self._frame_started = time.perf_counter()
        if self._run_callbacks():
            self._last_input = time.perf_counter()
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

    # --- commands -----------------------------------------------------------------------
    def report(self, text: str, error: bool = False) -> None:
        """``SceneWindow.report``. After an error the controls are set again from the
        session: a value the GUI or the session refused (NaN, text, T beyond its range)
        would otherwise stay in its control."""
        super().report(text, error)
        if error:
            self._resync = True

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
        """The weight slider's callback: log10 w in log mode, w in linear mode. A value
        typed past the slider's ends (ctrl+click) is refused: 10 ** 1e3 is no weight, and
        the input box beside it takes any weight."""
        log = self._log_weight()
        lo, hi = (W_LOG_MIN, W_LOG_MAX) if log else (0.0, W_LINEAR_MAX)
        v = float(value)
        if not lo <= v <= hi:
            scale = "log10 w" if log else "w"
            raise ValueError(f"the weight slider takes {scale} in [{lo:g}, {hi:g}], got {v:g}")
        self.set_weight(10.0**v if log else v)

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
        steps = whole_number("steps T", value)
        self.command("sample", lambda s: s.update(steps=steps))

    def on_candidates(self, sender, value, user_data=None) -> None:
        n = whole_number("candidates N", value)
        self.command("sample", lambda s: s.update(candidates=n))

    def on_pick_best(self, sender, value, user_data=None) -> None:
        flag = bool(value)
        self.command("sample", lambda s: s.update(pick_best=flag))

    def on_seed(self, sender, value, user_data=None) -> None:
        seed = whole_number("seed", value)
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
            if self.loop:
                self.next_episode()
                return
            self.report("the episode has ended: press R to reset")
            return
        self.worker.toggle()

    def on_loop(self, sender, value, user_data=None) -> None:
        """Loop on or off; turned on at an episode that has ended, it moves on at once."""
        self.loop = bool(value)
        ended = self.session.done and not self.worker.playing
        self._loop_at = time.monotonic() if self.loop and ended else None
        self._loop_state = self._loop_now()

    def next_episode(self, *_: Any) -> None:
        """Start the episode of the next seed (the seed control follows) and play it."""

        def advance(session: Session) -> None:
            session.reset(seed=session.settings.seed + 1)
            self._resync = True

        self.command("reset", advance)
        self.worker.play()

    def _loop_now(self) -> tuple[int, int]:
        return self.session.version, self.worker.pauses

    def _loop_tick(self, _app: ViewerApp) -> None:
        """Every GUI frame: with loop on, ``loop_hold`` seconds after play ran an episode to
        its end, the next one starts; anything done in between (a pause, a scrub, a branch,
        a new sample, a reset) keeps the ended episode on screen instead."""
        ended = self.worker.episodes_ended
        if ended != self._ended_seen:
            self._ended_seen = ended
            self._loop_at = time.monotonic() + self.loop_hold if self.loop else None
            self._loop_state = self._loop_now()
        if self._loop_at is None or time.monotonic() < self._loop_at:
            return
        self._loop_at = None
        # (The sweep plot's own request, made as play stops, changes neither.)
        untouched = self._loop_now() == self._loop_state
        if self.loop and untouched and self.session.done and not self.worker.playing:
            self.next_episode()

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
        self.view_step(whole_number("timeline step", value))

    def go_live(self, *_: Any) -> None:
        self.view_step(None)

    def branch_here(self, *_: Any) -> None:
        """Continue from the step shown in a new branch, with the current settings (then
        change a setting to make it differ; the old line of play is kept)."""
        self.worker.pause()
        self.command("branch", lambda s: s.branch_from())

    def switch_branch(self, branch_id: int) -> None:
        """Make branch ``branch_id`` the active one; the controls then show the settings it
        was last sampled with (the session takes them over)."""
        self.worker.pause()

        def switch(session: Session) -> None:
            session.switch_branch(branch_id)
            self._resync = True

        self.command("branch", switch)

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
        dpg.set_value(self._tags["scale_note"], scale_note(k))

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

    # --- keys and mouse -----------------------------------------------------------------
    def _typing(self) -> bool:
        return any(dpg.is_item_active(t) for t in self._inputs)

    def _key(self, action: Callable[[], Any]) -> Callable[..., None]:
        def on_key(*_: Any) -> None:
            if not self._typing():
                action()

        return on_key

    def _on_wheel(self, sender, delta, user_data=None) -> None:
        if dpg.is_item_hovered(self._tags["image"]):
            self.frames.move_camera("zoom", 0.0, -0.05 * float(delta))

    # --- building -----------------------------------------------------------------------
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
        self._drain_errors()
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
        ]
        if rec is not None and (bad := int(rec.sample.guided.nonfinite.sum())):
            # Drawn magenta in the scene; such a candidate stays at its last finite iterate.
            parts.append(f"NON-FINITE guidance {bad}/{len(rec.sample.guided.nonfinite)}")
        parts.append(
            f"{s.estimator} w={s.weight:.4g} T={s.steps} N={s.candidates}"
            + (" best-of" if s.pick_best else "")
        )
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
