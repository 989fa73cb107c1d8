"""Signals that end a command: SIGTERM raised like Ctrl-C, and the exit status of each.

Ctrl-C (SIGINT) reaches Python as ``KeyboardInterrupt``; SIGTERM, by default, kills the
process where it stands, so no ``except`` or ``finally`` runs: temporary files stay, a video
is not finalised, a sweep's tasks are not cancelled. ``sigterm_raises`` makes SIGTERM raise
``Terminated``, a ``KeyboardInterrupt``, so every cleanup written for Ctrl-C runs for a
polite kill too; ``interrupted_status`` is then 143 (128 + 15, as a shell reports a process
killed by SIGTERM) instead of Ctrl-C's 130.

Two ways an interruption changes shape on its way up, both handled here: Ray turns any
exception raised by a signal handler while it waits into a plain ``KeyboardInterrupt`` (so
whether SIGTERM came is also noted when it comes: ``terminated``), and an interrupt during a
C extension's import surfaces as ``ImportError: initialization failed`` caused by it
(``interruption`` finds it in the chain).

These live apart from ``core.cli`` because ``python -m core.cli`` runs that module as
``__main__``: a class defined there would exist twice, and ``isinstance`` checks elsewhere
would miss the copy that was raised.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: raised where the program is, as Ctrl-C raises ``KeyboardInterrupt``."""


# The signal that came during ``sigterm_raises``' block, if any (SIGINT or SIGTERM).
_came: list[int] = []


def _raise_terminated(signum: int, frame: object) -> None:
    _came.append(signum)
    raise Terminated


def _raise_interrupted(signum: int, frame: object) -> None:
    _came.append(signum)
    raise KeyboardInterrupt


def terminated(e: KeyboardInterrupt) -> bool:
    """Whether ``e`` came from SIGTERM (itself a ``Terminated``, or raised in its place)."""
    return isinstance(e, Terminated) or signal.SIGTERM in _came


def signal_came() -> bool:
    """Whether SIGINT or SIGTERM came during ``sigterm_raises``' block: then an error that
    ends the command is the interruption's doing, even where a library swallowed the
    ``KeyboardInterrupt`` (and then failed on what it left half made)."""
    return bool(_came)


def interruption(error: BaseException) -> KeyboardInterrupt | None:
    """The ``KeyboardInterrupt`` that ``error`` is or was caused by, if any."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """For the block, SIGTERM raises ``Terminated`` and both SIGTERM and Ctrl-C are noted
    (``terminated``, ``signal_came``); the handlers before it are put back after (``main``
    called from a test or a notebook leaves the host's handling as it was).

    Only in the main thread, and a signal that is ignored stays ignored (a parent that
    ignores it for this process meant it), as does one a host program handles itself.
    """
    _came.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    ours = {
        signal.SIGTERM: (signal.SIG_DFL, _raise_terminated),
        signal.SIGINT: (signal.default_int_handler, _raise_interrupted),
    }
    previous: dict[int, Any] = {}
    for signum, (default, handler) in ours.items():
        if signal.getsignal(signum) is default:
            previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for number, before in previous.items():
            signal.signal(number, before)


def interrupted_status(e: KeyboardInterrupt) -> int:
    """The exit status of an interrupted command: 143 for SIGTERM, 130 for Ctrl-C."""
    return 128 + (signal.SIGTERM if terminated(e) else signal.SIGINT)
