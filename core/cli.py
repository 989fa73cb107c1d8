"""The ``qgf`` command line.

Each subcommand lives in its own module exposing ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int | None``. Headless commands are listed here; packages that depend on
core (the viewer, the benchmarks) add theirs through the ``qgf.commands`` entry-point group,
so core never imports them. A command's module is imported only when that command runs.

Errors: an exception that ends a command is printed as one line, ``qgf COMMAND: error: ...``,
and the exit status is 2 (as for a bad option); ``--debug``, accepted by every command,
shows the whole traceback instead.

Signals: Ctrl-C (SIGINT) exits with 130 and SIGTERM with 143 (128 + the signal's number, as
a shell reports them). SIGTERM is raised as ``core.interrupts.Terminated``, a
``KeyboardInterrupt``, so a polite kill runs every cleanup that Ctrl-C runs: temporary files
removed, a partial video kept, a sweep's outstanding tasks cancelled, a checkpoint left
whole. A signal that the process inherited as ignored stays ignored.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from importlib.metadata import entry_points
from types import ModuleType

from core.interrupts import (
    interrupted_status,
    interruption,
    signal_came,
    sigterm_raises,
    terminated,
)

CORE_COMMANDS = {
    "datagen": "core.commands.datagen",
    "train": "core.commands.train",
    "eval": "core.commands.evaluate",
    "record": "core.commands.record",
    "diagnose": "core.commands.diagnose",
    "import": "core.commands.import_agent",
    "sweep": "core.commands.sweep",
}
# One-line help for `qgf --help`, so listing commands imports nothing heavy.
SUMMARIES = {
    "view": "open the viewer on a checkpoint (default: the shipped default)",
    "datagen": "generate an OGBench dataset with OGBench's scripted oracles",
    "train": "train a flow BC policy and an IQL critic into a checkpoint",
    "eval": "success rate per guidance weight and estimator, with 95% CIs",
    "record": "record rollout videos, one tiled panel per (weight, estimator)",
    "diagnose": "estimator analyses on a checkpoint: noise sensitivity, Q, distance to data",
    "sweep": "guidance sweeps as Ray tasks (local or a cluster), resumable, one report",
    "bench": "benchmarks: guidance, viewer, record, landscape, sweep, fuzz_files (prints a table)",
    "import": "import a QGF-release or FQL JAX agent (params_<step>.pkl) as a checkpoint",
}


class DefaultsShown(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already speaks of it or
    there is none to show (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default in (None, False, argparse.SUPPRESS)
            or action.option_strings in ([], ["-h", "--help"])
        ):
            return text
        if isinstance(default, (list, tuple)):
            default = ",".join(str(x) for x in default)
        return f"{text} (default {str(default).replace('%', '%%')})".strip()


def _commands() -> dict[str, str]:
    found = {ep.name: ep.value for ep in entry_points(group="qgf.commands")}
    found.update(CORE_COMMANDS)
    return {
        name: module
        for name, module in found.items()
        if importlib.util.find_spec(module.split(":")[0]) is not None
    }


def _top_parser(commands: dict[str, str]) -> argparse.ArgumentParser:
    lines = [f"  {name:<10} {SUMMARIES.get(name, '')}" for name in sorted(commands)]
    return argparse.ArgumentParser(
        prog="qgf",
        description="Test-time gradient guidance of flow policies: viewer and tools.",
        epilog="commands:\n"
        + "\n".join(lines)
        + "\n\n`qgf COMMAND --help` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="qgf [-h] COMMAND [options]",
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # From the start: a signal while the command's modules are imported is an interruption
    # too, not a traceback.
    try:
        with sigterm_raises():
            return _run(argv)
    except BaseException as e:
        stop = interruption(e)
        if stop is None:
            raise
        name = f"qgf {argv[0]}" if argv and not argv[0].startswith("-") else "qgf"
        print(f"{name}: {'terminated' if terminated(stop) else 'interrupted'}", file=sys.stderr)
        return interrupted_status(stop)


def _run(argv: list[str]) -> int:
    commands = _commands()
    top = _top_parser(commands)
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in commands:
        top.error(f"unknown command {name!r}; choose from: {', '.join(sorted(commands))}")
    module: ModuleType = importlib.import_module(commands[name].split(":")[0])
    parser = argparse.ArgumentParser(
        prog=f"qgf {name}", description=module.HELP, formatter_class=DefaultsShown
    )
    module.add_arguments(parser)
    parser.add_argument(
        "--debug", action="store_true", help="on an error, show the whole traceback"
    )
    try:
        args = parser.parse_args(rest)
    except SystemExit as e:  # a bad option (argparse printed it) or --help
        return int(e.code or 0)
    try:
        return int(module.run(args) or 0)
    except Exception as e:
        if interruption(e) is not None:
            raise
        if signal_came():  # a library swallowed the interruption, then failed
            raise KeyboardInterrupt from e
        if args.debug:
            raise
        print(f"qgf {name}: error: {error_line(e)} (--debug: traceback)", file=sys.stderr)
        return 2


def error_line(e: BaseException) -> str:
    """An exception as one line: its message (whitespace collapsed), named by its type
    unless it is a plain mistake (a bad value, a missing file, an unknown name, or one of
    the project's own errors such as ``CheckpointError``)."""
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, FileNotFoundError) and e.filename is not None:
        text = f"no such file or directory: {e.filename}"
    own = type(e).__module__.split(".")[0] in ("core", "viewer", "benchmarks")
    plain = own or isinstance(e, (ValueError, OSError, LookupError))
    return text if plain else f"{type(e).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())
