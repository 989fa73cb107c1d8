"""Options and value parsers that several ``qgf`` commands share, so that each means the
same everywhere: ``--device``, ``--threads``, ``--seed`` and comma-separated lists.

A bad value is an argparse error naming the option and what was expected, e.g.
``qgf eval: error: argument --weights: expected numbers separated by commas (e.g. 0,0.1),
got 'a'``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_device(parser: argparse.ArgumentParser, default: str = "cpu") -> None:
    parser.add_argument(
        "--device",
        default=default,
        help="torch device: cpu, cuda, cuda:N, or auto (cuda when there is one) "
        "(default %(default)s)",
    )


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` where torch sees a GPU, else ``cpu``; a CUDA device that is not
    there is a ``ValueError`` (one clear line at the command line)."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available here")
    return name


def add_threads(parser: argparse.ArgumentParser, default: int | None, why: str = "") -> None:
    shown = "torch's own, one per core" if default is None else str(default)
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=default,
        help=f"torch CPU threads (default {shown}{': ' + why if why else ''})",
    )


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads`` unless ``threads`` is None (torch's default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def add_seed(parser: argparse.ArgumentParser, meaning: str) -> None:
    parser.add_argument("--seed", type=int, default=0, help=f"{meaning} (default %(default)s)")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _items(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def list_of(kind: Callable[[str], Any], what: str, example: str) -> Callable[[str], list]:
    """A parser of comma-separated values of ``kind`` (empty items are skipped)."""

    def parse(text: str) -> list:
        try:
            return [kind(x) for x in _items(text)]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {what} separated by commas (e.g. {example}), got {text!r}"
            ) from None

    parse.__name__ = f"list of {what}"
    return parse


floats = list_of(float, "numbers", "0,0.1")
ints = list_of(int, "whole numbers", "256,256")
names = list_of(str, "names", "qgf,ood")
