"""MuJoCo rendering on a thread of its own, frames handed to the GUI through a buffer.

MuJoCo's GL context and Dear PyGui's must not share a thread (same-thread use crashed with
GLX, EGL and OSMesa alike; docs/ARCHITECTURE.md). ``FrameStream`` therefore creates its
``SceneRenderer`` on its own thread and renders there whenever something visible changed:
the session published a new frame, the camera moved, or a layer or render setting changed.
Each frame is converted once to float32 RGB (the only pixel type Dear PyGui textures take)
into a back buffer; the GUI thread copies the newest one into its texture buffer with
``take`` (about 1 ms at 640x480), so neither thread ever waits for the other's GL work.

The renderer draws the recorded physics state into a private ``MjData`` (never the env's, which
the policy thread is stepping), so any state can be shown: the current one, or a past one.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

import mujoco
import numpy as np

from core.render import Overlay, OverlayLayers, Polyline, RenderSettings, SceneRenderer
from viewer.session import FrameSpec

FrameHook = Callable[[np.ndarray, FrameSpec], None]
_STATE_SPEC = int(mujoco.mjtState.mjSTATE_INTEGRATION)
_IDLE_WAIT = 0.25
_FPS_WINDOW = 2.0


@dataclass(frozen=True)
class SceneLayer:
    """Paths another part of the GUI draws over the session's frames (e.g. the comparison's
    rows), published whole by the GUI thread with ``FrameStream.set_layer``.

    The render thread draws it on a frame only when ``key_of(spec) == key``: ``key_of`` must
    be a pure function of the frame (its ``record`` and ``view`` snapshots), so the renderer
    never reads the live session.

    Attributes:
        key: what the layer belongs to.
        key_of: ``(FrameSpec) -> key`` of a frame.
        lines: the paths, in world coordinates.
        alone: draw the layer without the session's candidates (branches stay).
    """

    key: tuple
    key_of: Callable[[FrameSpec], tuple]
    lines: tuple[Polyline, ...]
    alone: bool = False

    def applied(self, spec: FrameSpec) -> FrameSpec:
        """``spec`` with the layer drawn, or ``spec`` itself when it does not belong there."""
        if spec.record is None or spec.overlay is None or self.key_of(spec) != self.key:
            return spec
        lines = [*spec.overlay.polylines, *self.lines]
        if self.alone:
            h = spec.overlay.final.shape[1]
            overlay = Overlay(
                origin=spec.overlay.origin,
                denoise=np.empty((0, 0, h, 3)),
                final=np.empty((0, h, 3)),
                polylines=lines,
            )
        else:
            overlay = replace(spec.overlay, polylines=lines)
        return replace(spec, overlay=overlay)


@dataclass
class FrameStats:
    """Render-thread figures: frames rendered, when the last one was ready
    (``time.perf_counter()``), frames per second over the last ~2 s, and milliseconds of the
    last frame's parts (scene + overlay build, GL render, to-float)."""

    frames: int = 0
    ready_at: float = 0.0
    fps: float = 0.0
    scene_ms: float = 0.0
    render_ms: float = 0.0
    convert_ms: float = 0.0
    dropped_geoms: int = 0
    gl: str = ""


class FrameStream:
    """Renders a frame source on a private thread.

    Args:
        source: returns the ``FrameSpec`` to show (called on the render thread; must be
            cheap and thread-safe, like ``Session.frame``).
        settings: render settings; None lets the renderer pick fast defaults for its GL.
        size: ``(width, height)`` of the frames when ``settings`` is None.
        layers: overlay layers to draw.
        on_error: called on the render thread with a message when a frame fails.
    """

    def __init__(
        self,
        source: Callable[[], FrameSpec],
        settings: RenderSettings | None = None,
        layers: OverlayLayers | None = None,
        on_error: Callable[[str], None] | None = None,
        size: tuple[int, int] | None = None,
    ) -> None:
        self.source = source
        self._size = size
        self.layers = layers or OverlayLayers()
        self.on_error = on_error
        self.frame_hooks: list[FrameHook] = []
        # Drawn over the source's frames, by name (the comparison's paths, a probe ...).
        self.scene_layers: dict[str, SceneLayer] = {}
        self.stats = FrameStats()
        self._settings = settings
        self._cv = threading.Condition()
        self._commands: deque[Callable[[SceneRenderer], None]] = deque()
        self._dirty = True
        self._stop = False
        self._ready: np.ndarray | None = None
        self._ready_spec: FrameSpec | None = None
        self._ready_serial = 0
        self._taken_serial = 0
        self._shown_version = -1
        self._times: deque[float] = deque()
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self.preset = "front"
        self.path_scale = 1.0
        self.requested = 0
        self.served = 0
        self.started_version = -1  # version of the state the renderer last began drawing
        self.settings: RenderSettings | None = None
        self._thread = threading.Thread(target=self._run, name="qgf-render", daemon=True)
        self._thread.start()
        self._started.wait(60.0)
        if self._start_error is not None:
            raise RuntimeError(f"renderer failed to start: {self._start_error}") from (
                self._start_error
            )

    # --- any thread ---------------------------------------------------------------------
    def request(self) -> int:
        """Render again even if the source did not change (e.g. a setting changed).

        Returns a ticket: once ``served >= ticket``, a frame reflecting the request is ready.
        """
        with self._cv:
            self._dirty = True
            self.requested += 1
            self._cv.notify_all()
            return self.requested

    def wake(self) -> None:
        """Look at the source now (e.g. the session just changed), instead of at the next
        idle poll; renders only if its version changed."""
        with self._cv:
            self._cv.notify_all()

    def _command(self, fn: Callable[[SceneRenderer], None]) -> int:
        with self._cv:
            self._commands.append(fn)
            self._dirty = True
            self.requested += 1
            self._cv.notify_all()
            return self.requested

    def wait_served(self, ticket: int, timeout: float = 30.0) -> bool:
        """Block until a frame made after request ``ticket`` is ready; False on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: self.served >= ticket, timeout)

    def move_camera(self, kind: str, dx: float, dy: float) -> int:
        """Orbit / pan / zoom by a mouse motion (fractions of the image height)."""
        return self._command(lambda r: r.move_camera(kind, dx, dy))

    def set_preset(self, name: str) -> int:
        """Camera preset: front, side, top or follow."""

        def apply(r: SceneRenderer) -> None:
            r.set_preset(name, self._data)
            self.preset = r.preset

        return self._command(apply)

    def set_layer(self, layer: SceneLayer | None, name: str = "compare") -> int:
        """Draw ``layer`` over the frames it belongs to, in the slot ``name`` (None empties
        it); returns a ticket."""
        layers = dict(self.scene_layers)
        if layer is None:
            layers.pop(name, None)
        else:
            layers[name] = layer
        self.scene_layers = layers  # replaced whole: the render thread reads it unlocked
        return self.request()

    def set_path_scale(self, k: float) -> int:
        """Magnify candidate paths about the effector (1 = true size; see draw_overlay)."""
        self.path_scale = float(k)

        def apply(r: SceneRenderer) -> None:
            r.path_scale = self.path_scale

        return self._command(apply)

    def set_layers(self, **changes: bool) -> int:
        self.layers = replace(self.layers, **changes)
        return self.request()

    def configure(self, **changes) -> int:
        """Change render settings (width, height, offsamples, shadows, skybox, reflection)."""

        def apply(r: SceneRenderer) -> None:
            r.configure(replace(r.settings, **changes))
            self.settings = replace(r.settings)

        return self._command(apply)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(height, width, 3)`` of the frames currently produced."""
        s = self.settings
        return (s.height, s.width, 3)

    def take(self, out: np.ndarray) -> FrameSpec | None:
        """Copy the newest finished frame into ``out`` (``[H, W, 3]`` float32) if there is
        one not yet taken and it fits; returns its ``FrameSpec`` (None if nothing new)."""
        with self._cv:
            if self._ready is None or self._ready_serial == self._taken_serial:
                return None
            if self._ready.shape != out.shape:
                return None
            np.copyto(out, self._ready)
            self._taken_serial = self._ready_serial
            return self._ready_spec

    def latest_shape(self) -> tuple[int, ...] | None:
        """Shape of the newest finished frame (the GUI resizes its texture to it)."""
        with self._cv:
            return None if self._ready is None else self._ready.shape

    def wait_frame(self, after: int, timeout: float = 10.0) -> bool:
        """Block until more than ``after`` frames were rendered; False on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: self.stats.frames > after, timeout)

    def close(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(timeout)

    # --- the render thread --------------------------------------------------------------
    def _run(self) -> None:
        renderer: SceneRenderer | None = None
        model: mujoco.MjModel | None = None
        self._data: mujoco.MjData | None = None
        try:
            spec = self.source()
            model = spec.model
            renderer = SceneRenderer(model, self._settings, size=self._size)
            self._data = mujoco.MjData(model)
            self.settings = replace(renderer.settings)
            self.stats.gl = renderer.gl_vendor
        except BaseException as e:
            self._start_error = e
            self._started.set()
            return
        self._started.set()
        rgb = np.empty(renderer.shape, np.uint8)
        try:
            while True:
                with self._cv:
                    while not self._stop and not self._wanted():
                        self._cv.wait(_IDLE_WAIT)
                    if self._stop:
                        return
                    commands = list(self._commands)
                    self._commands.clear()
                    self._dirty = False
                    ticket = self.requested
                spec = self.source()
                self.started_version = spec.version
                try:
                    if spec.model is not model:
                        # A new env: a new renderer (GL objects belong to the model).
                        renderer.close()
                        model = spec.model
                        renderer = SceneRenderer(model, renderer.settings)
                        self._data = mujoco.MjData(model)
                    for fn in commands:
                        fn(renderer)
                    if rgb.shape != renderer.shape:
                        rgb = np.empty(renderer.shape, np.uint8)
                    self._render(renderer, spec, rgb)
                except Exception as e:  # one bad frame must not end the render thread
                    self._report(e)
                with self._cv:
                    self.served = ticket
                    self._cv.notify_all()
        finally:
            if renderer is not None:
                renderer.close()

    def _wanted(self) -> bool:
        if self._dirty or self._commands:
            return True
        return self.source().version != self._shown_version

    def _render(self, renderer: SceneRenderer, spec: FrameSpec, rgb: np.ndarray) -> None:
        t0 = time.perf_counter()
        data = self._data
        if spec.physics.shape != (mujoco.mj_stateSize(spec.model, _STATE_SPEC),):
            raise ValueError("frame state does not fit the model")
        mujoco.mj_setState(spec.model, data, spec.physics, _STATE_SPEC)
        mujoco.mj_forward(spec.model, data)
        for layer in self.scene_layers.values():
            spec = layer.applied(spec)
        renderer.update(data, spec.overlay, self.layers)
        t1 = time.perf_counter()
        renderer.render_scene(out=rgb)
        t2 = time.perf_counter()
        # Convert outside the lock into a fresh buffer, then publish it by reference.
        frame = np.empty(rgb.shape, np.float32)
        np.multiply(rgb, np.float32(1.0 / 255.0), out=frame)
        t3 = time.perf_counter()
        self._publish(rgb, frame, spec, (t0, t1, t2, t3), renderer.dropped_geoms)

    def _publish(
        self,
        rgb: np.ndarray,
        frame: np.ndarray,
        spec: FrameSpec,
        times: tuple[float, float, float, float],
        dropped_geoms: int,
    ) -> None:
        """Hand a finished frame (``rgb`` uint8 and ``frame`` float32 of it) to the frame
        hooks and the GUI; ``times``: when the scene build, the GL render, the conversion
        began and when the conversion ended (``time.perf_counter()``)."""
        t0, t1, t2, t3 = times
        for hook in list(self.frame_hooks):
            hook(rgb, spec)
        now = time.perf_counter()
        with self._cv:
            self._ready = frame
            self._ready_spec = spec
            self._ready_serial += 1
            self._shown_version = spec.version
            self._times.append(now)
            while self._times and now - self._times[0] > _FPS_WINDOW:
                self._times.popleft()
            span = self._times[-1] - self._times[0] if len(self._times) > 1 else 0.0
            self.stats = replace(
                self.stats,
                frames=self.stats.frames + 1,
                ready_at=now,
                fps=(len(self._times) - 1) / span if span > 0 else 0.0,
                scene_ms=1000 * (t1 - t0),
                render_ms=1000 * (t2 - t1),
                convert_ms=1000 * (t3 - t2),
                dropped_geoms=dropped_geoms,
            )
            self._cv.notify_all()

    def _report(self, e: BaseException) -> None:
        message = f"render: {type(e).__name__}: {e}"
        traceback.print_exc()
        if self.on_error is not None:
            try:
                self.on_error(message)
            except Exception:
                traceback.print_exc()
