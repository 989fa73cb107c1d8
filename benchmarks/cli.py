"""``qgf bench [NAME] [options]``: run one benchmark, or every one that exists.

A benchmark is a module ``benchmarks.<name>`` exposing ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int | None``, like a ``qgf`` command; a
``--quick`` option, when it has one, is what ``qgf bench --quick`` passes to it. Modules are
imported only when they run, so ``qgf bench guidance`` never loads the viewer.

``qgf bench`` with no name runs every benchmark in a process of its own: a Dear PyGui window
and MuJoCo's EGL in one process break later EGL contexts (``bench record`` after
``bench viewer`` failed with EGL_BAD_ACCESS). The soak (hours) runs only when named.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import subprocess
import sys

HELP = (
    "benchmarks: guidance, viewer, record, landscape, sweep, fuzz_files; named only: soak, "
    "monkey, interrupts (prints a table)"
)

# The order `qgf bench` runs them in; a name whose module is absent is skipped.
BENCHMARKS = ("guidance", "viewer", "record", "landscape", "sweep", "fuzz_files")
# Run only when named: too long for a run of every benchmark.
NAMED_ONLY = ("soak", "monkey", "interrupts")


def available(named: bool = True) -> list[str]:
    """The benchmarks whose module exists (``named``: with those run only when named)."""
    names = BENCHMARKS + (NAMED_ONLY if named else ())
    return [name for name in names if importlib.util.find_spec(f"benchmarks.{name}")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    names = available()
    parser.add_argument(
        "name",
        nargs="?",
        choices=names,
        help=f"benchmark to run (default: all of {', '.join(available(named=False))})",
    )
    parser.add_argument(
        "--quick", action="store_true", help="with no NAME: each benchmark's quick mode"
    )
    parser.add_argument(
        "options",
        nargs=argparse.REMAINDER,
        help="options of that benchmark (`qgf bench NAME --help` lists them)",
    )


def _parser(name: str) -> tuple[argparse.ArgumentParser, object]:
    module = importlib.import_module(f"benchmarks.{name}")
    parser = argparse.ArgumentParser(prog=f"qgf bench {name}", description=module.HELP)
    module.add_arguments(parser)
    return parser, module


def run_apart(name: str, options: list[str]) -> int:
    """Run one benchmark in a new process (``qgf bench NAME OPTIONS``); its exit status."""
    cmd = [sys.executable, "-m", "core.cli", "bench", name, *options]
    return subprocess.run(cmd).returncode


def run(args: argparse.Namespace) -> int:
    if args.name:
        parser, module = _parser(args.name)
        options = args.options + (["--quick"] if args.quick else [])
        return int(module.run(parser.parse_args(options)) or 0)
    failed = []
    for name in available(named=False):
        parser, _ = _parser(name)
        options = ["--quick"] if args.quick else []
        _, unknown = parser.parse_known_args(options)
        if unknown:  # this benchmark has no quick mode
            options = []
        print(f"== qgf bench {name}", flush=True)
        if run_apart(name, options):
            failed.append(name)
        print(flush=True)
    if failed:
        print(f"qgf bench: failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
