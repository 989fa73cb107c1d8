"""Runs a session's commands on a thread of its own, so the GUI never waits for the policy.

The GUI thread ``submit``s commands (callables taking the session) and keeps drawing; the
worker runs them in order. Commands submitted under the same key replace a pending one
("newest wins"): dragging the weight slider queues one re-sample, not one per frame. While
playing, the worker steps the session at the chosen speed whenever no command is pending.

Errors never escape the thread: each is kept in ``errors`` (newest last) and passed to
``on_error`` for the status bar, and the worker keeps running.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from viewer.session import Session

Command = Callable[[Session], Any]
# Steps per second that "real time" means: OGBench manipulation is controlled at 20 Hz.
REAL_TIME_STEPS = 20.0
_GATE_POLL = 0.003


@dataclass
class WorkerError:
    """An exception raised by a command: where (``what``), the message, and the traceback."""

    what: str
    message: str
    details: str
    time: float


class Worker:
    """A single thread that owns all mutation of a ``Session``.

    Args:
        session: the session to drive.
        on_error: called (on the worker thread) with each ``WorkerError``.
    """

    def __init__(
        self, session: Session, on_error: Callable[[WorkerError], None] | None = None
    ) -> None:
        self.session = session
        self.on_error = on_error
        self.errors: deque[WorkerError] = deque(maxlen=50)
        # Called on the worker thread after every command or play step (e.g. to wake the
        # renderer at once rather than at its next poll).
        self.after_command: list[Callable[[], None]] = []
        # While playing, a step starts only when this says so (None: always). The viewer
        # uses it to stay at most one step ahead of the renderer: steps nobody sees would
        # take CPU from the frames people do see.
        self.play_gate: Callable[[], bool] | None = None
        self.playing = False
        self.speed = REAL_TIME_STEPS  # steps per second; 0 = as fast as possible
        self.commands_run = 0
        self.episodes_ended = 0  # episodes that play ran to their end (a loop moves on then)
        self.pauses = 0  # calls of pause (a loop waiting to move on gives way to one)
        self._pending: OrderedDict[str, Command] = OrderedDict()
        self._cv = threading.Condition()
        self._busy = False
        self._stop = False
        self._last_step = 0.0
        self._thread = threading.Thread(target=self._run, name="qgf-policy", daemon=True)
        self._thread.start()

    # --- GUI-side API (any thread) ------------------------------------------------------
    def submit(self, key: str, command: Command) -> None:
        """Queue ``command``; a pending command with the same ``key`` is replaced."""
        with self._cv:
            self._pending.pop(key, None)
            self._pending[key] = command
            self._cv.notify_all()

    def play(self) -> None:
        with self._cv:
            self.playing = True
            self._cv.notify_all()

    def pause(self) -> None:
        with self._cv:
            self.playing = False
            self.pauses += 1
            self._cv.notify_all()

    def toggle(self) -> bool:
        """Play if paused, pause if playing; returns whether it now plays."""
        with self._cv:
            self.playing = not self.playing
            self._cv.notify_all()
            return self.playing

    def set_speed(self, steps_per_second: float) -> None:
        with self._cv:
            self.speed = max(0.0, float(steps_per_second))
            self._cv.notify_all()

    @property
    def busy(self) -> bool:
        """A command or step is running, or one is pending."""
        with self._cv:
            return self._busy or bool(self._pending)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until nothing is pending or running (ignores play); False on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: not (self._busy or self._pending), timeout)

    def close(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stop = True
            self.playing = False
            self._cv.notify_all()
        self._thread.join(timeout)

    # --- the thread ---------------------------------------------------------------------
    def _next(self) -> tuple[str, Command] | None:
        """Wait for the next command (or play step); None means stop."""
        with self._cv:
            while True:
                if self._stop:
                    return None
                if self._pending:
                    self._busy = True
                    return self._pending.popitem(last=False)
                if self.playing:
                    wait = self._step_wait()
                    if wait <= 0 and self.play_gate is not None and not self.play_gate():
                        wait = _GATE_POLL
                    if wait <= 0:
                        self._busy = True
                        return "play", _play_step
                    self._cv.wait(wait)
                else:
                    self._cv.wait()

    def _step_wait(self) -> float:
        if self.speed <= 0:
            return 0.0
        return self._last_step + 1.0 / self.speed - time.perf_counter()

    def _run(self) -> None:
        while True:
            item = self._next()
            if item is None:
                return
            key, command = item
            try:
                if key == "play":
                    self._last_step = time.perf_counter()
                command(self.session)
                if key == "play" and self.session.done:
                    # The episode has ended: stop where it ended, so its last frame stays.
                    # Counted only if play was still on (not paused while the step ran).
                    with self._cv:
                        if self.playing:
                            self.episodes_ended += 1
                        self.playing = False
            except Exception as e:  # a command's error must never end the worker
                self._report(key, e)
                if key == "play":
                    self.playing = False
            finally:
                for fn in list(self.after_command):
                    try:
                        fn()
                    except Exception as e:  # a listener must not end the worker either
                        self._report("after command", e)
                with self._cv:
                    self._busy = False
                    self.commands_run += 1
                    self._cv.notify_all()

    def _report(self, what: str, e: BaseException) -> None:
        err = WorkerError(what, f"{type(e).__name__}: {e}", traceback.format_exc(), time.time())
        self.errors.append(err)
        if self.on_error is not None:
            try:
                self.on_error(err)
            except Exception:  # the reporter itself failing must not end the worker
                traceback.print_exc()


def _play_step(session: Session) -> None:
    if not session.done:
        session.step()
