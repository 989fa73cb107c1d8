"""The viewer's plots: the episode (Q, V, reward, success), Q and each action dimension along
denoising, the weight sweep and the branches, built once and redrawn from the latest
``FrameSpec`` (the GUI draws snapshots only). A part of ``ViewerApp``, kept apart because it
is the app's drawing, not its wiring.
"""

from __future__ import annotations

import math

import dearpygui.dearpygui as dpg
import numpy as np

from core.render import (
    OFF_MANIFOLD_RGBA,
    time_color,
)
from viewer.manifold_view import sweep_key
from viewer.session import FrameSpec, Session, SessionView, branch_rgba
from viewer.widgets import _ACTION_NAMES, _DIM_COLORS, PLOT_HEIGHT, line_theme, nan_joined, rgb255


class PlotsMixin:
    """``ViewerApp``'s plots (see the module docstring); uses the app's ``_tags``."""

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
