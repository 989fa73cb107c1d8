"""A seeded random walk over every control and key of a window: the debugger
(``viewer.app.ViewerApp``) or the demo (``viewer.demo_app.DemoApp``).

The controls are enumerated from the window itself, after every event: each Dear PyGui item
with a callback (buttons, sliders, inputs, combos, checkboxes, radio buttons, file dialogs,
key, wheel and click handlers), so a control added later is walked without a change here.
Each event is sent as Dear PyGui sends it: the widget's value is set, then its callback is
called with ``(sender, app_data, user_data)``. Values are drawn from the widget's own range
or, as often, from hostile ones (0, 1e-9, 1e3, NaN, inf, -inf, text, out-of-range
integers), so refusals are exercised as much as acceptances.

Besides single controls the walk has compound events: scrub to a random past step and branch
there, save the timeline and open the file, open a bad checkpoint or timeline path, reset
while on a branch, play a few frames.

After every event the walk checks (``Monkey.check``): the window still draws a frame, its
worker and render threads are alive, no exception escaped a callback, an error raised by
the event is the one the status bar shows, and the session was not poisoned (its settings
are valid and the controls show them, the landscape's slice controls too), and an error
is a refusal, not a bug (``_internal``: none from a per-frame part, none of an internal
type such as TypeError or OverflowError). Every ``replay_every`` events and at the end, for
the debugger, ``Session.replay`` is exact on every branch.

Left out on purpose (``SKIP``): the demo's Tab (starts the debugger in a second process,
tests/test_demo_app.py covers it), F11 (full screen, a window-manager request), screenshot
buttons and keys and the record toggles (they wait on files for seconds each; the window
tests cover them), the resize callback (not an item), the viewport's close; and the
comparison of every estimator while T x N exceeds ``COMPARE_BUDGET`` (legal, but minutes of
CPU each on a loaded machine). The file dialogs are sent paths directly (their own browsing
is Dear PyGui's). The demo has no branches; its walk checks the panes' weights and the
slider instead of replays.

Each event is an ``Event``; a failing walk raises ``MonkeyFailure`` with the seed and the
events so far, which ``replay_events`` sends again to reproduce it. Run one walk with
``python tests/monkey.py debugger|demo --seeds 0 --events 500`` (``main``).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOSTILE_FLOATS = (0.0, 1e-9, 1e3, math.nan, math.inf, -math.inf, -1.0, "text")
HOSTILE_INTS = (0, 1, 100, 64, 10**6, -1, math.nan, math.inf, "text")
# Controls left out of the walk, by name (``control_names``), and why (module docstring).
SKIP = frozenset(
    {
        "key_tab",
        "key_f11",
        "key_p",
        "key_v",
        "record",
        "mvButton:Screenshot",
    }
)
# The window's per-frame parts (``ViewerApp.frame``, ``DemoApp.frame``): an error there is
# never a refusal of an input.
FRAME_PARTS = frozenset(
    {"mouse", "upload", "refresh", "tick", "status", "render scale", "debugger"}
)
INTERNAL_ERRORS = frozenset(
    {
        "AttributeError",
        "AssertionError",
        "IndexError",
        "KeyError",
        "NameError",
        "OverflowError",
        "TypeError",
        "UnboundLocalError",
        "ZeroDivisionError",
    }
)
COMPARE = frozenset({"key_c", "compare.compute", "mvButton:Compare at this step"})
COMPARE_BUDGET = 256
SETTLE_SECONDS = 300.0


@dataclass(frozen=True)
class Event:
    """One step of the walk: ``kind`` with a ``target`` control name and a ``value``."""

    kind: str
    target: str = ""
    value: Any = None

    def __str__(self) -> str:
        return f"Event({self.kind!r}, {self.target!r}, {self.value!r})"


class MonkeyFailure(AssertionError):
    """A check failed: the message names it, the seed and the replayable events."""


@dataclass
class Tally:
    """What a walk saw: events sent, errors shown in the status bar, replay checks."""

    events: int = 0
    errors_shown: int = 0
    replays: int = 0
    replays_exact: int = 0
    kinds: Counter = field(default_factory=Counter)
    messages: Counter = field(default_factory=Counter)


def control_names(app) -> dict[str, int | str]:
    """Every item of the window with a callback, by a name stable across runs: the app's
    own tag name where it has one, else the item type and label."""
    import dearpygui.dearpygui as dpg

    by_item = {}
    for tags in _tag_maps(app):
        for name, item in tags.items():
            by_item.setdefault(dpg.get_alias_id(item) if isinstance(item, str) else item, name)
    out: dict[str, int | str] = {}
    for item in dpg.get_all_items():
        if dpg.get_item_callback(item) is None:
            continue
        kind = dpg.get_item_info(item)["type"].split("::")[-1]
        name = by_item.get(item) or f"{kind}:{dpg.get_item_label(item) or ''}"
        while name in out:
            name += "'"
        out[name] = item
    return out


def _tag_maps(app) -> list[dict]:
    maps = [app._tags]
    for part in ("compare", "landscape"):
        view = getattr(app, part, None)
        if view is not None:
            maps.append({f"{part}.{k}": v for k, v in view.tags.items()})
    return maps


class Monkey:
    """The walk over one built window ``app`` (``ViewerApp`` or ``DemoApp``).

    Args:
        app: the window, built, its first frame shown.
        seed: the walk's seed (events are drawn from ``random.Random(seed)``).
        folder: where timelines, bad files and recordings go.
        replay_every: events between two replay checks (debugger only).
    """

    def __init__(self, app, seed: int, folder: Path, replay_every: int = 50) -> None:
        self.app = app
        self.seed = seed
        self.folder = Path(folder)
        self.replay_every = replay_every
        self.rng = random.Random(seed)
        self.log: list[Event] = []
        self.tally = Tally()
        self.debugger = hasattr(app.session, "branches")
        self._bad = self._bad_files()

    # --- the walk -----------------------------------------------------------------------
    def run(self, events: int) -> Tally:
        for i in range(events):
            self.send(self.next_event())
            if self.debugger and (i + 1) % self.replay_every == 0:
                self.check_replay()
        if self.debugger:
            self.check_replay()
        return self.tally

    def replay_events(self, events: list[Event]) -> Tally:
        """Send ``events`` (a failing walk's log) in order, with every check."""
        for event in events:
            self.send(event)
        if self.debugger:
            self.check_replay()
        return self.tally

    def send(self, event: Event) -> None:
        self.log.append(event)
        self.tally.events += 1
        self.tally.kinds[event.kind] += 1
        app = self.app
        errors = app.errors
        try:
            self.apply(event)
            self.settle()
        except MonkeyFailure:
            raise
        except Exception as e:
            self.fail(f"{type(e).__name__} escaped the app: {e}")
        self.check(errors)

    def fail(self, what: str) -> None:
        lines = "\n".join(f"    {e}," for e in self.log)
        raise MonkeyFailure(f"{what}\nseed {self.seed}, events:\n[\n{lines}\n]")

    # --- drawing events -----------------------------------------------------------------
    def next_event(self) -> Event:
        rng = self.rng
        roll = rng.random()
        if self.debugger:
            if roll < 0.05:
                return Event("branch", value=rng.random())
            if roll < 0.08:
                return Event("save_open")
            if roll < 0.10:
                return Event("bad_path", value=rng.choice(sorted(self._bad)))
            if roll < 0.12:
                return Event("reset_mid_branch", value=rng.random())
        if roll < 0.18:
            return Event("play", value=rng.randint(1, 6))
        controls = sorted(n for n in control_names(self.app) if n not in self._skipped())
        name = rng.choice(controls)
        return Event("invoke", name, self.value_for(name))

    def _skipped(self) -> frozenset[str]:
        """``SKIP``, and the comparison of every estimator while T x N is above
        ``COMPARE_BUDGET`` (minutes of CPU each on a loaded machine; legal, but it would
        make the walk's length a matter of luck)."""
        s = getattr(self.app.session, "settings", None)
        if s is None or s.steps * s.candidates <= COMPARE_BUDGET:
            return SKIP
        return SKIP | COMPARE

    def value_for(self, name: str) -> Any:
        """A value for control ``name``: from its range, or (one time in three) hostile."""
        import dearpygui.dearpygui as dpg

        rng = self.rng
        item = control_names(self.app)[name]
        kind = dpg.get_item_info(item)["type"].split("::")[-1]
        conf = dpg.get_item_configuration(item)
        hostile = rng.random() < 1 / 3
        if kind in ("mvSliderFloat", "mvInputFloat", "mvDragFloat"):
            if hostile:
                return rng.choice(HOSTILE_FLOATS)
            lo, hi = conf.get("min_value", 0.0), conf.get("max_value", 1.0)
            if kind == "mvInputFloat" or not lo < hi:
                lo, hi = 0.0, 1.0
            return rng.choice((lo, hi, rng.uniform(lo, hi)))
        if kind in ("mvSliderInt", "mvInputInt", "mvDragInt"):
            if hostile:
                return rng.choice(HOSTILE_INTS)
            lo, hi = int(conf.get("min_value", 0)), int(conf.get("max_value", 100))
            if kind == "mvInputInt" or not lo < hi:
                lo, hi = 0, 100
            return rng.choice((lo, hi, rng.randint(lo, hi)))
        if kind in ("mvCombo", "mvRadioButton"):
            items = list(conf.get("items") or [])
            if hostile or not items:
                return rng.choice(("no such item", "", "text"))
            return rng.choice(items)
        if kind == "mvCheckbox":
            return rng.random() < 0.5
        if kind == "mvFileDialog":
            return {"file_path_name": rng.choice(sorted(self._bad)), "current_path": ""}
        if kind == "mvMouseWheelHandler":
            return rng.choice((-1, 1, 3))
        return None

    # --- applying events ----------------------------------------------------------------
    def apply(self, event: Event) -> None:
        getattr(self, f"_do_{event.kind}")(event)

    def _do_invoke(self, event: Event) -> None:
        import dearpygui.dearpygui as dpg

        controls = control_names(self.app)
        if event.target not in controls:
            return  # a control that exists only in some states (e.g. a table's buttons)
        item = controls[event.target]
        kind = dpg.get_item_info(item)["type"].split("::")[-1]
        value = event.value
        if value is not None and not kind.endswith("Handler") and kind != "mvFileDialog":
            # A widget that cannot hold the value (text in a float slider) refuses it
            # here; its callback gets it anyway, as typed.
            with contextlib.suppress(Exception):
                dpg.set_value(item, value)
        dpg.get_item_callback(item)(item, value, dpg.get_item_user_data(item))

    def _do_play(self, event: Event) -> None:
        app = self.app
        app.worker.play()
        for _ in range(int(event.value)):
            app.frame()
            app.frames.wait_frame(app._rendered_seen, timeout=0.2)
        app.worker.pause()

    def _scrub(self, fraction: float) -> None:
        """Show the recorded step at ``fraction`` of the branch's history, via its slider."""
        steps = len(self.app.session.history)
        self._invoke_tag("timeline", int(round(fraction * steps)))
        self.settle()

    def _invoke_tag(self, name: str, value: Any = None) -> None:
        self._do_invoke(Event("invoke", name, value))

    def _do_branch(self, event: Event) -> None:
        self._scrub(event.value)
        self._invoke_tag("branch_here")

    def _do_reset_mid_branch(self, event: Event) -> None:
        self._do_branch(event)
        self.settle()
        self._invoke_tag("key_r")

    def _do_save_open(self, event: Event) -> None:
        import dearpygui.dearpygui as dpg

        self._invoke_tag("save_timeline")
        self.settle()
        path = self.app._saved[0] if self.app._saved else None
        if path is None or not Path(path).exists():
            self.fail("Save timeline wrote no file")
        dialog = control_names(self.app)["timeline_dialog"]
        dpg.get_item_callback(dialog)(dialog, {"file_path_name": str(path)}, None)

    def _do_bad_path(self, event: Event) -> None:
        import dearpygui.dearpygui as dpg

        controls = control_names(self.app)
        for name in ("file_dialog", "timeline_dialog"):
            dialog = controls[name]
            data = {"file_path_name": event.value, "current_path": event.value}
            dpg.get_item_callback(dialog)(dialog, data, None)
            self.settle()

    def _bad_files(self) -> set[str]:
        """Paths no checkpoint or timeline opens: missing, empty, garbage, a bare folder."""
        root = self.folder / "bad"
        (root / "empty-dir").mkdir(parents=True, exist_ok=True)
        (root / "fake-ckpt").mkdir(exist_ok=True)
        (root / "fake-ckpt" / "config.json").write_text("{not json")
        (root / "garbage.timeline.safetensors").write_bytes(b"\x00garbage" * 9)
        (root / "empty.timeline.safetensors").write_bytes(b"")
        names = ("missing", "empty-dir", "fake-ckpt", "garbage.timeline.safetensors")
        return {str(root / n) for n in names} | {str(root / "empty.timeline.safetensors")}

    # --- checks -------------------------------------------------------------------------
    def settle(self) -> None:
        """Let the worker finish and the newest state reach the screen."""
        app = self.app
        end = time.monotonic() + SETTLE_SECONDS
        app.frame()
        if app.worker.playing:  # the state moves on: draw what there is, a frame or two
            for _ in range(2):
                app.frames.wait_frame(app._rendered_seen, timeout=0.2)
                app.frame()
            return
        if not app.worker.wait_idle(SETTLE_SECONDS):
            self.fail("the worker did not finish within the settle time")
        while app.frame_spec is None or app.frame_spec.version != app.session.version:
            if time.monotonic() > end:
                self.fail("the newest state never reached the screen")
            app.frame()
            app.frames.wait_frame(app._rendered_seen, timeout=0.05)
        app.frame()
        # The debugger sets its controls from the session once its worker is idle, which a
        # command of its own (the sweep plot's) can put off by a frame or more.
        while getattr(app, "_resync", False):
            if time.monotonic() > end:
                self.fail("the controls were never set from the session")
            app.worker.wait_idle(SETTLE_SECONDS)
            app.frame()

    def check(self, errors: int) -> None:
        app = self.app
        if not app.worker._thread.is_alive():
            self.fail("the worker thread died")
        if not app.frames._thread.is_alive():
            self.fail("the render thread died")
        if app.errors > errors:
            self.tally.errors_shown += app.errors - errors
            shown = [m for m in app.messages if m.error]
            for message in shown[-(app.errors - errors) :]:
                self.tally.messages[_shape(message.text)] += 1
                if _internal(message.text):
                    self.fail(f"an internal error, not a refusal: {message.text!r}")
            last = shown[-1]
            # An error raised in a frame's tick is drawn by the next frame's status.
            for _ in range(3):
                if last.text in self.status():
                    break
                app.frame()
            else:
                self.fail(f"error {last.text!r} not in the status bar: {self.status()!r}")
        self.check_session()

    def status(self) -> str:
        import dearpygui.dearpygui as dpg

        t = self.app._tags
        return " ".join(str(dpg.get_value(t[k])) for k in ("status_text", "status_error"))

    def check_session(self) -> None:
        """The session's settings are valid and the controls show them (a refused value
        must not stay in a control, nor reach the session)."""
        import dearpygui.dearpygui as dpg

        app = self.app
        t = app._tags
        if self.debugger:
            s = app.session.settings
            try:
                s.validate()
            except ValueError as e:
                self.fail(f"the session holds bad settings: {e}")
            if app.worker.playing:
                return  # commands may still wait behind play steps: the controls lead
            shown = {
                "weight": float(dpg.get_value(t["weight_input"])),
                "steps": dpg.get_value(t["steps"]),
                "candidates": dpg.get_value(t["candidates"]),
                "estimator": dpg.get_value(t["estimator"]),
                "pick_best": dpg.get_value(t["pick_best"]),
                "seed": dpg.get_value(t["seed"]),
            }
            for key, value in shown.items():
                want = getattr(s, key)
                same = (
                    math.isclose(value, want, rel_tol=1e-4, abs_tol=1e-9)
                    if key == "weight"
                    else value == want
                )
                if not same:
                    self.fail(f"the {key} control shows {value!r}, the session has {want!r}")
            slider = float(dpg.get_value(t["weight_slider"]))
            if not math.isfinite(slider):
                self.fail(f"the weight slider holds {slider!r}")
            self.check_landscape()
        else:
            for pane in app.session.panes:
                w = pane.spec.weight
                if not (math.isfinite(w) and w >= 0):
                    self.fail(f"pane {pane.spec.caption!r} has weight {w!r}")
            slider = float(dpg.get_value(t["slider"]))
            if not math.isfinite(slider):
                self.fail(f"the weight slider holds {slider!r}")
            live = app.live_weight
            if (
                live is not None
                and not app.worker.playing
                and f"w = {live:g}" != dpg.get_value(t["weight_text"])
            ):
                self.fail(
                    f"the weight text shows {dpg.get_value(t['weight_text'])!r}, "
                    f"the live pane has w = {live:g}"
                )

    def check_landscape(self) -> None:
        """The landscape's slice controls show the slice in use."""
        import dearpygui.dearpygui as dpg

        from viewer.landscape_view import DIM_NAMES

        view = self.app.landscape
        spec, t = view.spec, view.tags
        want = {
            "dim_x": DIM_NAMES[spec.dims[0]],
            "dim_y": DIM_NAMES[spec.dims[1]],
            "chunk": spec.chunk_index + 1,
            "hold": spec.hold,
            "res": str(spec.resolution),
            "heat": view.heat,
        }
        for key, value in want.items():
            if dpg.get_value(t[key]) != value:
                self.fail(f"landscape {key} shows {dpg.get_value(t[key])!r}, in use: {value!r}")

    def check_replay(self) -> None:
        """``Session.replay`` is exact on every branch (run on the worker, which owns it)."""
        app = self.app
        results: list = []
        branches: list[int] = []  # counted on the worker, with the replays

        def replay(session) -> None:
            branches.append(len(session.branches))
            results.extend(session.replay(b) for b in range(branches[0]))

        app.worker.submit("monkey replay", replay)
        # Waited for by itself: while playing, settle() draws a frame or two and returns.
        if not app.worker.wait_idle(SETTLE_SECONDS):
            self.fail("the replay check did not finish within the settle time")
        self.settle()
        if not branches:
            self.fail("the replay check did not run")
        if len(results) != branches[0]:
            self.fail("the replay raised (the status bar says what)")
        self.tally.replays += len(results)
        self.tally.replays_exact += sum(r.exact for r in results)
        bad = [(b, r) for b, r in enumerate(results) if not r.exact]
        if bad:
            self.fail(f"replay not exact on branches {bad}")


def _internal(text: str) -> bool:
    """An error message (``what: Type: message``) that is a bug, not a refused input: raised
    by a per-frame part of the window (no input of the user's reached it), or of a type no
    input check raises."""
    what, _, rest = text.partition(": ")
    kind = rest.partition(":")[0]
    return what in FRAME_PARTS or kind in INTERNAL_ERRORS


def _shape(text: str) -> str:
    """An error message without its numbers and paths, to count messages by kind."""
    words = []
    for word in text.split()[:8]:
        words.append("#" if any(c.isdigit() for c in word) or "/" in word else word)
    return " ".join(words)


# --- running a walk in a process of its own ---------------------------------------------
ENV = "cube-single-play-singletask-task2-v0"


def open_window(app_name: str):
    """A built window of ``app_name`` ("debugger" or "demo") with small, quick settings,
    its first frame shown."""
    from dataclasses import replace

    from viewer.display import ensure_display

    if ensure_display() is None:
        raise RuntimeError("no DISPLAY and Xvfb is not installed")
    if app_name == "debugger":
        from core.defaults import default_checkpoint
        from viewer.app import ViewerApp
        from viewer.session import Session, Settings

        settings = Settings(env_name=ENV, steps=4, candidates=4, weight=0.03)
        app = ViewerApp(Session(default_checkpoint(), settings=settings))
    elif app_name == "demo":
        from viewer.demo_app import DemoApp
        from viewer.demo_session import DemoSession, default_preset

        preset = replace(default_preset(), steps=3, candidates=4, seeds=(0, 1, 2), hold=0.2)
        app = DemoApp(DemoSession(preset), width=1280, height=720)
    else:
        raise ValueError(f"no app {app_name!r}: debugger or demo")
    app.build()
    app._wait_first_frame()
    return app


def walk(app_name: str, runs: list, events: int, folder: Path) -> tuple[list[Tally], str | None]:
    """Run every walk of ``runs`` on one window: a seed (an int: ``events`` random events)
    or a list of ``Event`` to replay (a regression). Returns the tallies and the first
    ``MonkeyFailure``'s text (None if every run passed).

    Dear PyGui allows one window per process, so the runs share it: each starts from the
    state the window opened in (the debugger's saved as a timeline and opened again), so a
    failing seed's events replay from there in a fresh process.
    """
    import os

    os.chdir(folder)
    app = open_window(app_name)
    tallies: list[Tally] = []
    try:
        home = None
        if hasattr(app.session, "branches"):
            home = folder / "home.timeline.safetensors"
            app.worker.submit("home", lambda s: _save_home(s, home))
            app.worker.wait_idle(SETTLE_SECONDS)
        for i, run in enumerate(runs):
            seed = run if isinstance(run, int) else -1
            monkey = Monkey(app, seed, folder)
            if i and home is not None:
                app.open_timeline(home)
                monkey.settle()
            tallies.append(monkey.tally)
            try:
                monkey.run(events) if isinstance(run, int) else monkey.replay_events(run)
            except MonkeyFailure as e:
                return tallies, str(e)
        return tallies, None
    finally:
        app.close()


def _save_home(session, path: Path) -> None:
    from viewer.timeline_file import save_timeline

    save_timeline(session, path)


def main(argv: list[str] | None = None) -> int:
    """``python tests/monkey.py debugger|demo --seeds 0 1 --events 200 [--replay FILE ...]``:
    replays the events of each FILE (a JSON list of ``[kind, target, value]``), then walks
    each seed; prints one JSON line with the tallies (and the failure), exits 1 on one."""
    import argparse
    import json
    import tempfile

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("app", choices=("debugger", "demo"))
    p.add_argument("--seeds", type=int, nargs="*", default=[0])
    p.add_argument("--events", type=int, default=200)
    p.add_argument("--replay", type=Path, nargs="*", default=[])
    args = p.parse_args(argv)
    runs: list = [[Event(*e) for e in json.loads(f.read_text())] for f in args.replay]
    runs += args.seeds
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qgf-monkey-") as folder:
        tallies, failure = walk(args.app, runs, args.events, Path(folder))
    out = {
        "app": args.app,
        "runs": len(tallies),
        "events": sum(t.events for t in tallies),
        "errors_shown": sum(t.errors_shown for t in tallies),
        "replays": sum(t.replays for t in tallies),
        "replays_exact": sum(t.replays_exact for t in tallies),
        "seconds": round(time.perf_counter() - t0, 1),
        "messages": sum((t.messages for t in tallies), Counter()),
        "failure": failure,
    }
    print(json.dumps(out))
    return 1 if failure else 0


if __name__ == "__main__":
    raise SystemExit(main())
