"""The critic's landscape at the step shown: a heatmap of Q (or of the Q heads' spread) on a
2-D slice of the action space, the data's density as contours, and the step's denoising on
top (``core.landscape`` computes; this draws).

- The grid is computed on the policy worker (``ViewerApp.command``), one batched critic call,
  only when the step shown or the slice changed, and not while playing unless pinned. It
  depends on the state, the noise and the slice, not on the weight: the other dimensions are
  held by default at the action the w = 0 candidates would execute (``SliceSpec.hold``), so
  moving the weight moves the paths over a heatmap that stays put.
- The paths come from the frame's own record (the GUI draws snapshots only): guided a_hat
  along denoising in the denoising-time colours, the w = 0 ghost in grey, finals, red where
  off the manifold, the executed one marked, and the applied gradient as short strokes; the
  comparison's rows (``viewer.compare_view``) in their row colours when it is of this step.
- Hovering reads Q, the heads' std and the density at the cursor; a click sets a probe: its
  Q and distance to the data go to the status bar, and its effector target into the scene.
- ``prefs`` / ``apply_prefs`` are the slice and layer choices that a saved timeline keeps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from core import envs
from core.landscape import HOLDS, Landscape, SliceSpec, base_action, critic_landscape, project
from core.render import Polyline
from viewer.frames import SceneLayer
from viewer.widgets import Host, line_theme, rgb255, whole_number

if TYPE_CHECKING:
    from viewer.session import Session, StepRecord

DIM_NAMES = ("dx", "dy", "dz", "dyaw", "gripper")
RESOLUTIONS = (32, 64, 128)
LAYERS = ("density", "paths", "ghost", "gradients", "compare")
HEAT = ("Q", "head std")
# Denoising time from early to late, as the overlay draws it (blue to yellow).
_TIME_RAMP = ((0.25, 0.35, 1.0), (0.65, 0.35, 0.95), (0.95, 0.45, 0.45), (1.0, 0.85, 0.2))
GHOST_RGB = (150, 150, 150)
OFF_RGB = (255, 50, 50)
PROBE_RGBA = (1.0, 1.0, 1.0, 1.0)
WINDOW_SIZE = (560, 470)


def time_rgb(u: float) -> tuple[int, int, int]:
    """The denoising-time colour at ``u`` in [0, 1] (0: first step)."""
    ramp = np.asarray(_TIME_RAMP)
    x = np.clip(u, 0.0, 1.0) * (len(ramp) - 1)
    i = min(int(x), len(ramp) - 2)
    c = ramp[i] + (x - i) * (ramp[i + 1] - ramp[i])
    return tuple(int(255 * v) for v in c)


def heat_key(view, record: StepRecord, spec: SliceSpec) -> tuple:
    """What the grid depends on: the networks, the state, the noise, the slice, and for a
    slice held at the guided candidates, what they were sampled with."""
    s = record.sample.settings
    key = (
        view.networks,
        record.index,
        np.asarray(record.obs).tobytes(),
        s.seed,
        s.steps,
        s.candidates,
        spec,
    )
    if spec.hold != "ghost":
        key += (s.weight, s.estimator, s.pick_best)
    return key


@dataclass
class LandscapeResult:
    """A grid computed on the worker, for the step and slice of ``key``."""

    key: tuple
    index: int
    landscape: Landscape
    env_action_dim: int
    horizon: int


@dataclass
class Probe:
    """An action picked on the slice: its Q, distance to the data, and effector target."""

    key: tuple
    xy: tuple[float, float]
    q: float
    distance: float | None
    target: np.ndarray  # [H, 3] effector targets of its chunk
    origin: np.ndarray

    def text(self) -> str:
        d = "n/a" if self.distance is None else f"{self.distance:.3f}"
        return f"probe ({self.xy[0]:+.2f}, {self.xy[1]:+.2f}): Q {self.q:.3f}, to data {d}"


def compute(session: Session, spec: SliceSpec, manifold) -> LandscapeResult:
    """The grid at the session's shown step (worker thread)."""
    rec = session.viewed
    sample = rec.sample
    policy = session.policy
    horizon = int(policy.horizon)
    env_dim = int(policy.action_dim) // horizon
    device = next(policy.parameters()).device
    base = base_action(
        sample.guided.final, sample.executed, spec.hold, ghost=sample.unguided.final
    ).to(device)
    obs = torch.as_tensor(np.asarray(rec.obs), dtype=torch.float32, device=device)
    land = critic_landscape(session.critic, obs, base, spec, env_dim, horizon, manifold)
    return LandscapeResult(
        heat_key(session.frame().view, rec, spec), rec.index, land, env_dim, horizon
    )


def probe_at(session: Session, result: LandscapeResult, xy: tuple[float, float], manifold) -> Probe:
    """Q, distance to the data and the effector target of the slice's action at ``xy``
    (worker thread)."""
    land = result.landscape
    a = torch.as_tensor(land.base, dtype=torch.float32).clone()
    dx, dy = land.spec.flat_dims(result.env_action_dim)
    a[dx], a[dy] = float(xy[0]), float(xy[1])
    rec = session.viewed
    device = next(session.policy.parameters()).device
    obs = torch.as_tensor(np.asarray(rec.obs), dtype=torch.float32, device=device)[None]
    with torch.no_grad():
        q = float(session.critic(obs, a[None].to(device))[0])
    distance = None
    if manifold is not None:
        distance = float(manifold.query(obs, a[None].to(device)).distance[0])
    start = envs.effector_state_at(session.env, rec.snapshot)
    target = envs.action_to_ee_targets(
        session.env, a.numpy().reshape(1, result.horizon, -1), start=start
    ).xyz[0]
    return Probe(result.key, (float(xy[0]), float(xy[1])), q, distance, target, start[0])


class LandscapeView:
    """The landscape panel, window and probe of one ``ViewerApp``.

    Install with ``app.landscape = LandscapeView(app)``, ``app.panels.append(view.build)``
    and ``app.on_tick.append(view.tick)``; the app's L key calls ``toggle_window``.
    """

    def __init__(self, app: Host) -> None:
        self.app = app
        self.spec = SliceSpec()
        self.heat = HEAT[0]
        self.layers = {name: True for name in LAYERS}
        self.pinned = False
        self.result: LandscapeResult | None = None
        self.probe: Probe | None = None
        self.busy = False
        self.note = "open the window to compute"
        self._wanted: tuple | None = None
        self._drawn: tuple | None = None
        self._layer_state: tuple | None = None
        self._themes: dict[tuple, int | str] = {}
        self.tags: dict[str, Any] = {}
        self.hover_text = ""

    # --- preferences a timeline keeps ---------------------------------------------------
    def prefs(self) -> dict[str, Any]:
        return {"slice": self.spec.to_dict(), "heat": self.heat, "layers": dict(self.layers)}

    def apply_prefs(self, prefs: dict[str, Any] | None) -> None:
        """Restore ``prefs`` (from a timeline); unknown or bad entries are ignored."""
        if not isinstance(prefs, dict):
            return
        if "slice" in prefs:
            try:
                spec = SliceSpec.from_dict(prefs["slice"])
                spec.validate(len(DIM_NAMES), 1_000)
                self.spec = spec
            except (TypeError, ValueError):
                pass  # a slice this viewer cannot show: keep the current one
        if prefs.get("heat") in HEAT:
            self.heat = prefs["heat"]
        for name, on in (prefs.get("layers") or {}).items():
            if name in self.layers:
                self.layers[name] = bool(on)
        self._sync_widgets()
        self._drawn = None

    # --- commands ---------------------------------------------------------------------
    def set_slice(self, **changes: Any) -> None:
        spec = replace(self.spec, **changes)
        spec.validate(len(DIM_NAMES), 1_000)
        self.spec = spec
        self.probe = None

    def set_layer(self, name: str, on: bool) -> None:
        if name not in self.layers:
            raise ValueError(f"unknown layer {name!r}; layers: {', '.join(LAYERS)}")
        self.layers[name] = bool(on)
        self._drawn = None

    def _request(self, key: tuple) -> None:
        app, spec = self.app, self.spec
        self.busy, self._wanted = True, key

        def run(session: Session) -> None:
            try:
                manifold = app.manifold.manifold_for(session)
                self.result = compute(session, spec, manifold)
            finally:
                self.busy = False

        app.command("landscape", run)

    def request_probe(self, xy: tuple[float, float]) -> None:
        result = self.result
        if result is None:
            raise RuntimeError("no landscape yet")
        app = self.app

        def run(session: Session) -> None:
            self.probe = probe_at(session, result, xy, app.manifold.manifold_for(session))

        app.command("landscape probe", run)

    # --- GUI thread -------------------------------------------------------------------
    def build(self, app: Host) -> None:
        """The panel in the controls column (an ``app.panels`` entry), and the window."""
        import dearpygui.dearpygui as dpg

        t, cb = self.tags, app.callback
        with dpg.collapsing_header(label="Critic landscape", default_open=False):
            t["open"] = dpg.add_button(
                label="Landscape window (L)",
                callback=cb("landscape", lambda *_: self.toggle_window()),
            )
            t["pin"] = dpg.add_checkbox(
                label="update while playing", default_value=self.pinned,
                callback=cb("landscape pin", lambda s, v, u: setattr(self, "pinned", bool(v))),
            )  # fmt: skip
            t["note"] = dpg.add_text(self.note, wrap=0, color=(170, 175, 185))
        self._build_window()

    def _build_window(self) -> None:
        import dearpygui.dearpygui as dpg

        t, cb = self.tags, self.app.callback
        with dpg.window(
            label="Critic landscape", show=False, width=WINDOW_SIZE[0], height=WINDOW_SIZE[1],
            pos=(8, 8),
        ) as t["window"]:  # fmt: skip
            with dpg.group(horizontal=True):
                t["dim_x"] = dpg.add_combo(
                    list(DIM_NAMES), default_value=DIM_NAMES[self.spec.dims[0]], width=70,
                    callback=cb("landscape slice", self._refusing(lambda v: self._set_dim(0, v))),
                )  # fmt: skip
                t["dim_y"] = dpg.add_combo(
                    list(DIM_NAMES), default_value=DIM_NAMES[self.spec.dims[1]], width=70,
                    callback=cb("landscape slice", self._refusing(lambda v: self._set_dim(1, v))),
                )  # fmt: skip
                t["chunk"] = dpg.add_input_int(
                    label="chunk action", default_value=self.spec.chunk_index + 1, width=80,
                    min_value=1, min_clamped=True,
                    callback=cb("landscape slice", self._refusing(self._set_chunk)),
                )  # fmt: skip
                t["hold"] = dpg.add_combo(
                    list(HOLDS), default_value=self.spec.hold, width=80, label="hold",
                    callback=cb(
                        "landscape slice", self._refusing(lambda v: self.set_slice(hold=v)),
                    ),
                )  # fmt: skip
                t["res"] = dpg.add_combo(
                    [str(r) for r in RESOLUTIONS], default_value=str(self.spec.resolution),
                    width=50, label="grid",
                    callback=cb("landscape slice", self._refusing(self._set_resolution)),
                )  # fmt: skip
            with dpg.group(horizontal=True):
                t["heat"] = dpg.add_radio_button(
                    list(HEAT), default_value=self.heat, horizontal=True,
                    callback=cb("landscape heat", self._refusing(self._set_heat)),
                )  # fmt: skip
                for name in LAYERS:
                    t[f"layer_{name}"] = dpg.add_checkbox(
                        label=name, default_value=self.layers[name],
                        callback=cb("landscape layer", self._layer_cb(name)),
                    )  # fmt: skip
            t["info"] = dpg.add_text("")
            with dpg.group(horizontal=True):
                with dpg.plot(width=-70, height=-22, equal_aspects=True) as t["plot"]:
                    t["x"] = dpg.add_plot_axis(dpg.mvXAxis, label="dx")
                    t["y"] = dpg.add_plot_axis(dpg.mvYAxis, label="dy")
                    dpg.set_axis_limits(t["x"], -1.0, 1.0)
                    dpg.set_axis_limits(t["y"], -1.0, 1.0)
                t["scale"] = dpg.add_colormap_scale(
                    min_scale=0.0, max_scale=1.0, height=-22, width=60,
                    colormap=dpg.mvPlotColormap_Viridis,
                )  # fmt: skip
            t["hover"] = dpg.add_text("")
        dpg.bind_colormap(t["plot"], dpg.mvPlotColormap_Viridis)
        with dpg.item_handler_registry() as handlers:
            dpg.add_item_clicked_handler(
                button=dpg.mvMouseButton_Left, callback=cb("landscape probe", self._on_click)
            )
        dpg.bind_item_handler_registry(t["plot"], handlers)

    def _refusing(self, fn: Callable[[Any], None]) -> Callable[..., None]:
        """A widget callback calling ``fn(value)``; when ``fn`` refuses the value, the
        widgets show the slice in use again before the error goes to the status bar."""

        def callback(sender: Any, value: Any, user_data: Any = None) -> None:
            try:
                fn(value)
            except Exception:
                self._sync_widgets()
                raise

        return callback

    def _set_dim(self, axis: int, name: str) -> None:
        if name not in DIM_NAMES:
            raise ValueError(f"no action dimension {name!r}; dimensions: {', '.join(DIM_NAMES)}")
        dims = list(self.spec.dims)
        dims[axis] = DIM_NAMES.index(name)
        self.set_slice(dims=tuple(dims))

    def _set_chunk(self, value: Any) -> None:
        self.set_slice(chunk_index=whole_number("chunk action", value) - 1)

    def _set_resolution(self, value: Any) -> None:
        self.set_slice(resolution=whole_number("grid", value))

    def _layer_cb(self, name: str):
        return lambda sender, value, user_data: self.set_layer(name, value)

    def _set_heat(self, name: str) -> None:
        if name not in HEAT:
            raise ValueError(f"heat layer must be one of {HEAT}")
        self.heat = name
        self._drawn = None

    def _sync_widgets(self) -> None:
        import dearpygui.dearpygui as dpg

        t = self.tags
        if not t:
            return
        dpg.set_value(t["dim_x"], DIM_NAMES[self.spec.dims[0]])
        dpg.set_value(t["dim_y"], DIM_NAMES[self.spec.dims[1]])
        dpg.set_value(t["chunk"], self.spec.chunk_index + 1)
        dpg.set_value(t["hold"], self.spec.hold)
        dpg.set_value(t["res"], str(self.spec.resolution))
        dpg.set_value(t["heat"], self.heat)
        for name in LAYERS:
            dpg.set_value(t[f"layer_{name}"], self.layers[name])

    def _on_click(self, *_: Any) -> None:
        import dearpygui.dearpygui as dpg

        x, y = dpg.get_plot_mouse_pos()
        if abs(x) <= 1.0 and abs(y) <= 1.0:
            self.request_probe((float(x), float(y)))

    def shown(self) -> bool:
        import dearpygui.dearpygui as dpg

        return bool(self.tags) and dpg.is_item_shown(self.tags["window"])

    def toggle_window(self) -> None:
        import dearpygui.dearpygui as dpg

        window = self.tags["window"]
        if dpg.is_item_shown(window):
            dpg.hide_item(window)
        else:
            dpg.show_item(window)
            self._drawn = None

    def tick(self, app: Host) -> None:
        """Every GUI frame: ask for the grid of the shown step when it changed, draw what
        arrived, keep the hover readout and the probe marker current."""
        import dearpygui.dearpygui as dpg

        spec = app.frame_spec
        rec = spec.record if spec is not None else None
        if rec is None or spec.view is None or not self.shown():
            self._publish(None)
            dpg.set_value(self.tags["note"], self.note)
            return
        h = int(app.session.policy.horizon) if app.session.policy is not None else 1
        if self.spec.chunk_index >= h:  # another checkpoint with shorter chunks
            self.spec = replace(self.spec, chunk_index=0)
            self._sync_widgets()
        key = heat_key(spec.view, rec, self.spec)
        playing = app.worker.playing
        result = self.result
        if (
            key != self._wanted
            and not self.busy
            and (not playing or self.pinned)
            and (result is None or result.key != key)
        ):
            self._request(key)
        if result is not None and result.key == key:
            state = (
                id(result),
                id(rec),
                self.heat,
                tuple(self.layers.items()),
                self._compare_id(),
                id(self.probe),
            )
            if state != self._drawn:
                self._draw(result, rec)
                self._drawn = state
            self.note = (
                f"step {result.index}: grid {result.landscape.spec.resolution}^2 in "
                f"{1000 * result.landscape.seconds:.0f} ms"
            )
        else:
            self.note = "computing ..." if self.busy else "paused to play (pin to follow)"
        self._hover(result if result is not None and result.key == key else None)
        self._publish(self.probe if self.probe is not None and result is not None
                      and self.probe.key == key else None)  # fmt: skip
        dpg.set_value(self.tags["note"], self.note)
        dpg.set_value(
            self.tags["info"], self.note + ("   " + self.probe.text() if self.probe else "")
        )

    def status_part(self) -> str | None:
        """The probe's figures for the status bar, or None."""
        return self.probe.text() if self.probe is not None else None

    def _compare_id(self) -> int:
        shown = getattr(self.app.compare, "_shown", None)
        return id(shown) if shown is not None else 0

    def _publish(self, probe: Probe | None) -> None:
        """The probe's effector target as a marker in the scene (a layer of its own)."""
        scale = self.app.frames.path_scale
        state = (probe, scale)
        if state == self._layer_state:
            return
        self._layer_state = state
        layer = None
        if probe is not None:
            o = probe.origin
            points = o + scale * (probe.target - o)
            first = points[0]
            cross = [
                Polyline(np.stack([first - d, first + d]), PROBE_RGBA, 0.004)
                for d in (np.array([0.02, 0, 0]), np.array([0, 0.02, 0]), np.array([0, 0, 0.02]))
            ]
            lines = (Polyline(np.vstack([o[None], points]), PROBE_RGBA, 0.002), *cross)
            from viewer.compare_view import frame_key

            layer = SceneLayer(key=frame_key(self.app.frame_spec), key_of=frame_key, lines=lines)
        self.app.frames.set_layer(layer, name="landscape")

    def _hover(self, result: LandscapeResult | None) -> None:
        import dearpygui.dearpygui as dpg

        if result is None or not dpg.is_item_hovered(self.tags["plot"]):
            dpg.set_value(self.tags["hover"], "hover the map for Q, head std and density")
            return
        x, y = dpg.get_plot_mouse_pos()
        land = result.landscape
        if abs(x) > 1 or abs(y) > 1:
            return
        r = land.spec.resolution
        j = int(round((x + 1) / 2 * (r - 1)))
        i = int(round((y + 1) / 2 * (r - 1)))
        text = f"({x:+.2f}, {y:+.2f})  Q {land.q[i, j]:.3f}  head std {land.disagreement[i, j]:.3f}"
        if land.density is not None:
            text += f"  density {land.density[i, j]:.3f}"
        dpg.set_value(self.tags["hover"], text)

    def _theme(self, rgb: tuple[int, ...], weight: float, marker: int | None = None):

        key = (rgb, weight, marker)
        if key not in self._themes:
            self._themes[key] = line_theme(rgb, weight, marker)
        return self._themes[key]

    def _line(self, xs, ys, rgb, weight: float = 1.5) -> None:
        import dearpygui.dearpygui as dpg

        series = dpg.add_line_series(
            list(map(float, xs)), list(map(float, ys)), parent=self.tags["y"]
        )
        dpg.bind_item_theme(series, self._theme(tuple(rgb), weight))

    def _points(self, pts: np.ndarray, rgb, marker: int, size: float = 4.0) -> None:
        import dearpygui.dearpygui as dpg

        if len(pts) == 0:
            return
        series = dpg.add_scatter_series(
            pts[:, 0].astype(float).tolist(),
            pts[:, 1].astype(float).tolist(),
            parent=self.tags["y"],
        )
        with dpg.theme() as theme, dpg.theme_component(dpg.mvAll):
            dpg.add_theme_color(dpg.mvPlotCol_MarkerFill, rgb, category=dpg.mvThemeCat_Plots)
            dpg.add_theme_color(
                dpg.mvPlotCol_MarkerOutline, (0, 0, 0), category=dpg.mvThemeCat_Plots
            )
            dpg.add_theme_style(dpg.mvPlotStyleVar_Marker, marker, category=dpg.mvThemeCat_Plots)
            dpg.add_theme_style(dpg.mvPlotStyleVar_MarkerSize, size, category=dpg.mvThemeCat_Plots)
        dpg.bind_item_theme(series, theme)

    def _draw(self, result: LandscapeResult, rec: StepRecord) -> None:
        import dearpygui.dearpygui as dpg

        t = self.tags
        land = result.landscape
        dpg.delete_item(t["y"], children_only=True)
        values = land.q if self.heat == "Q" else land.disagreement
        lo, hi = float(values.min()), float(values.max())
        hi = hi if hi > lo else lo + 1e-6
        # Dear PyGui's heat series draws its first row at the top.
        dpg.add_heat_series(
            np.flipud(values).astype(float).ravel().tolist(), values.shape[0], values.shape[1],
            scale_min=lo, scale_max=hi, bounds_min=(-1.0, -1.0), bounds_max=(1.0, 1.0),
            format="", parent=t["y"],
        )  # fmt: skip
        dpg.configure_item(t["scale"], min_scale=lo, max_scale=hi)
        dx, dy = land.spec.dims
        dpg.configure_item(t["x"], label=DIM_NAMES[dx])
        dpg.configure_item(t["y"], label=DIM_NAMES[dy])
        if self.layers["density"] and land.density is not None:
            self._contours(land)
            self._points(land.density_points, (255, 255, 255), dpg.mvPlotMarker_Circle, 2.0)
        env_dim = result.env_action_dim
        sample = rec.sample
        if self.layers["ghost"]:
            ghost = project(sample.unguided.a_hat, land.spec, env_dim)
            for n in range(ghost.shape[1]):
                self._line(ghost[:, n, 0], ghost[:, n, 1], GHOST_RGB, 1.0)
        if self.layers["paths"]:
            a_hat = project(sample.guided.a_hat, land.spec, env_dim)  # [T, N, 2]
            steps = a_hat.shape[0]
            for n in range(a_hat.shape[1]):
                for k in range(steps - 1):
                    seg = a_hat[k : k + 2, n]
                    self._line(seg[:, 0], seg[:, 1], time_rgb(k / max(steps - 2, 1)), 2.0)
            final = project(sample.guided.final, land.spec, env_dim)
            off = sample.off_manifold
            off = np.zeros(len(final), bool) if off is None else np.asarray(off, bool)
            self._points(final[~off], time_rgb(1.0), dpg.mvPlotMarker_Circle, 4.0)
            self._points(final[off], OFF_RGB, dpg.mvPlotMarker_Circle, 4.5)
            self._points(final[[sample.executed]], (255, 255, 255), dpg.mvPlotMarker_Diamond, 6.0)
        if self.layers["gradients"]:
            a_hat = project(sample.guided.a_hat, land.spec, env_dim)
            grad = project(sample.guided.grad, land.spec, env_dim)
            norm = np.linalg.norm(grad, axis=-1, keepdims=True)
            unit = np.where(norm > 0, grad / np.maximum(norm, 1e-12), 0.0) * 0.05
            for k in range(a_hat.shape[0]):
                for n in range(a_hat.shape[1]):
                    start, end = a_hat[k, n], a_hat[k, n] + unit[k, n]
                    self._line([start[0], end[0]], [start[1], end[1]], (0, 230, 230), 1.0)
        if self.layers["compare"]:
            self._compare_paths(land.spec, env_dim, rec)
        probe = self.probe
        if probe is not None and probe.key == result.key:
            x, y = probe.xy
            self._line([x - 0.06, x + 0.06], [y, y], (255, 255, 255), 2.0)
            self._line([x, x], [y - 0.06, y + 0.06], (255, 255, 255), 2.0)

    def _contours(self, land: Landscape) -> None:
        import contourpy

        d = land.density
        positive = d[d > 0]
        if positive.size == 0:
            return
        gen = contourpy.contour_generator(land.xs, land.ys, d)
        for level in np.unique(np.quantile(positive, [0.5, 0.8, 0.95])):
            for line in gen.lines(float(level)):
                self._line(line[:, 0], line[:, 1], (255, 255, 255), 1.0)

    def _compare_paths(self, spec: SliceSpec, env_dim: int, rec: StepRecord) -> None:
        """Each comparison row's executed a_hat path, in its row colour, when the
        comparison shown is of this step."""
        from viewer.compare_view import frame_key, row_rgba

        view = self.app.compare
        shown = getattr(view, "_shown", None)
        frame = self.app.frame_spec
        if shown is None or frame is None or frame_key(frame) != shown.key:
            return

        for i, row in enumerate(shown.comparison.rows):
            path = project(row.a_hat[:, row.executed], spec, env_dim)
            self._line(path[:, 0], path[:, 1], rgb255(row_rgba(shown.comparison, i))[:3], 2.5)
