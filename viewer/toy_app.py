"""``qgf view --toy``: the paper's toy examples in one Dear PyGui window.

Guidance explained without a robot. The flow is exact (``core.toy``), so what you see is the
estimators, not a training artefact:

- 1-D: one column per estimator, all from the same noise. Top: every particle's path a_t
  over denoising time over the unguided marginal p_t (shaded), coloured by the mode it
  ends in (yellow: a*'s mode; red: off the data). Bottom: the particles at the chosen step
  (histogram) against the unguided p_t at that step (line).
- 2-D: one panel per estimator: the critic's value (or p_t) as a heatmap, the data it was
  fitted on, the guided velocity ``v + w G`` as arrows, and the particles moving as they
  denoise. Drag a* (the white point) to move the optimum.

All work happens in ``viewer.toy_session.ToySession`` (on a worker thread); this module
only draws its views and sends it commands. Every callback is guarded: an exception shows
in the status bar and the window keeps running.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from typing import Any

import dearpygui.dearpygui as dpg
import numpy as np
import torch

from core.guidance import ESTIMATOR_DOCS, ESTIMATORS
from viewer.toy_session import (
    DENSITY_LIMIT,
    PLOT_LIMIT,
    ToySession,
    ToySettings,
    ToyView,
    slider_from_weight,
    weight_from_slider,
)

_CONTROLS_WIDTH = 290
_STATUS_HEIGHT = 26
_MAX_LINES = 160  # trajectories drawn per 1-D panel
_TRAIL = 4  # steps of trail behind each 2-D particle
_PLAY_RATE = 10.0  # denoising steps per second when playing
_END_PAUSE = 1.0  # seconds the last step stays on screen before the loop restarts

# Okabe-Ito colours (distinguishable with colour blindness): modes that are not a*'s.
_MODE_COLOURS = [(86, 180, 233), (0, 158, 115), (204, 121, 167), (0, 114, 178)]
_STAR_COLOUR = (240, 228, 66)  # particles ending on a*'s mode
_OFF_COLOUR = (230, 60, 40)  # particles ending off the data
_A_STAR_MARK = (255, 255, 255)
_DENSITY_COLOUR = (230, 159, 0)
_PATH_COLOUR = (255, 70, 255)  # the unguided path that ends at a* (where to steer)
_ERROR_COLOUR = (255, 110, 90)
_GREY = (170, 170, 170)
# One colour per estimator for the shared plots; unknown (user-registered) ones cycle.
_ESTIMATOR_COLOURS = {
    "none": (200, 200, 200),
    "qgf": (240, 228, 66),
    "qgf_jacobian": (0, 158, 115),
    "qgf_chain": (86, 180, 233),
    "ood": (230, 60, 40),
    "bptt": (204, 121, 167),
}
_EXTRA_COLOURS = [(230, 159, 0), (0, 114, 178), (150, 150, 255)]
_TITLES = {
    "none": "none: no guidance",
    "qgf": "qgf: grad Q at a_hat",
    "qgf_jacobian": "qgf_jacobian: J^T grad Q(a_hat)",
    "qgf_chain": "qgf_chain: grad Q at ODE(a_t)",
    "ood": "ood: grad Q at noisy a_t",
    "bptt": "bptt: backprop through ODE",
}


def _estimator_colour(name: str) -> tuple[int, int, int]:
    if name in _ESTIMATOR_COLOURS:
        return _ESTIMATOR_COLOURS[name]
    extra = sorted(n for n in ESTIMATORS if n not in _ESTIMATOR_COLOURS)
    return _EXTRA_COLOURS[extra.index(name) % len(_EXTRA_COLOURS)] if name in extra else _GREY


def _title(name: str) -> str:
    return _TITLES.get(name) or f"{name}: {ESTIMATOR_DOCS.get(name, '')}"[:34]


def _mode_colour(mode: int, star: int) -> tuple[int, int, int]:
    if mode == star:
        return _STAR_COLOUR
    others = [m for m in range(mode + 1) if m != star]
    return _MODE_COLOURS[(len(others) - 1) % len(_MODE_COLOURS)]


def _flat(a: Any) -> np.ndarray:
    """A contiguous float64 copy: Dear PyGui reads numpy buffers raw and crashes on strided
    views (a column of a 2-D array, for one)."""
    return np.ascontiguousarray(a, dtype=np.float64).reshape(-1)


def _set(series: int, *columns: Any) -> None:
    dpg.set_value(series, [_flat(c) for c in columns])


def _segments(paths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``paths [P, L, 2] -> (x, y)`` of the ``P * (L-1)`` segments, as implot wants them."""
    a = paths[:, :-1, :]
    b = paths[:, 1:, :]
    pairs = np.stack([a, b], axis=2).reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1]


def _arrows(starts: np.ndarray, vel: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Segments (shaft and two head strokes) of arrows from ``starts [M, 2]`` along ``vel``.

    Lengths are scaled so the 90th-percentile speed spans 0.85 grid cells (longer ones
    are capped there), so direction stays readable wherever the field is strong or weak.
    """
    speed = np.linalg.norm(vel, axis=1)
    ref = max(float(np.percentile(speed, 90)), 1e-9)
    length = spacing * 0.85 * np.minimum(speed / ref, 1.0)
    unit = vel / np.maximum(speed, 1e-12)[:, None]
    tip = starts + unit * length[:, None]
    normal = np.stack([-unit[:, 1], unit[:, 0]], axis=1)
    head = 0.3 * length[:, None]
    left = tip - unit * head + normal * head * 0.6
    right = tip - unit * head - normal * head * 0.6
    segs = np.concatenate(
        [np.stack([starts, tip], 1), np.stack([tip, left], 1), np.stack([tip, right], 1)]
    )
    return segs[:, :, 0].reshape(-1), segs[:, :, 1].reshape(-1)


class ToyApp:
    """The window. Owns widget ids only; all state that matters lives in the session."""

    def __init__(self, session: ToySession, width: int, height: int) -> None:
        self.session = session
        self.width, self.height = width, height
        self.step = session.settings.steps  # displayed denoising step k
        self.playing = False
        self.step_per_frame = False
        self.log_scale = True
        self.background = "critic"  # 2-D heatmap: "critic" or "density"
        self.status_error = ""
        self.errors = 0
        self._step_clock = time.perf_counter()
        self._drawn_view: ToyView | None = None
        self._drawn_step = -1
        self._layout: tuple | None = None
        self._panels: dict[str, dict[str, int]] = {}
        self._themes: dict[Any, int] = {}
        self._fps_time = time.perf_counter()
        self._fps_frames = 0
        self.fps = 0.0
        self.ids: dict[str, int] = {}

    # ---------------------------------------------------------------- safety

    def guard(self, fn: Callable[..., Any]) -> Callable[..., None]:
        """Wrap a callback so an exception is reported in the status bar, not raised."""

        def wrapped(sender: Any = None, app_data: Any = None, user_data: Any = None) -> None:
            try:
                fn(sender, app_data, user_data)
            except Exception as exc:  # noqa: BLE001 - the app must survive any callback
                self.report_error(exc)

        return wrapped

    def report_error(self, exc: BaseException) -> None:
        self.errors += 1
        where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        place = f" ({where.name}:{where.lineno})" if where else ""
        self.status_error = f"error: {type(exc).__name__}: {exc}{place}"

    # ---------------------------------------------------------------- themes

    def _series_theme(self, kind: int, colour: tuple[int, ...], **style: float) -> int:
        key = (kind, colour, tuple(sorted(style.items())))
        if key in self._themes:
            return self._themes[key]
        with dpg.theme() as theme, dpg.theme_component(kind):
            plots = dpg.mvThemeCat_Plots
            dpg.add_theme_color(dpg.mvPlotCol_Line, colour, category=plots)
            dpg.add_theme_color(dpg.mvPlotCol_Fill, colour, category=plots)
            dpg.add_theme_color(dpg.mvPlotCol_MarkerFill, colour, category=plots)
            dpg.add_theme_color(dpg.mvPlotCol_MarkerOutline, colour, category=plots)
            if "weight" in style:
                dpg.add_theme_style(dpg.mvPlotStyleVar_LineWeight, style["weight"], category=plots)
            if "marker" in style:
                shape = dpg.mvPlotMarker_Cross if style.get("cross") else dpg.mvPlotMarker_Circle
                dpg.add_theme_style(dpg.mvPlotStyleVar_Marker, shape, category=plots)
                if style.get("cross"):
                    dpg.add_theme_style(dpg.mvPlotStyleVar_MarkerWeight, 2.0, category=plots)
                dpg.add_theme_style(dpg.mvPlotStyleVar_MarkerSize, style["marker"], category=plots)
        self._themes[key] = theme
        return theme

    # ---------------------------------------------------------------- building

    def build(self) -> None:
        s = self.session.settings
        with dpg.window(tag="toy_main", no_scrollbar=True), dpg.group(horizontal=True):
            with dpg.child_window(width=_CONTROLS_WIDTH, height=-_STATUS_HEIGHT):
                self._build_controls(s)
            self.ids["plots"] = dpg.add_child_window(
                width=-1, height=-_STATUS_HEIGHT, no_scrollbar=True
            )
        with dpg.group(parent="toy_main", horizontal=True):
            self.ids["status"] = dpg.add_text("starting")
            self.ids["status_error"] = dpg.add_text("", color=_ERROR_COLOUR)
        dpg.set_primary_window("toy_main", True)
        with dpg.handler_registry():
            dpg.add_key_press_handler(dpg.mvKey_Spacebar, callback=self.guard(self._on_play_key))
            dpg.add_key_press_handler(dpg.mvKey_Right, callback=self.guard(self._on_step_key))
            dpg.add_key_press_handler(dpg.mvKey_Left, callback=self.guard(self._on_step_key))

    def _build_controls(self, s: ToySettings) -> None:
        dpg.add_text("QGF toy: guidance on an exact flow")
        dpg.add_text("noise N(0, I) -> Gaussian mixture\nQ(a) = -|a - a*|", color=(170, 170, 170))
        dpg.add_separator()
        self.ids["dim"] = dpg.add_radio_button(
            ["1-D", "2-D"],
            default_value=f"{s.dim}-D",
            horizontal=True,
            callback=self.guard(self._on_dim),
        )
        dpg.add_text("critic")
        self.ids["critic"] = dpg.add_radio_button(
            ["exact", "fitted on data"],
            default_value="exact" if s.critic == "exact" else "fitted on data",
            horizontal=True,
            callback=self.guard(self._on_critic),
        )
        self.ids["critic_note"] = dpg.add_text("", wrap=_CONTROLS_WIDTH - 20, color=(170, 170, 170))
        dpg.add_separator()
        self.ids["weight_text"] = dpg.add_text("")
        self.ids["weight"] = dpg.add_slider_float(
            default_value=slider_from_weight(s.weight, self.log_scale),
            min_value=0.0,
            max_value=1.0,
            format="",
            width=-1,
            callback=self.guard(self._on_weight),
        )
        self.ids["log"] = dpg.add_checkbox(
            label="log scale", default_value=self.log_scale, callback=self.guard(self._on_log)
        )
        dpg.add_text("estimators (same noise)")
        self.ids["estimators"] = {}
        names = list(ESTIMATORS)
        with dpg.table(header_row=False):
            dpg.add_table_column()
            dpg.add_table_column()
            for row in range(0, len(names), 2):
                with dpg.table_row():
                    for name in names[row : row + 2]:
                        box = dpg.add_checkbox(
                            label=name,
                            default_value=name in s.estimators,
                            callback=self.guard(self._on_estimators),
                        )
                        with dpg.tooltip(box):
                            dpg.add_text(ESTIMATOR_DOCS.get(name, ""))
                        self.ids["estimators"][name] = box
        dpg.add_separator()
        self.ids["steps"] = dpg.add_slider_int(
            label="steps T",
            default_value=s.steps,
            min_value=2,
            max_value=100,
            width=150,
            callback=self.guard(self._on_int),
            user_data="steps",
        )
        self.ids["samples"] = dpg.add_slider_int(
            label="samples N",
            default_value=s.samples,
            min_value=16,
            max_value=2000,
            width=150,
            callback=self.guard(self._on_int),
            user_data="samples",
        )
        self.ids["seed"] = dpg.add_input_int(
            label="seed",
            default_value=s.seed,
            width=150,
            callback=self.guard(self._on_int),
            user_data="seed",
        )
        self.ids["a_star_text"] = dpg.add_text("")
        self.ids["reset_star"] = dpg.add_button(
            label="reset a*", callback=self.guard(self._on_reset_star)
        )
        dpg.add_separator()
        self.ids["step"] = dpg.add_slider_int(
            label="step k",
            default_value=self.step,
            min_value=0,
            max_value=s.steps,
            width=150,
            callback=self.guard(self._on_step),
        )
        self.ids["play"] = dpg.add_checkbox(
            label="play denoising (space)",
            default_value=self.playing,
            callback=self.guard(self._on_play),
        )
        self.ids["background"] = dpg.add_radio_button(
            ["critic Q", "density p_t"],
            default_value="critic Q",
            horizontal=True,
            callback=self.guard(self._on_background),
        )
        dpg.add_separator()
        dpg.add_text("pushed the wrong way (share)")
        with dpg.plot(height=150, width=-1, no_menus=True, no_box_select=True) as plot:
            dpg.add_plot_legend(location=dpg.mvPlot_Location_NorthEast)
            self.ids["wrong_x"] = dpg.add_plot_axis(dpg.mvXAxis, label="t")
            self.ids["wrong_y"] = dpg.add_plot_axis(dpg.mvYAxis)
            dpg.set_axis_limits(self.ids["wrong_x"], 0.0, 1.0)
            # A little below 0, so a curve at 0 (bptt with the exact critic: its G is the
            # true direction) is drawn rather than hidden under the axis.
            dpg.set_axis_limits(self.ids["wrong_y"], -0.04, 1.0)
        self.ids["wrong_plot"] = plot
        self.ids["wrong_series"] = {}
        self.ids["legend_text"] = dpg.add_text("", wrap=_CONTROLS_WIDTH - 20, color=(170, 170, 170))

    def _build_panels(self, view: ToyView) -> None:
        """(Re)create the per-estimator plots for the view's dimension and estimators."""
        dpg.delete_item(self.ids["plots"], children_only=True)
        self._panels = {}
        names = list(view.runs)
        parent = self.ids["plots"]
        with dpg.group(horizontal=True, parent=parent):
            dpg.add_text("particles ending:")
            dpg.add_text("on a*'s mode", color=_STAR_COLOUR)
            dpg.add_text("on other modes", color=_MODE_COLOURS[0])
            dpg.add_text("off the data", color=_OFF_COLOUR)
            if view.problem.dim == 2:
                dpg.add_text("| arrows: guided velocity v + w G at step k", color=_GREY)
        if view.problem.dim == 1:
            with dpg.group(horizontal=True, parent=parent):
                dpg.add_text("white line: a*", color=_A_STAR_MARK)
                dpg.add_text("| magenta: the unguided path that ends at a*", color=_PATH_COLOUR)
                dpg.add_text("| shading, orange: unguided p_t", color=_DENSITY_COLOUR)
        avail_w = self.width - _CONTROLS_WIDTH - 36
        avail_h = self.height - _STATUS_HEIGHT - (90 if view.problem.dim == 1 else 70)
        if view.problem.dim == 1:
            col_w = max(int(avail_w / max(len(names), 1)) - 8, 170)
            with dpg.group(horizontal=True, parent=parent):
                for name in names:
                    with dpg.child_window(width=col_w, height=-1, border=False, no_scrollbar=True):
                        self._panels[name] = self._build_1d(name, col_w - 4, avail_h)
        else:
            cols = 1 if len(names) == 1 else 2 if len(names) <= 4 else 3
            rows = math.ceil(len(names) / cols)
            side_w = 260
            size = min(int((avail_w - side_w) / cols) - 8, int(avail_h / rows) - 44)
            with dpg.group(horizontal=True, parent=parent):
                with dpg.group():
                    for r in range(rows):
                        with dpg.group(horizontal=True):
                            for name in names[r * cols : (r + 1) * cols]:
                                with dpg.child_window(
                                    width=size + 8,
                                    height=size + 44,
                                    border=False,
                                    no_scrollbar=True,
                                ):
                                    self._panels[name] = self._build_2d(name, size, size)
                with dpg.child_window(width=-1, height=-1, border=False):
                    self._build_share_plot(names, avail_h)
        dpg.delete_item(self.ids["wrong_y"], children_only=True)
        self.ids["wrong_series"] = {}
        for name in names:
            if name == "none":
                continue
            series = dpg.add_line_series([], [], label=name, parent=self.ids["wrong_y"])
            dpg.bind_item_theme(
                series,
                self._series_theme(dpg.mvLineSeries, _estimator_colour(name), weight=2.0),
            )
            self.ids["wrong_series"][name] = series

    def _build_share_plot(self, names: list[str], height: int) -> None:
        """Where the particles end, per estimator: a*'s mode, other modes, off the data."""
        dpg.add_text("where the particles end")
        with dpg.plot(height=min(height, 330), width=-1, no_menus=True, no_mouse_pos=True):
            dpg.add_plot_legend(location=dpg.mvPlot_Location_North, horizontal=True)
            x = dpg.add_plot_axis(dpg.mvXAxis, no_gridlines=True)
            y = dpg.add_plot_axis(dpg.mvYAxis, label="share")
            dpg.set_axis_ticks(x, tuple((n, float(i)) for i, n in enumerate(names)))
            dpg.set_axis_limits(x, -0.6, len(names) - 0.4)
            dpg.set_axis_limits(y, 0.0, 1.15)
            self.ids["share_series"] = {}
            for label, colour in (
                ("a*'s mode", _STAR_COLOUR),
                ("other", _MODE_COLOURS[0]),
                ("off data", _OFF_COLOUR),
            ):
                series = dpg.add_bar_series([], [], label=label, parent=y, weight=0.26)
                dpg.bind_item_theme(series, self._series_theme(dpg.mvBarSeries, colour))
                self.ids["share_series"][label] = series
        self.ids["share_text"] = dpg.add_text("", wrap=240, color=_GREY)

    def _draw_shares(self, view: ToyView) -> None:
        runs = list(view.runs.values())
        x = np.arange(len(runs), dtype=np.float64)
        star = np.array([r.star_share for r in runs])
        off = np.array([r.off_share for r in runs])
        on_star_off = np.array(
            [float(np.mean(r.off_data & (r.component == view.star_component))) for r in runs]
        )
        star_on_data = star - on_star_off
        other = 1.0 - star_on_data - off
        for series, (offset, values) in zip(
            self.ids["share_series"].values(),
            ((-0.28, star_on_data), (0.0, other), (0.28, off)),
            strict=True,
        ):
            _set(series, x + offset, values)
        unguided = 100 * view.unguided_share[view.star_component]
        dpg.set_value(
            self.ids["share_text"],
            f"Unguided sampling puts {unguided:.0f}% on a*'s mode. Bars use the same noise "
            "for every estimator.",
        )

    def _add_title(self, name: str, wrap: int) -> int:
        return dpg.add_text(_title(name), color=_estimator_colour(name), wrap=wrap)

    def _build_1d(self, name: str, width: int, height: int) -> dict[str, int]:
        p: dict[str, int] = {}
        p["title"] = self._add_title(name, width)
        traj_h = int(height * 0.56)
        with dpg.plot(height=traj_h, width=width, no_menus=True, no_mouse_pos=True) as plot:
            dpg.bind_colormap(plot, self._background_colormap())
            p["tx"] = dpg.add_plot_axis(dpg.mvXAxis, label="denoising time t")
            p["ty"] = dpg.add_plot_axis(dpg.mvYAxis, label="a_t")
            dpg.set_axis_limits(p["tx"], 0.0, 1.0)
            dpg.set_axis_limits(p["ty"], -2.2, 2.2)
            p["heat"] = dpg.add_heat_series(
                [0.0], 1, 1, parent=p["ty"], format="", scale_min=0.0, scale_max=1.0
            )
            p["lines"] = {}
            p["star_path"] = dpg.add_line_series([], [], parent=p["ty"])
            dpg.bind_item_theme(
                p["star_path"],
                self._series_theme(dpg.mvLineSeries, (*_PATH_COLOUR, 255), weight=2.5),
            )
            p["star_mark"] = dpg.add_inf_line_series([0.0], horizontal=True, parent=p["ty"])
            dpg.bind_item_theme(
                p["star_mark"],
                self._series_theme(dpg.mvInfLineSeries, (*_A_STAR_MARK, 230), weight=2.0),
            )
            p["step_line"] = dpg.add_inf_line_series([0.0], parent=p["ty"])
            dpg.bind_item_theme(
                p["step_line"],
                self._series_theme(dpg.mvInfLineSeries, (255, 255, 255, 120), weight=1.0),
            )
            p["star_line"] = dpg.add_drag_line(
                vertical=False,
                color=(*_A_STAR_MARK, 255),
                thickness=2.0,
                label="a*",
                callback=self.guard(self._on_drag_star_1d),
            )
        p["traj"] = plot
        with dpg.plot(height=int(height * 0.30), width=width, no_menus=True) as dplot:
            p["dx"] = dpg.add_plot_axis(dpg.mvXAxis, label="a")
            p["dy"] = dpg.add_plot_axis(dpg.mvYAxis, label="density")
            dpg.set_axis_limits(p["dx"], -1.2, 1.2)
            p["hist"] = dpg.add_bar_series([], [], parent=p["dy"])
            p["pdf"] = dpg.add_line_series([], [], parent=p["dy"])
            p["dstar"] = dpg.add_inf_line_series([0.0], parent=p["dy"])
            p["dpath"] = dpg.add_inf_line_series([0.0], parent=p["dy"])
            dpg.bind_item_theme(
                p["dpath"], self._series_theme(dpg.mvInfLineSeries, _PATH_COLOUR, weight=2.0)
            )
            dpg.bind_item_theme(p["hist"], self._series_theme(dpg.mvBarSeries, (190, 190, 190)))
            dpg.bind_item_theme(
                p["pdf"], self._series_theme(dpg.mvLineSeries, _DENSITY_COLOUR, weight=2.0)
            )
            dpg.bind_item_theme(
                p["dstar"], self._series_theme(dpg.mvInfLineSeries, _A_STAR_MARK, weight=1.0)
            )
        p["density_plot"] = dplot
        p["stats"] = dpg.add_text("", wrap=width)
        return p

    def _heat_colormap(self) -> int:
        """Dark blue (low) to muted teal (high): bright particles stay visible on top."""
        if "heat_colormap" not in self.ids:
            with dpg.colormap_registry():
                self.ids["heat_colormap"] = dpg.add_colormap(
                    [
                        [18, 20, 40, 255],
                        [30, 60, 90, 255],
                        [50, 110, 115, 255],
                        [120, 160, 130, 255],
                    ],
                    False,
                )
        return self.ids["heat_colormap"]

    def _background_colormap(self) -> int:
        """Dark (no mass) to blue-grey (most mass): the unguided p_t behind the paths."""
        if "colormap" not in self.ids:
            with dpg.colormap_registry():
                self.ids["colormap"] = dpg.add_colormap(
                    [[28, 28, 34, 255], [60, 70, 95, 255], [120, 135, 170, 255]], False
                )
        return self.ids["colormap"]

    def _build_2d(self, name: str, width: int, height: int) -> dict[str, int]:
        p: dict[str, int] = {}
        p["title"] = self._add_title(name, width)
        p["stats"] = dpg.add_text("", color=(200, 200, 200))
        with dpg.plot(
            height=height, width=width, equal_aspects=True, no_menus=True, no_mouse_pos=True
        ) as plot:
            dpg.bind_colormap(plot, self._heat_colormap())
            p["x"] = dpg.add_plot_axis(dpg.mvXAxis, no_label=True)
            p["y"] = dpg.add_plot_axis(dpg.mvYAxis, no_label=True)
            dpg.set_axis_limits(p["x"], -PLOT_LIMIT, PLOT_LIMIT)
            dpg.set_axis_limits(p["y"], -PLOT_LIMIT, PLOT_LIMIT)
            p["heat"] = dpg.add_heat_series(
                [0.0],
                1,
                1,
                parent=p["y"],
                format="",
                bounds_min=(-PLOT_LIMIT, -PLOT_LIMIT),
                bounds_max=(PLOT_LIMIT, PLOT_LIMIT),
            )
            p["data"] = dpg.add_scatter_series([], [], parent=p["y"])
            dpg.bind_item_theme(
                p["data"],
                self._series_theme(dpg.mvScatterSeries, (255, 255, 255, 60), marker=1.5),
            )
            p["field"] = dpg.add_line_series([], [], parent=p["y"], segments=True)
            dpg.bind_item_theme(
                p["field"],
                self._series_theme(dpg.mvLineSeries, (255, 255, 255, 140), weight=1.0),
            )
            p["trails"] = {}
            p["dots"] = {}
            p["star_mark"] = dpg.add_scatter_series([0.0], [0.0], parent=p["y"])
            dpg.bind_item_theme(
                p["star_mark"],
                self._series_theme(dpg.mvScatterSeries, _A_STAR_MARK, marker=9.0, cross=1.0),
            )
            p["star"] = dpg.add_drag_point(
                color=(*_A_STAR_MARK, 255),
                thickness=6.0,
                label="a*",
                callback=self.guard(self._on_drag_star_2d),
            )
        p["plot"] = plot
        return p

    # ---------------------------------------------------------------- callbacks

    def _resample(self) -> None:
        self.session.request()

    def _on_dim(self, sender, value, _):
        self.session.update(dim=int(value[0]))
        self._resample()

    def _on_critic(self, sender, value, _):
        self.session.update(critic="exact" if value == "exact" else "fitted")
        self._resample()

    def _on_weight(self, sender, value, _):
        self.session.update(weight=weight_from_slider(value, self.log_scale))
        self._resample()

    def _on_log(self, sender, value, _):
        self.log_scale = bool(value)
        dpg.set_value(
            self.ids["weight"], slider_from_weight(self.session.settings.weight, self.log_scale)
        )

    def _on_estimators(self, sender, value, _):
        chosen = tuple(n for n, box in self.ids["estimators"].items() if dpg.get_value(box))
        if not chosen:
            raise ValueError("choose at least one estimator")
        self.session.update(estimators=chosen)
        self._resample()

    def _on_int(self, sender, value, field):
        self.session.update(**{field: int(value)})
        if field == "steps":
            dpg.configure_item(self.ids["step"], max_value=int(value))
            self.step = int(value)
            dpg.set_value(self.ids["step"], self.step)
        self._resample()

    def _on_reset_star(self, sender, value, _):
        self.session.update(a_star=None)
        self._resample()

    def _on_step(self, sender, value, _):
        self.step = int(value)
        self.playing = False
        dpg.set_value(self.ids["play"], False)

    def _on_play(self, sender, value, _):
        self.playing = bool(value)
        self._step_clock = time.perf_counter()
        if self.playing and self.step >= self.session.settings.steps:
            self.step = 0

    def _on_play_key(self, sender, value, _):
        dpg.set_value(self.ids["play"], not self.playing)
        self._on_play(None, not self.playing, None)

    def _on_step_key(self, sender, key, _):
        delta = 1 if key == dpg.mvKey_Right else -1
        self.step = min(max(self.step + delta, 0), self.session.settings.steps)
        self.playing = False
        dpg.set_value(self.ids["play"], False)
        dpg.set_value(self.ids["step"], self.step)

    def _on_background(self, sender, value, _):
        self.background = "critic" if value == "critic Q" else "density"
        self._drawn_step = -1  # heat depends on the step for the density

    def _on_drag_star_1d(self, sender, value, _):
        a = float(np.clip(dpg.get_value(sender), -1.0, 1.0))
        self._set_star((a,), source=sender)

    def _on_drag_star_2d(self, sender, value, _):
        x, y = dpg.get_value(sender)[:2]
        self._set_star((float(np.clip(x, -1, 1)), float(np.clip(y, -1, 1))), source=sender)

    def _set_star(self, a_star: tuple[float, ...], source: int | None) -> None:
        self.session.update(a_star=a_star)
        for panel in self._panels.values():
            if len(a_star) == 2:
                if panel["star"] != source:
                    dpg.set_value(panel["star"], list(a_star))
                _set(panel["star_mark"], [a_star[0]], [a_star[1]])
            else:
                if panel["star_line"] != source:
                    dpg.set_value(panel["star_line"], a_star[0])
                _set(panel["star_mark"], [a_star[0]])
        self._resample()

    # ---------------------------------------------------------------- drawing

    def frame(self) -> None:
        """Per-frame work: install finished views, advance the animation, redraw."""
        try:
            self.session.poll()
        except Exception as exc:  # noqa: BLE001 - a failed view must not end the app
            self.report_error(exc)
        view = self.session.view
        now = time.perf_counter()
        if self.playing and view is not None:
            steps = view.settings.steps
            hold = _END_PAUSE if self.step >= steps else 1.0 / _PLAY_RATE
            # Scripted runs (--frames) step once per frame, so their output is reproducible.
            if self.step_per_frame or now - self._step_clock >= hold:
                self.step = 0 if self.step >= steps else self.step + 1
                self._step_clock = now
                dpg.set_value(self.ids["step"], self.step)
        if view is not None:
            try:
                self.draw(view)
            except Exception as exc:  # noqa: BLE001
                self.report_error(exc)
        self._update_status(view, now)

    def draw(self, view: ToyView) -> None:
        self.step = min(self.step, view.settings.steps)
        layout = (view.problem.dim, tuple(view.runs))
        new_view = view is not self._drawn_view
        if layout != self._layout:
            self._build_panels(view)
            self._layout = layout
            new_view = True
        if new_view:
            self._draw_view(view)
        if new_view or self.step != self._drawn_step:
            self._draw_step(view)
            dpg.set_value(self.ids["step"], self.step)
        self._drawn_view = view
        self._drawn_step = self.step

    def _draw_view(self, view: ToyView) -> None:
        """Everything that does not change with the displayed step."""
        s = view.settings
        dpg.set_value(self.ids["critic_note"], view.critic_note)
        dpg.set_value(self.ids["weight_text"], f"guidance weight w = {s.weight:.3g}")
        star = ", ".join(f"{a:+.2f}" for a in view.a_star)
        dpg.set_value(self.ids["a_star_text"], f"a* = ({star})  (drag it in the plots)")
        dpg.configure_item(self.ids["step"], max_value=s.steps)
        dpg.configure_item(self.ids["background"], show=view.problem.dim == 2)
        unguided = 100 * view.unguided_share[view.star_component]
        dpg.set_value(
            self.ids["legend_text"],
            "Particles whose G points against the way that raises the true Q of the action "
            "they end on.",
        )
        if view.problem.dim == 2 and "share_series" in self.ids:
            self._draw_shares(view)
        for name, series in self.ids["wrong_series"].items():
            run = view.runs[name]
            if np.isnan(run.misdirected).all():  # not computed yet (or G was always 0)
                _set(series, [], [])
            else:
                _set(series, view.times[:-1], np.nan_to_num(run.misdirected, nan=0.0))
        for name, run in view.runs.items():
            p = self._panels[name]
            if view.problem.dim == 1:
                stats = "\n".join(
                    [
                        f"on a*'s mode {100 * run.star_share:.0f}% (unguided {unguided:.0f}%)",
                        f"off data {100 * run.off_share:.0f}%, mean true Q {run.q_true:.2f}",
                        f"|G| max {run.grad_max:.2g}, median {run.grad_median:.2g}",
                    ]
                )
            else:
                stats = (
                    f"a*'s mode {100 * run.star_share:.0f}%  off data "
                    f"{100 * run.off_share:.0f}%  Q {run.q_true:.2f}  |G|max {run.grad_max:.2g}"
                )
            if run.nonfinite:
                stats += f"  NON-FINITE: {run.nonfinite}"
            dpg.set_value(p["stats"], stats)
            if view.problem.dim == 1:
                self._draw_1d_view(view, run, p)
            else:
                self._draw_2d_view(view, run, p)

    def _colour_groups(self, view: ToyView, run) -> dict[tuple[int, int, int], np.ndarray]:
        groups: dict[tuple[int, int, int], list[int]] = {}
        for i, (mode, off) in enumerate(zip(run.component, run.off_data, strict=True)):
            colour = _OFF_COLOUR if off else _mode_colour(int(mode), view.star_component)
            groups.setdefault(colour, []).append(i)
        return {c: np.asarray(ix) for c, ix in groups.items()}

    def _draw_1d_view(self, view: ToyView, run, p: dict) -> None:
        bg = view.background  # [G, C], row 0 at the lowest a: implot wants row 0 on top
        rows, cols = bg.shape
        dpg.configure_item(
            p["heat"],
            rows=rows,
            cols=cols,
            bounds_min=(0.0, -DENSITY_LIMIT),
            bounds_max=(1.0, DENSITY_LIMIT),
        )
        _set(p["heat"], bg[::-1])
        dpg.set_value(p["star_line"], float(view.a_star[0]))
        _set(p["star_mark"], [float(view.a_star[0])])
        _set(p["star_path"], view.background_times, view.star_path)
        _set(p["dstar"], [float(view.a_star[0])])
        for series in p["lines"].values():
            dpg.delete_item(series)
        p["lines"] = {}
        n = run.a_t.shape[1]
        shown = np.linspace(0, n - 1, min(n, _MAX_LINES)).astype(int)
        times = view.times
        for colour, idx in self._colour_groups(view, run).items():
            idx = np.intersect1d(idx, shown)
            if idx.size == 0:
                continue
            paths = np.stack(
                [np.broadcast_to(times[None, :], (idx.size, times.size)), run.a_t[:, idx, 0].T],
                axis=-1,
            )
            x, y = _segments(paths)
            series = dpg.add_line_series(
                _flat(x), _flat(y), segments=True, parent=p["ty"], before=p["star_path"]
            )
            dpg.bind_item_theme(
                series, self._series_theme(dpg.mvLineSeries, (*colour, 110), weight=1.0)
            )
            p["lines"][colour] = series

    def _draw_2d_view(self, view: ToyView, run, p: dict) -> None:
        dpg.set_value(p["star"], [float(view.a_star[0]), float(view.a_star[1])])
        _set(p["star_mark"], [float(view.a_star[0])], [float(view.a_star[1])])
        _set(p["data"], view.data[:, 0], view.data[:, 1])
        for series in list(p["trails"].values()) + list(p["dots"].values()):
            dpg.delete_item(series)
        p["trails"], p["dots"] = {}, {}
        p["groups"] = self._colour_groups(view, run)
        for colour in p["groups"]:
            trail = dpg.add_line_series([], [], segments=True, parent=p["y"])
            dpg.bind_item_theme(
                trail, self._series_theme(dpg.mvLineSeries, (*colour, 120), weight=1.0)
            )
            dots = dpg.add_scatter_series([], [], parent=p["y"])
            dpg.bind_item_theme(
                dots, self._series_theme(dpg.mvScatterSeries, (*colour, 255), marker=2.5)
            )
            p["trails"][colour], p["dots"][colour] = trail, dots

    def _draw_step(self, view: ToyView) -> None:
        """Everything that moves with the displayed step k."""
        k = self.step
        t = view.times[k]
        tops = []
        for name, run in view.runs.items():
            p = self._panels[name]
            if view.problem.dim == 1:
                _set(p["step_line"], [float(t)])
                tops.append(self._draw_1d_density(view, run, p, k))
            else:
                self._draw_2d_step(view, run, p, k)
        # One density scale for every panel, so their histograms compare at a glance.
        top = max(tops, default=0.0)
        for name in view.runs:
            if view.problem.dim == 1 and top > 0:
                dpg.set_axis_limits(self._panels[name]["dy"], 0.0, 1.1 * top)

    def _draw_1d_density(self, view: ToyView, run, p: dict, k: int) -> float:
        """The particles' histogram and the unguided p_t at step k; returns the highest
        density drawn (the caller sets one scale for every panel)."""
        lo, hi = -1.2, 1.2
        bins = 60
        counts, edges = np.histogram(run.a_t[k, :, 0], bins=bins, range=(lo, hi))
        width = edges[1] - edges[0]
        total = max(run.a_t.shape[1], 1)
        dens = counts / (total * width)
        _set(p["hist"], 0.5 * (edges[:-1] + edges[1:]), dens)
        dpg.configure_item(p["hist"], weight=width)
        _set(p["pdf"], view.density_grid, view.density[k])
        _set(p["dpath"], [float(np.interp(view.times[k], view.background_times, view.star_path))])
        return max(float(dens.max()), float(view.density[k][np.abs(view.density_grid) <= hi].max()))

    def _draw_2d_step(self, view: ToyView, run, p: dict, k: int) -> None:
        if self.background == "density":
            heat = view.heat_density[k]
            lo, hi = 0.0, float(heat.max())
        else:
            heat = view.heat_critic
            lo, hi = float(heat.min()), float(heat.max())
        rows, cols = heat.shape
        dpg.configure_item(p["heat"], rows=rows, cols=cols, scale_min=lo, scale_max=hi)
        _set(p["heat"], heat)
        steps = view.settings.steps
        if run.field.shape[1]:
            spacing = 2 * PLOT_LIMIT / (int(math.sqrt(run.field.shape[1])) - 1)
            x, y = _arrows(view.field_points, run.field[min(k, steps - 1)], spacing)
            _set(p["field"], x, y)
        start = max(k - _TRAIL, 0)
        for colour, idx in p["groups"].items():
            pts = run.a_t[k, idx]
            _set(p["dots"][colour], pts[:, 0], pts[:, 1])
            if k > start:
                x, y = _segments(np.transpose(run.a_t[start : k + 1, idx], (1, 0, 2)))
                _set(p["trails"][colour], x, y)
            else:
                _set(p["trails"][colour], [], [])

    def _update_status(self, view: ToyView | None, now: float) -> None:
        self._fps_frames += 1
        if now - self._fps_time >= 0.5:
            self.fps = self._fps_frames / (now - self._fps_time)
            self._fps_frames, self._fps_time = 0, now
        parts = [f"{self.fps:5.1f} fps"]
        if view is not None:
            s = view.settings
            parts.append(
                f"{s.dim}-D  {s.critic} critic  w={s.weight:.3g}  T={s.steps}  N={s.samples}"
                f"  seed={s.seed}  step {self.step}/{s.steps} (t={view.times[self.step]:.2f})"
            )
            parts.append(f"view {1000 * view.seconds:.0f} ms")
        if self.session.busy:
            since = self.session.busy_since
            waited = f" {now - since:.1f}s" if since is not None else ""
            fitting = " (fitting critic)" if self.session.settings.critic == "fitted" else ""
            parts.append(f"computing{fitting}{waited}")
        parts.append("keys: left/right step, space play")
        dpg.set_value(self.ids["status"], "  |  ".join(parts))
        dpg.set_value(self.ids["status_error"], self.status_error)


def run_app(
    session: ToySession,
    width: int = 1280,
    height: int = 800,
    frames: int | None = None,
    screenshot: str | None = None,
    on_frame: Callable[[ToyApp, int], None] | None = None,
    play: bool = False,
) -> ToyApp:
    """Open the window and run until closed, or for ``frames`` frames.

    With ``frames`` the first view is computed before the first frame (so a screenshot
    shows content) and ``screenshot`` (a PNG path) is saved from the last frame; the
    animation stays on the last step unless ``play``, which then advances one denoising
    step per frame. ``on_frame(app, i)`` runs before each frame (for tests).
    """
    dpg.create_context()
    try:
        dpg.create_viewport(title="QGF toy", width=width, height=height)
        dpg.setup_dearpygui()
        app = ToyApp(session, width, height)
        app.build()
        dpg.show_viewport()
        if frames is not None:
            session.compute()
            if play:
                app.playing, app.step_per_frame, app.step = True, True, 0
                dpg.set_value(app.ids["play"], True)
        else:
            app.playing = True
            dpg.set_value(app.ids["play"], True)
            session.request()
        count = 0
        while dpg.is_dearpygui_running():
            if on_frame is not None:
                try:
                    on_frame(app, count)
                except Exception as exc:  # noqa: BLE001 - same contract as callbacks
                    app.report_error(exc)
            app.frame()
            dpg.render_dearpygui_frame()
            count += 1
            if frames is not None and count >= frames:
                break
        if screenshot:
            dpg.output_frame_buffer(file=str(screenshot))
            # The buffer is written while rendering the next frame.
            for _ in range(2):
                app.frame()
                dpg.render_dearpygui_frame()
        return app
    finally:
        session.close()
        dpg.destroy_context()


def main(args: Any) -> int:
    """Entry for ``qgf view --toy``: ``args`` has ``frames``, ``screenshot``, ``width``,
    ``height`` (the viewer's CLI options)."""
    # The toy's tensors are small; a second intra-op thread only competes with the window
    # (and, on a busy 2-core machine, slowed the toy's work several-fold).
    torch.set_num_threads(1)
    frames = getattr(args, "frames", None)
    screenshot = getattr(args, "screenshot", None)
    if screenshot and frames is None:
        frames = 30
    run_app(
        ToySession(),
        width=int(getattr(args, "width", None) or 1280),
        height=int(getattr(args, "height", None) or 800),
        frames=frames,
        screenshot=screenshot,
        play=bool(getattr(args, "play", False)),
    )
    return 0
