"""A hostile environment: a read-only output directory, a full disk, no GL, no Xvfb.

Read-only and full file systems are real ones: a tmpfs mounted read-only, and a small tmpfs
filled to the last byte. Permission bits would not do: these tests run as root in CI, and
root writes through a ``chmod 0555`` directory. Mounting needs root (or CAP_SYS_ADMIN); where
it is refused the tests skip and say so.

Pass: the command ends with exit status 2 and one line that names the path and the problem,
found before its work starts (the work is replaced by a function that fails the test), and
nothing is left under a final name.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from core.cli import main
from core.files import OutputError, atomic_write

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = str(ROOT / "checkpoints" / "cube-single-task2")
PROBLEMS = {"read-only": "read-only file system", "full": "no space left on device"}


@contextmanager
def _tmpfs(path: Path, options: str):
    path.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(directory: Path) -> None:
    """Write zeros into ``directory`` until its file system is full."""
    block = b"\0" * 4096
    with open(directory / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError:
            pass
    with open(directory / "filler-tail", "wb", buffering=0) as f:  # the last partial block
        try:
            while True:
                f.write(b"\0")
        except OSError:
            pass


@pytest.fixture(params=list(PROBLEMS))
def hostile(request, tmp_path) -> tuple[Path, str]:
    """A directory on a read-only or a full file system, and the problem's words."""
    kind = request.param
    mount = tmp_path / kind
    if kind == "read-only":
        with _tmpfs(mount, "size=1m,ro") as path:
            yield path, PROBLEMS[kind]
    else:
        with _tmpfs(mount, "size=64k") as path:
            _fill(path)
            yield path, PROBLEMS[kind]


def _final_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if not p.name.startswith("filler"))


def _one_line_error(capsys, command: str, path: Path, problem: str) -> None:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"qgf {command}: error: "), err
    assert str(path) in err and problem in err, err


def _no_work(*args, **kwargs):
    raise AssertionError("the work started before the output was checked")


def test_datagen(hostile, capsys, monkeypatch):
    import core.data

    directory, problem = hostile
    monkeypatch.setattr(core.data, "_iter_episodes", _no_work)
    argv = ["datagen", "--env", "cube-single-play-v0", "--episodes", "1", "--no-progress"]
    assert main([*argv, "--out", str(directory / "data")]) == 2
    _one_line_error(capsys, "datagen", directory, problem)
    assert _final_files(directory) == []


def test_train(hostile, tmp_path, capsys, monkeypatch):
    import core.data

    directory, problem = hostile
    monkeypatch.setattr(core.data, "load_dataset", _no_work)
    argv = [
        "train",
        "--data",
        str(tmp_path / "d.npz"),
        "--steps",
        "2",
        "--hidden",
        "8",
        "--no-progress",
    ]
    argv += ["--eval-every", "0", "--threads", "1", "--out", str(directory / "ck")]
    assert main([*argv, "--log-dir", str(directory / "logs")]) == 2
    _one_line_error(capsys, "train", directory, problem)
    assert _final_files(directory) == []


def test_eval_out(hostile, capsys, monkeypatch):
    import core.evaluation

    directory, problem = hostile
    monkeypatch.setattr(core.evaluation, "evaluate", _no_work)
    argv = ["eval", CHECKPOINT, "--episodes", "1", "--envs", "1", "--no-progress"]
    assert main([*argv, "--out", str(directory / "ev")]) == 2
    _one_line_error(capsys, "eval", directory, problem)
    assert _final_files(directory) == []


def test_record(hostile, capsys, monkeypatch):
    import core.gl

    directory, problem = hostile
    monkeypatch.setattr(core.gl, "check_gl", _no_work)
    assert main(["record", CHECKPOINT, "--out", str(directory / "r.mp4"), "--quiet"]) == 2
    _one_line_error(capsys, "record", directory, problem)
    assert _final_files(directory) == []


def test_sweep(hostile, capsys, monkeypatch):
    import core.sweep

    directory, problem = hostile
    monkeypatch.setattr(core.sweep, "connect", _no_work)
    argv = ["sweep", "--checkpoints", CHECKPOINT, "--weights", "0", "--no-progress"]
    assert main([*argv, "--out", str(directory / "sw")]) == 2
    _one_line_error(capsys, "sweep", directory, problem)
    assert _final_files(directory) == []


@pytest.mark.slow
def test_timeline_save(hostile, monkeypatch):
    import viewer.timeline_file
    from viewer.session import Session, Settings
    from viewer.timeline_file import save_timeline

    directory, problem = hostile
    session = Session(
        CHECKPOINT,
        settings=Settings(
            env_name="cube-single-play-singletask-task2-v0", steps=2, candidates=2, seed=0
        ),
    )
    try:
        session.reset()
        session.step()
        monkeypatch.setattr(viewer.timeline_file, "_Writer", _no_work)
        with pytest.raises(OutputError) as error:
            save_timeline(session, directory / "t" / "run.timeline.safetensors")
    finally:
        session.close()
    message = str(error.value)
    assert str(directory) in message and problem in message and "\n" not in message
    assert _final_files(directory) == []


# ------------------------------------------------------- a disk that fills during the write


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A 64 KiB file system with room for the probe but not for the outputs below."""
    with _tmpfs(tmp_path / "small", "size=64k") as path:
        yield path


def test_a_file_that_does_not_fit_leaves_nothing(small_disk):
    path = small_disk / "big.bin"
    with pytest.raises(OutputError, match=f"cannot write {path}: no space left on device"):
        atomic_write(path, lambda tmp: tmp.write_bytes(b"\1" * 200_000))
    assert list(small_disk.iterdir()) == []


def test_a_checkpoint_that_does_not_fit_leaves_nothing(small_disk):
    """safetensors reports the full disk in its own error type: it is one OutputError too."""
    import torch
    from helpers import tiny_config

    from core.checkpoints import DatasetSample, save_checkpoint

    torch.manual_seed(0)
    config = tiny_config()
    critic = config.build_critic()
    rng = np.random.default_rng(0)
    sample = DatasetSample(
        rng.random((2000, 28), dtype=np.float32), rng.random((2000, 5), dtype=np.float32)
    )
    path = small_disk / "ck"
    with pytest.raises(OutputError, match=f"cannot write {path}: no space left on device"):
        save_checkpoint(path, config, config.build_policy(), critic, critic, sample)
    assert list(small_disk.iterdir()) == []


@pytest.mark.slow
def test_a_video_that_does_not_fit_is_one_line_and_leaves_nothing(tmp_path, capsys):
    """ffmpeg reports the full disk only in its log: still one line naming the file."""
    with _tmpfs(tmp_path / "tiny", "size=8k") as disk:
        out = disk / "r.mp4"
        argv = ["record", CHECKPOINT, "--weights", "0,0.1", "--max-steps", "8", "--quiet"]
        assert main([*argv, "--size", "160x120", "--candidates", "2", "--out", str(out)]) == 2
        _one_line_error(capsys, "record", out, PROBLEMS["full"])
        assert list(disk.iterdir()) == []


# ----------------------------------------------------------------------------- no GL


def _record(env: dict[str, str]) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "core.cli", "record", "--random-weights", "--episodes", "1"]
    argv += ["--max-steps", "2", "--size", "32x24", "--candidates", "2", "--quiet"]
    return subprocess.run(
        [*argv, "--out", str(Path(env["OUT"]) / "r.mp4")],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MUJOCO_GL")}
    return {**env, "OUT": str(tmp_path)}


@pytest.mark.slow
def test_record_without_egl_says_what_to_install(tmp_path):
    """No EGL vendor library (glvnd finds none): one line naming the Debian packages."""
    env = {**_base_env(tmp_path), "MUJOCO_GL": "egl"}
    env["__EGL_VENDOR_LIBRARY_FILENAMES"] = str(tmp_path / "no-such-vendor.json")
    done = _record(env)
    if done.returncode == 0:
        pytest.skip("EGL works here without a glvnd vendor file")
    err = done.stderr.strip()
    assert done.returncode == 2 and len(err.splitlines()) == 1, err
    assert "MUJOCO_GL=egl" in err and "apt install libegl1 libegl-mesa0 libgl1-mesa-dri" in err
    assert "MUJOCO_GL=osmesa with apt install libosmesa6" in err
    assert not list(tmp_path.glob("*.mp4"))


@pytest.mark.slow
def test_record_with_glfw_and_no_display_says_what_to_do(tmp_path):
    done = _record({**_base_env(tmp_path), "MUJOCO_GL": "glfw"})
    err = done.stderr.strip()
    assert done.returncode == 2 and len(err.splitlines()) == 1, err
    assert "glfw needs a display" in err and "apt install xvfb" in err


def test_view_without_display_or_xvfb_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no Xvfb on it
    assert main(["view", "--frames", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Xvfb is not installed" in err, err
    assert "apt install xvfb" in err
