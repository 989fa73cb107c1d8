"""benchmarks/fuzz_files.py: every file qgf reads (checkpoints, timelines, OGBench datasets,
imported pickles), mutated by seed, either loads to the same numbers or is refused with its
named error, in a worker guarded against hangs and memory blow-ups; the cases that found
loader bugs, replayed; and the command line's face for a few bad files (``qgf view --open``
on a bad timeline is tested in tests/test_timeline_file.py).

``QGF_FUZZ_CASES`` sets the cases per file type (default 100; ``qgf bench fuzz_files`` runs
1,000 per type and prints the table).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.fuzz_files import (
    FILE_TYPES,
    TYPES,
    Outcome,
    fuzz,
    load_seeds,
    make_seeds,
    mutate_bytes,
    run_case,
    table,
)

pytestmark = pytest.mark.slow

CASES = int(os.environ.get("QGF_FUZZ_CASES", "100"))
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-seeds")
    make_seeds(root, TYPES)
    return root


def _report(failures: list[Outcome]) -> str:
    return "\n".join(f"{o.replay()}: {o.what}\n    {o.error}" for o in failures)


@pytest.mark.parametrize("kind", TYPES)
def test_every_mutated_file_loads_the_same_or_is_refused_by_name(seeds, kind):
    summary = fuzz(kind, range(CASES), seeds)
    print("\n" + table([summary]))
    assert not summary.failures, _report(summary.failures)
    # The mutations reach both ends: harmless ones and refused ones.
    assert summary.count("same") > 0 and summary.count("refused") > CASES // 2


def test_a_seed_is_the_same_mutation_every_time():
    import random

    data = bytes(range(256)) * 4
    for seed in range(50):
        assert mutate_bytes(data, random.Random(seed)) == mutate_bytes(data, random.Random(seed))


def test_a_loader_that_hangs_or_raises_a_bare_error_is_a_failure(seeds, monkeypatch):
    kind = FILE_TYPES["pickle"]()
    kind.setup(seeds / "pickle")
    baseline: dict = {}

    def bare(case, seed_name):
        raise KeyError("agent")

    monkeypatch.setattr(kind, "load", bare)
    outcome = run_case(kind, 0, seeds, baseline)
    assert outcome.result == "failure" and outcome.error.startswith("KeyError: 'agent'")
    assert outcome.replay() == "qgf bench fuzz_files --type pickle --seed 0"
    # A worker that never answers is replaced, and the case named as a hang.
    summary = fuzz("checkpoint", [0], seeds, guard=0.0)
    assert summary.failures and "hang" in summary.failures[0].error


# The cases that found loader bugs, replayed in this process: (type, seed, the mutation, the
# named error it now raises, words of its message).
FOUND = [
    # config.json's "files" not a table of strings: a TypeError when the hashes were compared.
    ("checkpoint", 137, "files/weights.safetensors = 1000000000000000000000000000000",
     "CheckpointError", "the sha256 of weights.safetensors is not a string"),
    ("checkpoint", 222, "files = None", "CheckpointError", "files must be an object"),
    # A width past int64: torch's TypeError building the architecture on the meta device.
    ("checkpoint", 309, "hidden/1 = 9223372036854775808", "CheckpointError", "cannot be built"),
    # JSON nested 100,000 deep: json's RecursionError, in config.json and in a timeline.
    ("checkpoint", 981, "created = '\\u2063DEEP", "CheckpointError", "nests too deeply"),
    ("timeline", 184, "session/viewing = '\\u2063DEEP", "TimelineError", "nests too deeply"),
    # A timeline whose architecture declares a 2**40-wide input: torch tried to allocate
    # 70 TB for the network before its weights were compared with the architecture.
    ("timeline", 36, "architecture/obs_dim = 1099511627776", "TimelineError", "do not fit"),
    # Damaged array data behind intact .npy headers: zipfile's CRC error and zlib's error
    # from OGBench's loader; a header numpy's parser cannot tokenize; a dtype whose size
    # does not fit the bytes (numpy's ValueError reading the data).
    ("dataset", 2, "flip bits [109510, 22162]", "DatasetError", "Bad CRC-32"),
    ("dataset", 82, "overwrite 19 bytes at 8275", "DatasetError", "decompressing"),
    ("dataset", 64, "observations.npy header text", "DatasetError", "TokenError"),
    ("dataset", 27, "terminals.npy header dtype", "DatasetError", "declares shape (60,) of int64"),
    # An agent of an unknown layout: the error did not name the file.
    ("pickle", 6, "fql: flip bits [", "AgentImportError", "params_5.pkl: unknown agent layout"),
    ("pickle", 327, "duplicate 84 bytes", "AgentImportError", "params_5.pkl: the agent has no"),
    # A run's flags.json naming the env with a list, or the activation with an object:
    # TypeErrors from the name's regular expression and a dict lookup; a bad env name from
    # flags.json did not name the file.
    ("pickle", 209, "flags.json: env_name = [1, 2]", "AgentImportError", "is a list, not a"),
    ("pickle", 734, "flags.json: agent/activation = {}", "AgentImportError", "activation {}"),
    ("pickle", 444, "flags.json: env_name = ", "AgentImportError", "flags.json env_name: not"),
]  # fmt: skip


@pytest.fixture(scope="module")
def loaded(seeds, tmp_path_factory):
    """Each file type set up in this process, with its unmutated loads."""
    out = {}
    for kind in TYPES:
        ftype = FILE_TYPES[kind]()
        ftype.setup(seeds / kind)
        baseline = load_seeds(ftype, tmp_path_factory.mktemp(f"baseline-{kind}"))
        out[kind] = (ftype, baseline)
    return out


@pytest.mark.parametrize(("kind", "seed", "what", "error", "message"), FOUND)
def test_the_cases_that_found_bugs_are_refused_by_name(
    loaded, tmp_path, kind, seed, what, error, message
):
    ftype, baseline = loaded[kind]
    outcome = run_case(ftype, seed, tmp_path, baseline)
    assert what in outcome.what
    assert outcome.result == "refused", outcome.error
    assert outcome.error.startswith(f"{error}: ") and message in outcome.error


# ------------------------------------------------------------------------ the command line


def qgf(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), MUJOCO_GL="egl")
    env.pop("DISPLAY", None)
    return subprocess.run(
        [sys.executable, "-m", "core.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def assert_one_line(result: subprocess.CompletedProcess, command: str, *words: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"qgf {command}: error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for word in words:
        assert word in lines[0]


def test_bad_files_end_commands_with_one_line_naming_the_problem(seeds, tmp_path):
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(seeds / "checkpoint" / "ck", ck)
    config = json.loads((ck / "config.json").read_text())
    config["files"]["weights.safetensors"] = 10**30
    (ck / "config.json").write_text(json.dumps(config))
    view = qgf("view", str(ck), "--frames", "1", cwd=tmp_path)
    assert_one_line(view, "view", "config.json", "sha256 of weights.safetensors")

    ck2 = tmp_path / "ck2"
    shutil.copytree(seeds / "checkpoint" / "ck", ck2)
    weights = ck2 / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert_one_line(qgf("eval", str(ck2), cwd=tmp_path), "eval", "weights.safetensors", "sha256")

    pkl = tmp_path / "params_5.pkl"
    pkl.write_bytes((seeds / "pickle" / "fql.pkl").read_bytes()[:5000])
    env = "cube-single-play-singletask-task2-v0"
    imported = qgf("import", str(pkl), "--env", env, "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert_one_line(imported, "import", "params_5.pkl", "truncated")
