"""Dear PyGui helpers shared by the viewer's window and its panels (``viewer.app``,
``viewer.compare_view``): sizes, colours and plot-series themes."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
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


# --- the viewer window's layout, keys and rates (viewer.app, .controls, .plots) ---

TITLE = "qgf view"
CONTROLS_WIDTH = 390
PLOT_HEIGHT = 215
LEGEND_HEIGHT = 20
ERROR_SECONDS = 20.0
# With "loop" on, an episode's last frame stays this long before the next seed's episode.
LOOP_HOLD = 1.0
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


def scale_note(k: float) -> str:
    return "" if k == 1.0 else f"paths x{k:.1f} (magnified)"


def whole_number(name: str, value: Any) -> int:
    """``value`` of control ``name`` as an int, or a ``ValueError`` naming the control.

    Dear PyGui's integer widgets hand over ints, but a callback can be sent anything (a
    script, a test): NaN, inf, text or 2.5 are refused here with a message that says which
    control, where ``int()`` alone would raise an OverflowError about floats.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number != int(number):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(number)
