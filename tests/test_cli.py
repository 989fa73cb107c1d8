"""The ``qgf`` command line: every error one line and exit status 2, tracebacks on --debug."""

import contextlib
import os
import signal
import sys
from pathlib import Path

import pytest

from core.cli import error_line, main


@pytest.mark.parametrize("command", ["eval", "diagnose", "record", "view"])
def test_a_wrong_checkpoint_path_is_one_line_and_exit_2(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    missing = tmp_path / "nope"
    assert main([command, str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith(f"qgf {command}: error:") and str(missing) in err


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    from core.checkpoints import CheckpointError

    with pytest.raises(CheckpointError):
        main(["eval", str(tmp_path / "nope"), "--debug"])


def test_train_without_data_says_how_to_get_it(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["train", "--out", str(tmp_path / "ck"), "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "qgf datagen" in err and "--data DIR" in err


def test_error_lines() -> None:
    assert error_line(ValueError("bad\n  value")) == "bad value"
    assert error_line(FileNotFoundError(2, "No such file", "/x")) == (
        "no such file or directory: /x"
    )
    assert error_line(TypeError("oops")) == "TypeError: oops"


def test_view_takes_an_agent_to_import_past_the_checkpoint_check(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = Path(__file__).parent / "fixtures" / "reference" / "qgf_single" / "params_5.pkl"
    monkeypatch.delenv("DISPLAY", raising=False)
    assert main(["view", str(agent)]) == 2  # no display: it stops there, not at the path
    err = capsys.readouterr().err
    assert "no display" in err and "no checkpoint" not in err


# ----------------------------------------------------------------------------- signals


@pytest.fixture
def default_signals():
    """SIGTERM and SIGINT at Python's defaults for the test: a Ray cluster started earlier in
    this process (tests/test_benchmarks.py, tests/test_sweep.py) leaves its own SIGTERM
    handler behind, which ``main`` rightly leaves alone as a host program's."""
    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, signal.SIG_DFL),
        signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
    }
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _command_module(monkeypatch, run):
    import importlib.machinery
    import types

    from core import cli

    module = types.ModuleType("fake_command")
    module.__spec__ = importlib.machinery.ModuleSpec("fake_command", None)
    module.HELP = "fake"
    module.add_arguments = lambda parser: None
    module.run = run
    monkeypatch.setitem(sys.modules, "fake_command", module)
    monkeypatch.setattr(cli, "CORE_COMMANDS", {**cli.CORE_COMMANDS, "fake": "fake_command"})


def _terminate_self(args) -> int:
    os.kill(os.getpid(), signal.SIGTERM)
    raise AssertionError("SIGTERM did not interrupt the command")


def test_sigterm_interrupts_a_command_with_status_143(monkeypatch, capsys, default_signals):
    _command_module(monkeypatch, _terminate_self)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["fake"]) == 143
    assert capsys.readouterr().err.strip() == "qgf fake: terminated"
    assert signal.getsignal(signal.SIGTERM) is before  # the host's handling is put back


def test_an_ignored_sigterm_stays_ignored(monkeypatch):
    seen = []
    _command_module(monkeypatch, lambda args: seen.append(signal.getsignal(signal.SIGTERM)))
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        assert main(["fake"]) == 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == [signal.SIG_IGN]


def _terminated_then_replaced(args) -> int:
    """As Ray's wait does: the handler's exception comes back as a plain KeyboardInterrupt."""
    from core.interrupts import Terminated

    try:
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not interrupt the command")
    except Terminated:
        raise KeyboardInterrupt from None


def test_sigterm_is_143_even_when_a_library_replaces_the_exception(
    monkeypatch, capsys, default_signals
):
    _command_module(monkeypatch, _terminated_then_replaced)
    assert main(["fake"]) == 143
    assert capsys.readouterr().err.strip() == "qgf fake: terminated"


def _interrupted_import(args) -> int:
    """Ctrl-C inside a C extension's initialisation surfaces as an ImportError it caused."""
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt as e:
        raise ImportError("initialization failed") from e


def test_ctrl_c_during_an_import_is_an_interruption_not_an_error(
    monkeypatch, capsys, default_signals
):
    _command_module(monkeypatch, _interrupted_import)
    assert main(["fake"]) == 130
    assert capsys.readouterr().err.strip() == "qgf fake: interrupted"


def _swallowed_then_broken(args) -> int:
    """A library that catches the interruption and then fails on what it left half made."""
    with contextlib.suppress(BaseException):
        os.kill(os.getpid(), signal.SIGINT)
    raise AttributeError("module 'numpy' has no attribute 'multiply'")


def test_an_error_after_a_swallowed_ctrl_c_is_the_interruption(
    monkeypatch, capsys, default_signals
):
    _command_module(monkeypatch, _swallowed_then_broken)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    try:
        assert main(["fake"]) == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    assert capsys.readouterr().err.strip() == "qgf fake: interrupted"


@pytest.mark.parametrize("text", ["-5", "0", "nan", "inf", "x"])
def test_positive_float_refuses_what_is_not_a_finite_positive_number(text):
    import argparse

    from core.commands.args import positive_float

    assert positive_float("2.5") == 2.5
    with pytest.raises(argparse.ArgumentTypeError):
        positive_float(text)
