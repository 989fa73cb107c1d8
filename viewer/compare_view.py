"""Estimators side by side in the viewer: a table, a plot and paths in the scene.

``compare_step`` (GUI-free) runs ``core.compare.compare_estimators`` on the step the viewer
shows (live or scrubbed), from the noise that step was sampled with and at its weight, T
and N, and maps every row's denoising to the world: ``CompareResult.paths`` holds, per row
and candidate, the effector targets of a_hat at each denoising step followed by those of
the final action (chunk), from the effector state of that step.

``CompareView`` is the Dear PyGui side, attached to a ``viewer.app.ViewerApp``:

- a "Compare estimators" panel in the controls (compute button, path toggles, status);
- a window with the table (one row per estimator and best-of-N, the acting one marked, a
  "use" button per row that makes it the acting estimator) and the Q-along-denoising plot,
  one colour per row (``row_rgba``), the same colours as the paths in the scene;
- the paths themselves, added to the frames the renderer draws (``frame`` wraps the
  session's frame source) and magnified about the effector like the candidate paths
  (``FrameStream.path_scale``), drawn only while the shown step is the compared one.

The comparison runs on the policy worker (``ViewerApp.command``), never on the GUI thread.
A result belongs to one state, noise and set of settings (``compare_key``); when the shown
step no longer matches, the table, plot and paths are cleared.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from core import envs
from core.compare import ONESTEP, CompareRow, Comparison, compare_estimators
from core.render import NONFINITE_RGBA, Polyline, scene_rgba
from core.step import effector_paths, step_noise
from viewer.frames import SceneLayer
from viewer.widgets import STATUS_HEIGHT, Host, line_theme, rgb255

if TYPE_CHECKING:
    from core.manifold import DataManifold
    from viewer.session import FrameSpec, Session, SessionView, Settings, StepRecord


# One colour per estimator row, in registry order (cycled for estimators registered later),
# and one for best-of-N. Apart from the overlay's white (executed), grey (ghost) and red
# (off-manifold) as far as a handful of colours allows.
ROW_RGBA = (
    (0.72, 0.74, 0.80, 1.0),  # none: slate
    (0.25, 0.92, 0.35, 1.0),  # qgf: green
    (0.30, 0.60, 1.00, 1.0),  # qgf_jacobian: blue
    (0.10, 0.88, 0.88, 1.0),  # qgf_chain: cyan
    (1.00, 0.52, 0.10, 1.0),  # ood: orange
    (0.76, 0.42, 1.00, 1.0),  # bptt: violet
    (0.88, 0.86, 0.30, 1.0),  # olive
    (0.70, 0.48, 0.30, 1.0),  # brown
    (0.60, 1.00, 0.78, 1.0),  # mint
)
BEST_OF_RGBA = (1.00, 0.42, 0.68, 1.0)  # pink
ONESTEP_RGBA = (1.00, 0.80, 0.20, 1.0)  # gold: an imported FQL agent's one-step policy
_EXECUTED_WIDTH = 0.0045
_CANDIDATE_WIDTH = 0.0018
_RAY_WIDTH = 0.0012
_CANDIDATE_ALPHA = 0.55
# The window: table on the left, plot on the right.
WINDOW_HEIGHT = 238
_TABLE_WIDTH = 610
_COLUMNS = (
    "", "estimator", "Q exec", "Q mean", "dist", "d mean", "off", "NaN", "cos", "ms/act",
    "MFLOP", "",
)  # fmt: skip
_NA = "-"


def row_rgba(comparison: Comparison, i: int) -> tuple[float, float, float, float]:
    """The colour of row ``i`` (table, plot and scene)."""
    if comparison.rows[i].pick_best:
        return BEST_OF_RGBA
    if comparison.rows[i].label == ONESTEP:
        return ONESTEP_RGBA
    return ROW_RGBA[i % len(ROW_RGBA)]


def cells(row: CompareRow) -> dict[str, str]:
    """The table's text for one row, by column name (what the window shows, exactly)."""

    def num(v: float, fmt: str) -> str:
        return format(v, fmt) if math.isfinite(v) else _NA

    return {
        "estimator": row.label,
        "Q exec": num(row.q_executed, ".3f"),
        "Q mean": num(row.q_mean, ".3f"),
        "dist": num(row.distance_executed, ".3f"),
        "d mean": num(row.distance_mean, ".3f"),
        "off": num(100.0 * row.off_fraction, ".0f") + ("%" if row.off_manifold is not None else ""),
        # Candidates whose guidance met a NaN/inf (flagged, held at their last finite iterate).
        "NaN": str(row.nonfinite),
        "cos": num(row.sensitivity, ".4f"),
        "ms/act": num(row.ms_per_action, ".1f"),
        "MFLOP": num(row.flops_per_action / 1e6, ".2f"),
    }


def compare_key(view: SessionView, record: StepRecord) -> tuple:
    """What a comparison of ``record`` depends on: the networks (``view.networks``), the
    state, the noise (seed and step) and the weight, T and N it was sampled with."""
    s = record.sample.settings
    return (
        view.networks,
        record.index,
        np.asarray(record.obs).tobytes(),
        s.seed,
        s.weight,
        s.steps,
        s.candidates,
    )


def frame_key(spec: FrameSpec) -> tuple:
    """``compare_key`` of the step a frame shows (from the frame's snapshots only)."""
    return compare_key(spec.view, spec.record)


def acting_label(settings: Settings, comparison: Comparison) -> str | None:
    """The row that acts under ``settings``: the estimator's (best-of-N off), best-of-N
    (estimator ``none`` with best-of-N on), or None (another estimator with best-of-N)."""
    for row in comparison.rows:
        if row.pick_best == settings.pick_best and row.estimator == settings.estimator:
            return row.label
    return None


@dataclass
class CompareResult:
    """A comparison of one viewer step, with its paths in the world.

    Attributes:
        comparison: the ``core.compare.Comparison``.
        key: ``compare_key`` of the step it was made for.
        version: the session's version when it was made (frames older than it are not
            compared with it).
        index: env step.
        settings: the sample settings of that step (weight, T, N, seed used).
        origin: ``[3]`` effector position at that step.
        paths: ``[R, N, T + H, 3]`` per row and candidate: targets of a_hat (first action of
            the chunk) at k = 0..T-1, then of the final action's H actions.
        seconds: wall time on the worker, mapping included.
    """

    comparison: Comparison
    key: tuple
    version: int
    index: int
    settings: Settings
    origin: np.ndarray
    paths: np.ndarray
    seconds: float = 0.0


def compare_step(
    session: Session,
    manifold: DataManifold | None = None,
    flops: dict[str, float] | None = None,
    record: StepRecord | None = None,
) -> CompareResult:
    """Compare every estimator on the step shown (``session.viewed``) or ``record``.

    Runs on the thread that owns the session. The noise is the step's own (a step inside a
    chunk draws the noise a fresh sample there would); ``flops`` are reused when given (see
    ``compare_estimators``).
    """
    t0 = time.perf_counter()
    rec = record if record is not None else session.viewed
    s = rec.sample.settings
    policy = session.policy
    width, horizon = policy.action_dim, policy.horizon
    noise = (
        rec.sample.noise
        if rec.chunk_step == 0
        else step_noise(s.seed, rec.index, s.candidates, width)
    )
    device = next(policy.parameters()).device
    obs = np.asarray(rec.obs, dtype=np.float32)
    comparison = compare_estimators(
        policy,
        session.critic,
        torch.as_tensor(obs, device=device),
        noise,
        weight=s.weight,
        steps=s.steps,
        device=device,
        manifold=manifold,
        seed=s.seed,
        flops=flops,
        onestep=session.onestep,
    )
    start = envs.effector_state_at(session.env, rec.snapshot)
    t, n, rows = s.steps, s.candidates, len(comparison.rows)
    # Every row's candidates side by side, mapped in one call: [T, R*N, ...].
    mapped = effector_paths(
        session.env,
        np.concatenate([r.a_hat.numpy() for r in comparison.rows], axis=1),
        np.concatenate([r.final.numpy() for r in comparison.rows]),
        start=start,
    )
    # a_hat's first action at each step, then the final chunk: [R, N, T + H, 3].
    denoise = mapped.denoise[:, :, 0].reshape(t, rows, n, 3).transpose(1, 2, 0, 3)
    paths = np.concatenate([denoise, mapped.final.reshape(rows, n, horizon, 3)], axis=2)
    return CompareResult(
        comparison=comparison,
        key=compare_key(session.frame().view, rec),
        version=session.version,
        index=rec.index,
        settings=s,
        origin=np.asarray(start[0], dtype=np.float64),
        paths=paths,
        seconds=time.perf_counter() - t0,
    )


def compare_polylines(
    result: CompareResult, path_scale: float = 1.0, all_candidates: bool = False
) -> list[Polyline]:
    """The rows' paths as scene polylines, magnified ``path_scale`` about the effector like
    the candidate paths (``core.render.draw_overlay``): each row's executed candidate (its
    a_hat path, and a thin ray from the effector to its final action), and with
    ``all_candidates`` the others' a_hat paths, thinner and fainter, beneath."""
    o = result.origin
    paths = o + path_scale * (result.paths - o)  # [R, N, K, 3]
    lines: list[Polyline] = []
    executed = [r.executed for r in result.comparison.rows]
    if all_candidates:
        for i, row_paths in enumerate(paths):
            rgba = scene_rgba(row_rgba(result.comparison, i), _CANDIDATE_ALPHA)
            for j, points in enumerate(row_paths):
                if j != executed[i]:
                    lines.append(Polyline(points, rgba, _CANDIDATE_WIDTH))
    t = result.comparison.steps
    for i, row_paths in enumerate(paths):
        rgba = scene_rgba(row_rgba(result.comparison, i))
        path = row_paths[executed[i]]
        # A thin ray from the effector to the executed action (its first env action), then
        # the a_hat path itself.
        lines.append(Polyline(np.stack([o, path[t]]), rgba, _RAY_WIDTH))
        lines.append(Polyline(path, rgba, _EXECUTED_WIDTH))
    return lines


class CompareView:
    """The comparison panel, window and scene paths of one ``ViewerApp``.

    Install with ``app.compare = CompareView(app)`` before the app starts its render thread
    (``frame`` is its frame source), ``app.panels.append(view.build)`` and
    ``app.on_tick.append(view.tick)``; the app's C key calls ``request``.
    """

    def __init__(self, app: Host) -> None:
        self.app = app
        self.result: CompareResult | None = None
        self.show_paths = True
        self.all_candidates = False
        # While the rows' paths are drawn, the step's own candidates are hidden: the acting
        # estimator is one of the rows, and the two kinds of path drawn together are hard
        # to tell apart.
        self.only_compared = True
        self.busy = False
        self.note = "not computed yet"
        self._flops: dict[tuple, dict[str, float]] = {}
        self._shown: CompareResult | None = None
        self._checked_version = -1
        self._cache: tuple | None = None
        self._themes: dict[tuple, int | str] = {}
        self._acting: str | None = None
        self._placed = False
        self.tags: dict[str, Any] = {}
        self.cell_tags: dict[str, dict[str, int | str]] = {}
        self.use_tags: dict[str, int | str] = {}

    # --- the scene layer -----------------------------------------------------------------
    def _publish(self) -> None:
        """Hand the renderer the rows' paths as a layer of their own (``SceneLayer``),
        drawn on the frames of the compared step only; again whenever the result, a path
        toggle or the path scale changed (GUI thread)."""
        result = self._shown
        scale = self.app.frames.path_scale
        state = (result, self.show_paths, self.all_candidates, self.only_compared, scale)
        # The result by identity: a new one (even with equal fields) is a new computation,
        # and comparing two by value would compare their tensors, which has no truth value.
        if self._cache is not None and state[0] is self._cache[0] and state[1:] == self._cache[1:]:
            return
        self._cache = state
        layer = None
        if result is not None and self.show_paths:
            layer = SceneLayer(
                key=result.key,
                key_of=frame_key,
                lines=tuple(compare_polylines(result, scale, self.all_candidates)),
                # While the rows' paths are drawn, the step's own candidates are hidden.
                alone=self.only_compared,
            )
        self.app.frames.set_layer(layer)

    # --- commands -------------------------------------------------------------------------
    def request(self, *_: Any) -> None:
        """Compare every estimator at the step shown, on the worker (pauses playback)."""
        app = self.app
        app.worker.pause()
        self.busy = True

        def run(session: Session) -> None:
            try:
                s = session.viewed.sample.settings
                flops_key = (session.policy, session.critic, s.steps, s.candidates)
                manifold = app.manifold.manifold_for(session)
                result = compare_step(session, manifold, self._flops.get(flops_key))
                self._flops = {flops_key: result.comparison.flops}
                self.result = result
            finally:
                self.busy = False

        app.command("compare", run)

    def use(self, label: str) -> None:
        """Make row ``label`` the acting estimator, with the weight, T, N and seed compared
        (best-of-N: estimator ``none`` with best-of-N on)."""
        result = self.result
        if result is None:
            raise RuntimeError("nothing compared yet")
        row = result.comparison.row(label)
        if row.label == ONESTEP:
            raise ValueError("the one-step policy is shown for comparison; it cannot act here")
        s = result.settings
        self.app.select_estimator(
            row.estimator,
            row.pick_best,
            weight=s.weight,
            steps=s.steps,
            candidates=s.candidates,
            seed=s.seed,
        )

    def set_paths(
        self,
        show: bool | None = None,
        all_candidates: bool | None = None,
        only_compared: bool | None = None,
    ) -> None:
        """Which paths the scene draws (None: unchanged)."""
        if show is not None:
            self.show_paths = bool(show)
        if all_candidates is not None:
            self.all_candidates = bool(all_candidates)
        if only_compared is not None:
            self.only_compared = bool(only_compared)
        self._publish()

    # --- GUI thread -----------------------------------------------------------------------
    def build(self, app: Host) -> None:
        """The panel in the controls column (an ``app.panels`` entry), and the window."""
        import dearpygui.dearpygui as dpg

        t = self.tags
        cb = app.callback
        with dpg.collapsing_header(label="Compare estimators", default_open=True):
            with dpg.group(horizontal=True):
                t["compute"] = dpg.add_button(
                    label="Compare at this step (C)", callback=cb("compare", self.request)
                )
                t["show_window"] = dpg.add_button(
                    label="Table", callback=cb("compare table", lambda *_: self.toggle_window())
                )
            with dpg.group(horizontal=True):
                t["paths"] = dpg.add_checkbox(
                    label="paths in scene", default_value=self.show_paths,
                    callback=cb("compare paths", lambda s, v, u: self.set_paths(show=v)),
                )  # fmt: skip
                t["all"] = dpg.add_checkbox(
                    label="all N candidates", default_value=self.all_candidates,
                    callback=cb("compare paths", lambda s, v, u: self.set_paths(all_candidates=v)),
                )  # fmt: skip
            t["only"] = dpg.add_checkbox(
                label="hide the step's own candidates meanwhile",
                default_value=self.only_compared,
                callback=cb("compare paths", lambda s, v, u: self.set_paths(only_compared=v)),
            )
            t["note"] = dpg.add_text(self.note, wrap=0, color=(170, 175, 185))
        self._build_window()

    def _build_window(self) -> None:
        import dearpygui.dearpygui as dpg

        t = self.tags
        with dpg.theme() as opaque, dpg.theme_component(dpg.mvAll):
            # The app's windows and panels are transparent (see ViewerApp._theme); this one
            # lies over the plot row and must be readable.
            dpg.add_theme_color(dpg.mvThemeCol_WindowBg, (26, 29, 36, 252))
            dpg.add_theme_color(dpg.mvThemeCol_ChildBg, (26, 29, 36, 252))
            dpg.add_theme_style(dpg.mvStyleVar_CellPadding, 5, 2)
            # Flat buttons keep all rows in the window's height.
            dpg.add_theme_style(dpg.mvStyleVar_FramePadding, 4, 1)
        with dpg.window(
            label="Estimators side by side", show=False, width=900, height=WINDOW_HEIGHT,
            no_scrollbar=True,
        ) as t["window"]:  # fmt: skip
            with dpg.group(horizontal=True):
                dpg.add_button(
                    label="Compare at this step",
                    callback=self.app.callback("compare", self.request),
                )
                t["info"] = dpg.add_text("")
            with dpg.group(horizontal=True):
                with (
                    dpg.child_window(
                        width=_TABLE_WIDTH, height=-1, border=False, no_scrollbar=True
                    ),
                    dpg.table(
                        header_row=True, row_background=True, borders_innerV=True,
                        policy=dpg.mvTable_SizingFixedFit,
                    ) as t["table"],
                ):  # fmt: skip
                    for name in _COLUMNS:
                        dpg.add_table_column(label=name)
                with dpg.plot(
                    label="Q(s, a_hat) along denoising, executed candidate", width=-1, height=-1
                ) as t["plot"]:
                    dpg.add_plot_legend(outside=True, location=dpg.mvPlot_Location_East)
                    t["x"] = dpg.add_plot_axis(dpg.mvXAxis, label="denoising step k (T: final)")
                    t["y"] = dpg.add_plot_axis(dpg.mvYAxis, label="Q")
        dpg.bind_item_theme(t["window"], opaque)

    def _show_window(self) -> None:
        """Show the window; the first time over the plot row, whose height it takes, so the
        scene and the controls stay in view (afterwards where the user left it)."""
        import dearpygui.dearpygui as dpg

        window = self.tags["window"]
        if dpg.is_item_shown(window):
            return
        if not self._placed:
            self._placed = True
            vw = dpg.get_viewport_client_width() or self.app.width
            vh = dpg.get_viewport_client_height() or self.app.height
            y = max(0, vh - WINDOW_HEIGHT - STATUS_HEIGHT - 4)
            dpg.configure_item(window, width=max(600, vw - 16), height=WINDOW_HEIGHT, pos=(8, y))
        dpg.show_item(window)

    def toggle_window(self) -> None:
        import dearpygui.dearpygui as dpg

        if dpg.is_item_shown(self.tags["window"]):
            dpg.hide_item(self.tags["window"])
        else:
            self._show_window()

    def tick(self, app: Host) -> None:
        """Every GUI frame: show a new result, clear a stale one, keep the status current."""
        import dearpygui.dearpygui as dpg

        result = self.result
        if result is not None and result is not self._shown:
            self._fill(result)
            self._show_window()
        shown, spec = self._shown, app.frame_spec
        # A frame older than the result may still be on screen: only newer ones can say
        # that the state moved on.
        if (
            shown is not None
            and spec is not None
            and spec.record is not None
            and spec.version != self._checked_version
            and spec.version >= shown.version
        ):
            self._checked_version = spec.version
            if frame_key(spec) != shown.key:
                self.clear(f"cleared: the state changed (was step {shown.index})")
        if self._shown is not None and spec is not None and spec.view is not None:
            self._mark_acting(spec.view.settings)
        self._publish()
        dpg.set_value(self.tags["note"], "computing ..." if self.busy else self.note)

    def clear(self, note: str = "") -> None:
        import dearpygui.dearpygui as dpg

        if self.result is self._shown:  # a result that just arrived stays
            self.result = None
        self._shown = None
        self.note = note
        dpg.delete_item(self.tags["table"], children_only=True, slot=1)
        dpg.delete_item(self.tags["y"], children_only=True)
        dpg.set_value(self.tags["info"], note)
        self.cell_tags, self.use_tags = {}, {}
        self._publish()

    def _theme(self, rgba) -> int | str:
        # The app's own series themes and colour conversion (imported here: the app imports
        # this module).

        color = rgb255(rgba)
        if color not in self._themes:
            self._themes[color] = line_theme(color, 2.0)
        return self._themes[color]

    def _fill(self, result: CompareResult) -> None:
        import dearpygui.dearpygui as dpg

        t = self.tags
        c = result.comparison
        self._shown = result
        self._checked_version = -1
        s = result.settings
        threshold = f"{c.threshold:.3f}" if math.isfinite(c.threshold) else "n/a"
        dpg.set_value(
            t["info"],
            f"step {result.index}, same noise for every row: w = {s.weight:g}, T = {s.steps}, "
            f"N = {s.candidates}, seed {s.seed}.  off: share of the N farther from the data "
            f"than {threshold}.  cos: G(a_t) vs G(a_t + {c.eps:g} xi).  {result.seconds:.1f} s",
        )
        self.note = f"step {result.index}: {len(c.rows)} rows in {result.seconds:.1f} s"
        dpg.delete_item(t["table"], children_only=True, slot=1)
        self.cell_tags, self.use_tags = {}, {}

        for i, row in enumerate(c.rows):
            color = rgb255(row_rgba(c, i))
            text = cells(row)
            with dpg.table_row(parent=t["table"]):
                tags = {"mark": dpg.add_text("", color=(255, 255, 255))}
                for name in _COLUMNS[1:-1]:
                    colored = {"color": color} if name == "estimator" else {}
                    if name == "NaN" and row.nonfinite:
                        colored = {"color": rgb255(NONFINITE_RGBA)}
                    tags[name] = dpg.add_text(text[name], **colored)
                if row.label == ONESTEP:  # a policy of its own, not a sampler setting
                    dpg.add_text(_NA)
                else:
                    self.use_tags[row.label] = dpg.add_button(
                        label="use", small=True,
                        callback=self.app.callback("use", lambda *_, lb=row.label: self.use(lb)),
                    )  # fmt: skip
            self.cell_tags[row.label] = tags

        dpg.delete_item(t["y"], children_only=True)
        k = list(range(c.steps + 1))
        values = []
        for i, row in enumerate(c.rows):
            q = row.q_denoise[:, row.executed].double().numpy()
            values.append(q)
            series = dpg.add_line_series(k, q.tolist(), label=row.label, parent=t["y"])
            dpg.bind_item_theme(series, self._theme(row_rgba(c, i)))
        finite = np.concatenate(values)
        finite = finite[np.isfinite(finite)]
        if finite.size:
            lo, hi = float(finite.min()), float(finite.max())
            pad = 0.08 * (hi - lo) + 1e-6
            dpg.set_axis_limits(t["y"], lo - pad, hi + pad)
        dpg.set_axis_limits(t["x"], 0, c.steps)
        self._acting = ""  # marked on the next tick

    def _mark_acting(self, settings: Settings) -> None:
        import dearpygui.dearpygui as dpg

        acting = acting_label(settings, self._shown.comparison)
        if acting == self._acting:
            return
        self._acting = acting
        for label, tags in self.cell_tags.items():
            dpg.set_value(tags["mark"], "\u25b6" if label == acting else "")
            if label in self.use_tags:
                dpg.configure_item(
                    self.use_tags[label], label="acting" if label == acting else "use"
                )
