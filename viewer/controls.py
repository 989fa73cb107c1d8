"""The viewer's widgets: the window, the scene's legend, the controls column, the help, the
file dialogs, the key and mouse handlers and the theme, built once. A part of ``ViewerApp``,
kept apart because it is the app's layout, not its behaviour.
"""

from __future__ import annotations

from pathlib import Path

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
    time_color,
)
from viewer.timeline_file import TIMELINE_DIR
from viewer.widgets import (
    _FONT,
    _RESOLUTIONS,
    CONTROLS_WIDTH,
    DEFAULT_PATH_SCALE,
    KEYS,
    WEIGHT_STEP,
    rgb255,
    scale_note,
)
from viewer.worker import REAL_TIME_STEPS


class ControlsMixin:
    """``ViewerApp``'s widget building (see the module docstring); fills the app's ``_tags``."""

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
        self._build_error_theme()
        with dpg.theme() as self._play_theme, dpg.theme_component(dpg.mvButton):
            dpg.add_theme_color(dpg.mvThemeCol_Button, (40, 120, 60))

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
                scale_note(DEFAULT_PATH_SCALE), color=(120, 220, 255)
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
                t["loop"] = dpg.add_checkbox(
                    label="loop", default_value=self.loop, callback=cb("loop", self.on_loop)
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
