"""Interrupting every writing command: SIGINT, SIGTERM and SIGKILL at seeded random moments.

Run: ``python -m benchmarks.interrupts [--points N] [--seed S] [--commands a,b]``.

Each command runs as a real ``qgf`` process on tiny settings: ``datagen`` (2 + 1 episodes of
40 steps), ``train`` (120 steps of a 16 x 16 network, a checkpoint every 30), ``eval`` and
``record`` (the shipped checkpoint, a few steps), ``sweep`` (6 cells on a Ray cluster this
script starts once and the sweeps join by address) and a timeline save (``save-timeline``: a
child process that plays a viewer session and saves its timeline again and again). One run
of each, never signalled, is the reference. Then, at each of ``--points`` delays per signal,
drawn uniformly (seeded) over the reference's duration, the command is started again in a
fresh directory, sent the signal, and checked:

- exit status: 130 for SIGINT and 143 for SIGTERM (``qgf`` raises SIGTERM as
  ``core.interrupts.Terminated``, a ``KeyboardInterrupt``), -9 for SIGKILL; 0 when the command
  had finished before the signal came (counted apart, as "finished first");
- corrupt files: every file under a final name (not hidden) must load whole: arrays, JSON,
  CSV, PNG, videos, checkpoint directories (hashes verified), timelines; a hidden temporary
  file left behind by SIGINT or SIGTERM counts as corrupt too (their cleanups must remove
  them; after SIGKILL they may stay, and the rerun must ignore them);
- resumed equal: the same command run again to the end gives what the reference gave:
  ``train`` weights, target critic and optimizer state bit-equal (one CPU thread);
  ``datagen`` arrays equal; ``record`` the same video bytes; ``eval`` the same numbers;
  ``sweep`` every row equal, and every cell finished before the signal kept untouched.

The tests (``tests/test_interrupts.py``) run the same scenarios at fewer points. Child
processes get SIGINT and SIGTERM at their default disposition: a shell without job control
starts its children with SIGINT ignored, and the signal would then never arrive.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HELP = "SIGINT/SIGTERM/SIGKILL at random points of each writing command; corrupt files, resumes"

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "checkpoints" / "cube-single-task2"
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}
# qgf's own status, or death by the signal itself when it came before qgf's handling began
# (while the interpreter starts): a shell reports both as 128 + the signal's number.
EXPECTED_STATUS = {"SIGINT": (130, -2), "SIGTERM": (143, -15), "SIGKILL": (-9,)}
COMMANDS = ("datagen", "train", "eval", "record", "sweep", "save-timeline")
TIMEOUT_S = 300.0
# Fields of a result that say when, where and how fast it ran, not what it found.
_TIMING_KEYS = {"wall_s", "cpu_s", "finished", "pid", "node", "ms_per_action", "wall_time_s"}

# The timeline-saving child: a viewer session on a tiny checkpoint, played a few steps, then
# saved over and over onto one path (so that signals land inside a save).
_TIMELINE_CHILD = r"""
import sys
from pathlib import Path

from core.interrupts import interrupted_status, interruption, sigterm_raises


def main(work: Path, saves: int) -> None:
    # Imported here, where a signal is an interruption (as in qgf's commands).
    import numpy as np
    import torch

    from core.checkpoints import CheckpointConfig, DatasetSample, save_checkpoint
    from viewer.session import Session, Settings
    from viewer.timeline_file import save_timeline

    torch.manual_seed(0)
    config = CheckpointConfig(
        env="cube-single-play-singletask-task2-v0", dataset="cube-single-play-v0", task=2,
        obs_dim=28, action_dim=5, horizon=1, hidden=[16, 16], layer_norm=True, time_dim=16,
        q_ensemble=2, flow_steps=3, training_steps=1, data_fingerprint={},
    )
    ck = work / "tiny-ck"
    if not ck.exists():
        rng = np.random.default_rng(0)
        sample = DatasetSample(
            rng.random((20, 28), dtype=np.float32), rng.random((20, 5), dtype=np.float32)
        )
        critic = config.build_critic()
        save_checkpoint(ck, config, config.build_policy(), critic, critic, sample)
    settings = Settings(env_name=config.env, weight=0.05, steps=3, candidates=3, seed=1)
    session = Session(ck, settings=settings)
    session.reset()
    for _ in range(8):
        session.step()
    for _ in range(saves):
        save_timeline(session, work / "run.timeline.safetensors")
    session.close()


try:
    with sigterm_raises():
        main(Path(sys.argv[1]), int(sys.argv[2]))
except BaseException as e:
    stop = interruption(e)
    if stop is None:
        raise
    sys.exit(interrupted_status(stop))
"""


# ----------------------------------------------------------------------------- scenarios


@dataclass
class Scenario:
    """One command: how to run it in a work directory, and what its result is."""

    name: str
    argv: Callable[[Path], list[str]]
    result: Callable[[Path], object]  # what the reference and a resumed run must agree on


def _qgf(*args: str) -> list[str]:
    return [sys.executable, "-m", "core.cli", *args]


def _data_file(shared: Path) -> Path:
    return shared / "data" / "cube-single-play-v0.npz"


def scenarios(shared: Path, address: str | None) -> dict[str, Scenario]:
    """The commands, on tiny settings; ``shared`` holds the dataset train reads."""
    train_args = [
        "--data", str(_data_file(shared)), "--threads", "1", "--no-progress", "--steps", "120",
        "--hidden", "16,16", "--batch-size", "32", "--log-every", "20", "--save-every", "30",
        "--eval-every", "0", "--sample-size", "50",
    ]  # fmt: skip
    sweep_args = [
        "--checkpoints", str(CHECKPOINT), "--weights", "0,0.1", "--seeds", "0,2,4",
        "--episodes", "2", "--envs", "2", "--max-episode-steps", "10", "--no-progress",
    ]  # fmt: skip
    if address:
        sweep_args += ["--address", address]
    return {
        "datagen": Scenario(
            "datagen",
            lambda w: _qgf(
                "datagen",
                "--env",
                "cube-single-play-v0",
                "--episodes",
                "2",
                "--val-episodes",
                "1",
                "--max-episode-steps",
                "40",
                "--out",
                str(w / "data"),
                "--no-progress",
            ),  # fmt: skip
            lambda w: _npz_arrays(w / "data"),
        ),
        "train": Scenario(
            "train",
            lambda w: _qgf(
                "train", *train_args, "--out", str(w / "ck"), "--log-dir", str(w / "logs")
            ),
            lambda w: _checkpoint_tensors(w / "ck"),
        ),
        "eval": Scenario(
            "eval",
            lambda w: _qgf(
                "eval",
                str(CHECKPOINT),
                "--weights",
                "0,0.1",
                "--episodes",
                "2",
                "--envs",
                "2",
                "--max-episode-steps",
                "5",
                "--threads",
                "1",
                "--out",
                str(w / "ev"),
                "--no-progress",
            ),  # fmt: skip
            lambda w: _without_timing(json.loads((w / "ev" / "eval.json").read_text())),
        ),
        "record": Scenario(
            "record",
            lambda w: _qgf(
                "record",
                str(CHECKPOINT),
                "--weights",
                "0,0.1",
                "--episodes",
                "1",
                "--max-steps",
                "6",
                "--size",
                "64x48",
                "--candidates",
                "2",
                "--hold",
                "0",
                "--out",
                str(w / "r.mp4"),
                "--quiet",
            ),  # fmt: skip
            lambda w: (w / "r.mp4").read_bytes(),
        ),
        "sweep": Scenario(
            "sweep",
            lambda w: _qgf("sweep", *sweep_args, "--out", str(w / "sw")),
            lambda w: _sweep_rows(w / "sw"),
        ),
        "save-timeline": Scenario(
            "save-timeline",
            lambda w: [sys.executable, "-c", _TIMELINE_CHILD, str(w), "12"],
            lambda w: _timeline_summary(w / "run.timeline.safetensors"),
        ),
    }


def _npz_arrays(directory: Path) -> dict:
    import numpy as np

    out = {}
    for file in sorted(directory.glob("*.npz")):
        with np.load(file, allow_pickle=False) as data:
            out[file.name] = {k: data[k].tobytes() for k in data.files}
    return out


def _checkpoint_tensors(path: Path) -> dict:
    from safetensors.numpy import load_file

    from core.checkpoints import read_config

    config = read_config(path)
    tensors = {}
    for name in ("weights.safetensors", "optimizer.safetensors"):
        tensors.update({f"{name}:{k}": v.tobytes() for k, v in load_file(path / name).items()})
    return {"steps": config.training_steps, "tensors": tensors}


def _without_timing(value):
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if k not in _TIMING_KEYS}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def _sweep_rows(out: Path) -> list:
    from core.sweep import read_rows

    return [_without_timing(r) for r in read_rows(out)]


def _timeline_summary(path: Path) -> dict:
    from viewer.timeline_file import read_timeline

    timeline = read_timeline(path, device="cpu")
    return {"steps": [len(b.history) for b in timeline.branches]}


# ----------------------------------------------------------------------------- checking


def hidden_files(work: Path) -> list[Path]:
    """Temporary files (hidden names: ``.NAME.*.tmp*``, ``.NAME.tmp-*``, probes) under ``work``."""
    return sorted(p for p in work.rglob(".*") if "__pycache__" not in p.parts)


def final_files(work: Path) -> list[Path]:
    """Files under final names: none of their path parts hidden."""
    return sorted(
        p
        for p in work.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(work).parts)
    )


def check_file(path: Path) -> None:
    """Load ``path`` whole by its kind; raises when it is corrupt."""
    if path.name.endswith(".timeline.safetensors"):
        from viewer.timeline_file import read_timeline

        read_timeline(path, device="cpu")
    elif path.parent.joinpath("config.json").is_file() and path.suffix == ".safetensors":
        from core.checkpoints import load_state

        load_state(path.parent)  # every hashed file checked against config.json
    elif path.suffix == ".npz":
        import numpy as np

        with np.load(path, allow_pickle=False) as data:
            for key in data.files:
                data[key]
    elif path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".jsonl":
        for line in path.read_text().splitlines():
            json.loads(line)
    elif path.suffix == ".csv":
        rows = list(csv.reader(path.read_text().splitlines()))
        if rows and any(len(r) != len(rows[0]) for r in rows):
            raise ValueError(f"{path}: rows of different lengths")
    elif path.suffix == ".png":
        from PIL import Image

        with Image.open(path) as image:
            image.load()
    elif path.suffix in (".mp4", ".gif"):
        import imageio.v3 as iio

        if len(iio.imread(path)) == 0:
            raise ValueError(f"{path}: no frames")
    elif path.suffix in (".md", ".txt", ".log"):
        path.read_text()


def corrupt_files(work: Path, signame: str) -> list[str]:
    """What is wrong under ``work``: final files that do not load, and temporary files left
    by a signal whose cleanups should have removed them."""
    bad = []
    for path in final_files(work):
        try:
            check_file(path)
        except Exception as e:
            bad.append(f"{path.relative_to(work)}: {type(e).__name__}: {e}")
    if signame != "SIGKILL":
        bad += [f"{p.relative_to(work)}: temporary file left" for p in hidden_files(work)]
    return bad


# ----------------------------------------------------------------------------- running


def _preexec() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
        "OMP_NUM_THREADS": "1",
    }


def run_to_end(argv: list[str], work: Path) -> float:
    """Run ``argv`` in ``work`` to the end; its wall time. Raises when it fails."""
    start = time.monotonic()
    done = subprocess.run(
        argv, cwd=work, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S,
        preexec_fn=_preexec,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{argv[2:4]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.monotonic() - start


def run_signalled(
    argv: list[str],
    work: Path,
    signame: str,
    delay: float,
    after: Callable[[Path], bool] | None = None,
) -> tuple[int, str]:
    """Start ``argv`` in ``work``, send ``signame`` ``delay`` seconds after its start, or
    after ``after(work)`` first holds when given (unless it ended first); its exit status
    and output."""
    log = work / ".output.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            argv, cwd=work, env=_env(), stdout=f, stderr=subprocess.STDOUT, preexec_fn=_preexec
        )
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while after is not None and not after(work) and proc.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{argv[2:4]}: the awaited point never came")
            time.sleep(0.02)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(SIGNALS[signame])
        status = proc.wait(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    log.unlink()
    return status, text


@dataclass
class Tally:
    """One (command, signal) row of the table."""

    command: str
    signal: str
    points: int = 0
    finished_first: int = 0
    corrupt: int = 0
    wrong_status: int = 0
    resumed_equal: int = 0
    kept_cells: bool = True
    problems: list[str] = field(default_factory=list)


Runner = Callable[[list[str], Path], object]
"""Runs a command line to the end in a directory (a child process, or in-process in tests)."""


def try_point(
    scenario: Scenario,
    reference: object,
    signame: str,
    delay: float,
    work: Path,
    tally: Tally,
    rerun: Runner = run_to_end,
    after: Callable[[Path], bool] | None = None,
) -> None:
    """One signalled run (``delay`` after the start, or after ``after``: see
    ``run_signalled``) and its rerun (by ``rerun``), counted into ``tally``."""
    argv = scenario.argv(work)
    status, output = run_signalled(argv, work, signame, delay, after)
    tally.points += 1
    where = f"{scenario.name} {signame} at {delay:.2f} s"
    if status == 0:
        tally.finished_first += 1
    elif status not in EXPECTED_STATUS[signame]:
        tally.wrong_status += 1
        tally.problems.append(f"{where}: exit status {status}\n{output[-2000:]}")
    bad = corrupt_files(work, signame)
    if bad:
        tally.corrupt += len(bad)
        tally.problems.append(f"{where}: " + "; ".join(bad))
    kept = _finished_cells(work / "sw") if scenario.name == "sweep" else {}
    rerun(argv, work)
    if scenario.result(work) == reference:
        tally.resumed_equal += 1
    else:
        tally.problems.append(f"{where}: the resumed run differs from the reference")
    if any(p.stat().st_mtime_ns != t for p, t in kept.items()):
        tally.kept_cells = False
        tally.problems.append(f"{where}: a cell finished before the signal was rewritten")


def _finished_cells(out: Path) -> dict[Path, int]:
    from core.sweep import CELLS_DIR

    cells = [p for p in out.glob(f"{CELLS_DIR}/*/*/*.jsonl") if not p.name.startswith(".")]
    return {p: p.stat().st_mtime_ns for p in cells}


def prepare_shared(shared: Path) -> None:
    """The dataset that ``train`` reads (a ``datagen`` run)."""
    if not _data_file(shared).exists():
        argv = scenarios(shared, None)["datagen"].argv(shared)
        run_to_end(argv, shared)


def reference_of(scenario: Scenario, root: Path, run: Runner = run_to_end) -> tuple[object, float]:
    """The command's result and wall time, run once to the end (by ``run``) without a
    signal."""
    work = root / f"ref-{scenario.name}"
    work.mkdir()
    start = time.monotonic()
    run(scenario.argv(work), work)
    return scenario.result(work), time.monotonic() - start


def run_points(
    commands: list[str],
    signames: list[str],
    points: int,
    seed: int,
    root: Path,
    address: str | None,
    log: Callable[[str], None] = print,
) -> list[Tally]:
    """Every (command, signal) at ``points`` seeded delays; one tally each."""
    shared = root / "shared"
    shared.mkdir(exist_ok=True)
    prepare_shared(shared)
    all_scenarios = scenarios(shared, address)
    rng = random.Random(seed)
    tallies = []
    for name in commands:
        scenario = all_scenarios[name]
        reference, seconds = reference_of(scenario, root)
        log(f"{name}: reference run {seconds:.1f} s")
        for signame in signames:
            tally = Tally(name, signame)
            for i in range(points):
                delay = rng.uniform(0.3, seconds)
                work = root / f"{name}-{signame}-{i}"
                work.mkdir()
                try_point(scenario, reference, signame, delay, work, tally)
                shutil.rmtree(work, ignore_errors=True)
            tallies.append(tally)
            for problem in tally.problems:
                log(f"  problem: {problem}")
    return tallies


def table(tallies: list[Tally]) -> str:
    head = (
        f"{'command':<14}{'signal':<9}{'points':>7}{'finished':>10}{'status ok':>11}"
        f"{'corrupt':>9}{'resumed equal':>15}"
    )
    lines = [head, "-" * len(head)]
    for t in tallies:
        ok = t.points - t.wrong_status
        equal = f"{t.resumed_equal}/{t.points}" + ("" if t.kept_cells else " (cells lost)")
        lines.append(
            f"{t.command:<14}{t.signal:<9}{t.points:>7}{t.finished_first:>10}"
            f"{f'{ok}/{t.points}':>11}{t.corrupt:>9}{equal:>15}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--points", type=int, default=4, help="delays per command and signal")
    parser.add_argument("--seed", type=int, default=0, help="seed of the delays")
    parser.add_argument(
        "--commands", default=",".join(COMMANDS), help="comma-separated, of " + ", ".join(COMMANDS)
    )
    parser.add_argument("--signals", default=",".join(SIGNALS), help="comma-separated")


def run(args: argparse.Namespace) -> int:
    commands = [c for c in args.commands.split(",") if c]
    signames = [s for s in args.signals.split(",") if s]
    choices = (("--commands", commands, COMMANDS), ("--signals", signames, SIGNALS))
    for option, given, known in choices:
        unknown = sorted(set(given) - set(known))
        if unknown:
            print(
                f"qgf bench interrupts: error: {option}: unknown {', '.join(unknown)} "
                f"(choose from {', '.join(known)})",
                file=sys.stderr,
            )
            return 2
    ray = None
    address = None
    if "sweep" in commands:
        import ray

        from core.sweep import connect

        connect(cpus=2)
        address = ray.get_runtime_context().gcs_address
    try:
        with tempfile.TemporaryDirectory(prefix="qgf-interrupts-") as root:
            start = time.monotonic()
            tallies = run_points(
                commands, signames, args.points, args.seed, Path(root), address, log=print
            )
            print()
            print(table(tallies))
            print(f"({time.monotonic() - start:.0f} s, seed {args.seed})")
    finally:
        if ray is not None:
            ray.shutdown()
    bad = any(t.corrupt or t.wrong_status or t.resumed_equal < t.points for t in tallies)
    return 1 if bad else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=HELP)
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
