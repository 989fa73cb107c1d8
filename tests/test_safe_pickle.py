"""The restricted unpickler: parameter files load, and nothing else in a pickle ever runs."""

from __future__ import annotations

import os
import pickle
import pickletools
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core import safe_pickle
from core.safe_pickle import UnsafePickleError

FIXTURES = Path(__file__).parent / "fixtures" / "reference"
QGF_FILE = FIXTURES / "qgf_single" / "params_5.pkl"


def _globals(data: bytes) -> set[str]:
    found, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            found.add(f"{strings[-2]}.{strings[-1]}")
        elif op.name == "GLOBAL":
            found.add(arg.replace(" ", "."))
    return found


def test_reference_files_load_to_numpy_without_jax():
    data = QGF_FILE.read_bytes()
    assert "jax._src.array._reconstruct_array" in _globals(data)
    tree = safe_pickle.loads(data)
    kernel = tree["agent"]["policy"]["params"]["MLP_0"]["Dense_0"]["kernel"]
    assert type(kernel) is np.ndarray and kernel.dtype == np.float32 and kernel.ndim == 2
    assert "jax" not in sys.modules


def test_plain_numpy_pickles_load_exactly():
    tree = {
        "a": np.arange(12, dtype=np.float32).reshape(3, 4),
        "b": [np.float64(2.5), np.int32(3), None, "x", (1, 2)],
        "c": np.zeros((0, 5), np.float64),
    }
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        out = safe_pickle.loads(pickle.dumps(tree, protocol=protocol))
        np.testing.assert_array_equal(out["a"], tree["a"])
        assert out["b"][0] == 2.5 and out["b"][1] == 3 and out["c"].shape == (0, 5)


class _Reduce:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize(
    "payload, refused",
    [
        # Written by hand in protocol 0, so the global is literally os.system.
        (b"cos\nsystem\n(S'touch {marker}'\ntR.", "os.system"),
        (b'cbuiltins\neval\n(S\'open("{marker}", "w")\'\ntR.', "builtins.eval"),
        (b"csubprocess\ncall\n((S'touch'\nS'{marker}'\nltR.", "subprocess.call"),
        (b"cbuiltins\ngetattr\n(cos\nsystem\nS'x'\ntR.", "builtins.getattr"),
    ],
)
def test_code_in_a_pickle_never_runs(tmp_path, payload, refused):
    marker = tmp_path / "ran"
    data = payload.replace(b"{marker}", str(marker).encode())
    with pytest.raises(UnsafePickleError, match=f"refused global {refused}"):
        safe_pickle.loads(data)
    assert not marker.exists()


def test_reduce_made_by_pickle_itself_is_refused(tmp_path):
    marker = tmp_path / "ran"
    for obj in (
        _Reduce(os.system, f"touch {marker}"),
        _Reduce(subprocess.check_output, ["touch", str(marker)]),
        {"agent": {"x": _Reduce(eval, f"open({str(marker)!r}, 'w')")}},
    ):
        with pytest.raises(UnsafePickleError, match="refused global"):
            safe_pickle.loads(pickle.dumps(obj))
    assert not marker.exists()


def test_unexpected_module_is_named():
    data = b"cflax.core.frozen_dict\nFrozenDict\n)R."
    with pytest.raises(UnsafePickleError, match="flax.core.frozen_dict.FrozenDict"):
        safe_pickle.loads(data)
    # numpy globals outside the admitted few are refused too.
    with pytest.raises(UnsafePickleError, match="numpy.load"):
        safe_pickle.loads(b"cnumpy\nload\n(S'x'\ntR.")


def test_object_arrays_and_subclasses_are_refused():
    with pytest.raises(UnsafePickleError, match="dtype"):
        safe_pickle.loads(pickle.dumps(np.array([None, 1], dtype=object)))
    with pytest.raises(UnsafePickleError, match="refused"):
        safe_pickle.loads(pickle.dumps(np.ma.masked_array([1.0, 2.0])))
    with pytest.raises(UnsafePickleError, match="dtype"):
        safe_pickle.loads(pickle.dumps(np.zeros(2, dtype=[("a", "f4"), ("b", "i4")])))


def test_deep_nesting_is_refused_without_recursion_errors():
    depth = 100_000
    data = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."
    with pytest.raises(UnsafePickleError, match="nest"):
        safe_pickle.loads(data)


def test_truncated_files_are_refused_at_every_cut():
    data = QGF_FILE.read_bytes()
    rng = np.random.default_rng(0)
    cuts = sorted({0, 1, 2, len(data) - 1, *rng.integers(0, len(data), 60).tolist()})
    for cut in cuts:
        with pytest.raises(UnsafePickleError):
            safe_pickle.loads(data[:cut])


def test_huge_declared_sizes_fail_fast_without_allocating():
    # An array state claiming 10^12 float64s with 8 bytes of data, written the way numpy
    # writes arrays (its own reconstruct function, then the state).
    fun, args, (version, _, dtype, fortran, data) = np.zeros(1).__reduce__()

    class Huge:
        def __reduce__(self):
            return fun, args, (version, (10**12,), dtype, fortran, data)

    start = time.perf_counter()
    with pytest.raises(UnsafePickleError, match="needs|does not match"):
        safe_pickle.loads(pickle.dumps(Huge()))
    # A bytes opcode declaring 2^40 or 2^60 bytes in a small file.
    for size in (1 << 40, 1 << 60):
        declared = b"\x80\x04\x8e" + struct.pack("<Q", size) + b"abc"
        with pytest.raises(UnsafePickleError, match="truncated|malformed|memory"):
            safe_pickle.loads(declared)
    assert time.perf_counter() - start < 2.0


def test_files_above_the_size_limit_are_refused(tmp_path):
    path = tmp_path / "big.pkl"
    path.write_bytes(pickle.dumps(np.zeros(1000)))
    with pytest.raises(UnsafePickleError, match="more than"):
        safe_pickle.load(path, max_bytes=100)


@pytest.mark.slow
def test_import_of_a_hostile_file_prints_one_line_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    bad = tmp_path / "params_1.pkl"
    bad.write_bytes(pickle.dumps({"agent": _Reduce(os.system, f"touch {marker}")}))
    result = subprocess.run(
        [sys.executable, "-m", "core.cli", "import", str(bad), "--out", str(tmp_path / "out")]
        + ["--env", "cube-single-play-singletask-task2-v0"],
        capture_output=True,
        text=True,
        env={**os.environ, "MUJOCO_GL": "egl"},
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("qgf import:")]
    assert len(lines) == 1 and "refused global posix.system" in lines[0], result.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()
