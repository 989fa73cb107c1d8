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


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: raised where the program is, as Ctrl-C raises ``KeyboardInterrupt``."""


_sigterm_came = threading.Event()


def _raise_terminated(signum: int, frame: object) -> None:
    _sigterm_came.set()
    raise Terminated


def terminated(e: KeyboardInterrupt) -> bool:
    """Whether ``e`` came from SIGTERM (itself a ``Terminated``, or raised in its place)."""
    return isinstance(e, Terminated) or _sigterm_came.is_set()


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


def _raise_on_sigterm() -> None:
    """Make SIGTERM raise ``Terminated`` in the main thread, unless it is ignored (a parent
    that ignores it for this process meant it) or handled already (by a host program)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_terminated)


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """``_raise_on_sigterm`` for the block; the handler before it is put back after (``main``
    called from a test or a notebook leaves the host's handling as it was)."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main_thread else None
    _sigterm_came.clear()
    _raise_on_sigterm()
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def interrupted_status(e: KeyboardInterrupt) -> int:
    """The exit status of an interrupted command: 143 for SIGTERM, 130 for Ctrl-C."""
    return 128 + (signal.SIGTERM if terminated(e) else signal.SIGINT)
