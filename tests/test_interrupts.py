"""Interrupting the real commands: no corrupt file under a final name, a clear exit status,
and a rerun that resumes to what an uninterrupted run gives (``benchmarks/interrupts.py``
has the scenarios and the checks; it tries more points).

Each case starts one ``qgf`` command (or the timeline-saving child) as a process, sends it a
signal at a seeded random moment, checks every file it left, then reruns the command in this
process and compares the result with an uninterrupted run made here too (train: weights,
target critic and optimizer state bit-equal on one CPU thread). Where a command has a point
that matters, the moment is drawn after it: train after its first checkpoint (so the rerun
really resumes), sweep after its first finished cell, record once the video is being
encoded, the timeline once a first save is done.

By default datagen, train and record get one signal each (all three signals are covered,
within about a minute and a half); eval, sweep and the timeline save (whose writes are the
same atomic ones, and whose interrupted sweep with Ctrl-C ``tests/test_sweep.py`` runs too)
are skipped. ``QGF_INTERRUPTS=N`` tries every signal at N points on every command.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

from benchmarks import interrupts as bench
from core.cli import main

pytestmark = pytest.mark.slow

POINTS = int(os.environ.get("QGF_INTERRUPTS", "0"))
DEFAULT_SIGNAL = {
    "datagen": "SIGTERM",
    "train": "SIGKILL",
    "eval": "SIGKILL",
    "record": "SIGINT",
    "sweep": "SIGTERM",
    "save-timeline": "SIGINT",
}
BY_DEFAULT = ("datagen", "train", "record")
CASES = [
    pytest.param(
        command,
        signame,
        point,
        marks=[]
        if POINTS or command in BY_DEFAULT
        else [pytest.mark.skip(reason="QGF_INTERRUPTS=N runs it")],
    )
    for command in bench.COMMANDS
    for signame in (bench.SIGNALS if POINTS else [DEFAULT_SIGNAL[command]])
    for point in range(max(POINTS, 1))
]


def _video_started(work: Path) -> bool:
    return any(work.glob(".r.mp4.*"))


# When to start the random delay, and its range (seconds). Without a point, the delay counts
# from the process's start: interpreter start and imports take most of these commands' time.
MOMENTS = {
    "datagen": (None, (1.0, 14.0)),
    "train": (lambda w: (w / "ck" / "config.json").is_file(), (0.0, 1.0)),
    "eval": (None, (1.0, 14.0)),
    "record": (_video_started, (0.0, 1.5)),
    "sweep": (lambda w: bool(bench._finished_cells(w / "sw")), (0.0, 0.5)),
    "save-timeline": (lambda w: (w / "run.timeline.safetensors").is_file(), (0.0, 1.0)),
}


def in_process(argv: list[str], work: Path) -> None:
    """Run a scenario's command line in this process (no interpreter start, no imports)."""
    if argv[1:3] == ["-m", "core.cli"]:
        assert main(argv[3:]) == 0, argv
        return
    assert argv[1] == "-c"
    saved = sys.argv
    sys.argv = ["-c", *argv[3:]]
    try:
        exec(compile(argv[2], "<child>", "exec"), {"__name__": "__main__"})
    finally:
        sys.argv = saved


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("interrupts")


@pytest.fixture(scope="module")
def shared(root) -> Path:
    """The dataset train reads, made by the datagen scenario's own command line."""
    path = root / "shared"
    path.mkdir()
    in_process(bench.scenarios(path, None)["datagen"].argv(path), path)
    return path


@pytest.fixture(scope="module")
def address() -> str:
    import ray

    from core.sweep import connect

    connect(cpus=2)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def references() -> dict:
    return {}


@pytest.mark.parametrize("command, signame, point", CASES)
def test_interrupted_command_leaves_whole_files_and_resumes_equal(
    command, signame, point, root, shared, references, request
):
    addr = request.getfixturevalue("address") if command == "sweep" else None
    scenario = bench.scenarios(shared, addr)[command]
    if command not in references:
        if command == "datagen":  # the shared dataset is that very run
            references[command] = scenario.result(shared)
        else:
            references[command] = bench.reference_of(scenario, root, run=in_process)[0]
    rng = random.Random(f"{command} {signame} {point}")
    after, (lo, hi) = MOMENTS[command]
    work = root / f"{command}-{signame}-{point}"
    work.mkdir()
    tally = bench.Tally(command, signame)
    bench.try_point(
        scenario,
        references[command],
        signame,
        rng.uniform(lo, hi),
        work,
        tally,
        rerun=in_process,
        after=after,
    )
    assert not tally.problems, "\n".join(tally.problems)
    assert tally.resumed_equal == 1 and tally.kept_cells
