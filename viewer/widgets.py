"""Dear PyGui helpers shared by the viewer's window and its panels (``viewer.app``,
``viewer.compare_view``): sizes, colours and plot-series themes."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import dearpygui.dearpygui as dpg
import numpy as np

if TYPE_CHECKING:
    from viewer.session import FrameSpec, Session

STATUS_HEIGHT = 22
"""Height of the status bar at the bottom of the viewer's window, in pixels."""


def nan_joined(x: np.ndarray, ys: np.ndarray) -> list[list[float]]:
    """``x [K]`` and ``ys [K, N]`` as one polyline of N pieces separated by NaN."""
    k, n = ys.shape
    xs = np.full((n, k + 1), np.nan)
    yy = np.full((n, k + 1), np.nan)
    xs[:, :k] = x
    yy[:, :k] = ys.T
    return [xs.ravel().tolist(), yy.ravel().tolist()]


def rgb255(rgba) -> tuple[int, int, int, int]:
    r, g, b, a = (float(x) for x in rgba)
    return (int(255 * r), int(255 * g), int(255 * b), int(255 * max(a, 0.8)))


def line_theme(color, weight: float = 1.5, marker: int | None = None) -> int | str:
    """A plot-series theme: line colour and weight, optionally a filled marker."""
    with dpg.theme() as theme, dpg.theme_component(dpg.mvAll):
        dpg.add_theme_color(dpg.mvPlotCol_Line, color, category=dpg.mvThemeCat_Plots)
        dpg.add_theme_style(dpg.mvPlotStyleVar_LineWeight, weight, category=dpg.mvThemeCat_Plots)
        if marker is not None:
            dpg.add_theme_style(dpg.mvPlotStyleVar_Marker, marker, category=dpg.mvThemeCat_Plots)
            dpg.add_theme_color(dpg.mvPlotCol_MarkerFill, color, category=dpg.mvThemeCat_Plots)
            dpg.add_theme_color(dpg.mvPlotCol_MarkerOutline, color, category=dpg.mvThemeCat_Plots)
            dpg.add_theme_style(dpg.mvPlotStyleVar_MarkerSize, 5, category=dpg.mvThemeCat_Plots)
    return theme


class Host(Protocol):
    """What a panel (``viewer.compare_view``, ``viewer.landscape_view``) needs of the window
    it is attached to, ``viewer.app.ViewerApp``: typed here so that a panel does not import
    the app that imports it."""

    session: Session
    frames: Any
    worker: Any
    manifold: Any
    compare: Any
    panels: list
    on_tick: list
    frame_spec: FrameSpec | None
    width: int
    height: int

    def callback(self, what: str, fn: Callable[..., Any]) -> Callable[..., None]: ...

    def command(self, key: str, fn: Callable[[Session], Any]) -> None: ...

    def select_estimator(self, name: str, pick_best: bool, **settings: Any) -> None: ...
