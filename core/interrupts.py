"""Signals that end a command: SIGTERM raised like Ctrl-C, and the exit status of each.

Ctrl-C (SIGINT) reaches Python as ``KeyboardInterrupt``; SIGTERM, by default, kills the
process where it stands, so no ``except`` or ``finally`` runs: temporary files stay, a video
is not finalised, a sweep's tasks are not cancelled. ``sigterm_raises`` makes SIGTERM raise
``Terminated``, a ``KeyboardInterrupt``, so every cleanup written for Ctrl-C runs for a
polite kill too; ``interrupted_status`` is then 143 (128 + 15, as a shell reports a process
killed by SIGTERM) instead of Ctrl-C's 130.

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


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


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
    _raise_on_sigterm()
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def interrupted_status(e: KeyboardInterrupt) -> int:
    """The exit status of an interrupted command: 143 for SIGTERM, 130 for Ctrl-C."""
    return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)
