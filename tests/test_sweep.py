import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import nan_critic_checkpoint, tiny_config

from core.cli import main
from core.files import atomic_write
from core.sweep import (
    CELLS_DIR,
    Cell,
    SweepError,
    SweepSpec,
    read_rows,
    read_spec_file,
    run_cell,
    run_sweep,
    write_report,
)

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = str(ROOT / "checkpoints" / "cube-single-task2")
# Tiny cells: 2 episodes of 4 env steps, stepped together.
TINY = dict(episodes=2, envs=2, max_episode_steps=4)


# ----------------------------------------------------------------------------- input


def test_spec_from_options_and_lists():
    spec = SweepSpec.from_mapping(
        {"checkpoints": "a,b", "weights": "0, 0.01,0.1", "seeds": "0,50", "episodes": "3"}
    )
    assert spec.checkpoints == ("a", "b") and spec.weights == (0.0, 0.01, 0.1)
    assert spec.seeds == (0, 50) and spec.episodes == 3 and spec.estimators == ("qgf",)
    toml = SweepSpec.from_mapping({"checkpoints": ["a"], "weights": [0, 1], "envs": 4})
    assert toml.weights == (0.0, 1.0) and toml.envs == 4


@pytest.mark.parametrize(
    "data, message",
    [
        ({"checkpoints": "a", "weights": "0,x"}, "--weights: expected a number, got 'x'"),
        ({"checkpoints": "a", "weights": "0,-1"}, "weights must be >= 0"),
        ({"checkpoints": "a", "weights": "nan"}, "finite"),
        ({"checkpoints": "a", "weights": ","}, "the list is empty"),
        ({"checkpoints": "a", "weights": "0,0"}, "lists a value twice"),
        ({"checkpoints": "a", "estimators": "qgf,nope"}, "unknown estimator 'nope'"),
        ({"checkpoints": "a", "episodes": "0"}, "at least 1"),
        ({"checkpoints": "a", "seeds": [1.5]}, "whole number"),
        ({"checkpoints": "a", "colour": "red"}, "unknown field 'colour'"),
        ({"weights": "0"}, "no checkpoints"),
    ],
)
def test_bad_spec_is_one_clear_error(data, message):
    with pytest.raises(SweepError, match=message.replace("(", r"\(")):
        SweepSpec.from_mapping(data, source="s.toml", options={"weights"})


def test_spec_file(tmp_path):
    file = tmp_path / "s.toml"
    file.write_text('[sweep]\ncheckpoints = ["a"]\nweights = [0, 0.03]\nseeds = [0, 100]\n')
    spec = SweepSpec.from_mapping(read_spec_file(file), source=str(file))
    assert spec.weights == (0.0, 0.03) and spec.seeds == (0, 100)
    file.write_text("checkpoints = [")
    with pytest.raises(SweepError, match="not valid TOML"):
        read_spec_file(file)


def write_row(path: Path, row: dict) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(row) + "\n"))


def _cli(capsys, *argv):
    rc = main(["sweep", *argv])
    captured = capsys.readouterr()
    return rc, captured.err.strip().splitlines()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--checkpoints", CHECKPOINT, "--estimators", "nope"], "unknown estimator 'nope'"),
        (["--checkpoints", CHECKPOINT, "--weights", "0,abc"], "--weights: expected a number"),
        (["--checkpoints", "no/such/dir"], "no checkpoint directory at no/such/dir"),
        (["--report", "no/such/dir"], "no finished cells"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(capsys, tmp_path, argv, message):
    rc, err = _cli(capsys, *argv, *([] if "--report" in argv else ["--out", str(tmp_path)]))
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("qgf sweep: error: ") and message in err[0]


def test_cli_bad_toml_field_exits_2(capsys, tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(f'checkpoints = ["{CHECKPOINT}"]\nweights = [0]\nepisodes = "many"\n')
    rc, err = _cli(capsys, str(spec))
    assert rc == 2 and err == [
        f"qgf sweep: error: {spec}: episodes: expected a whole number, got 'many' "
        "(--debug: traceback)"
    ]


def test_cli_options_override_the_toml(capsys, tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(f'checkpoints = ["{CHECKPOINT}"]\nestimators = ["qgf"]\nweights = [0]\n')
    rc, err = _cli(capsys, str(spec), "--estimators", "nope", "--weights", "1,-2")
    assert rc == 2 and err[0].startswith("qgf sweep: error: --weights: weights must be >= 0")
    rc, err = _cli(capsys, str(spec), "--estimators", "qgf,nope")
    assert rc == 2 and "unknown estimator 'nope'" in err[0]


# ----------------------------------------------------------------------------- report


def fake_row(est: str, weight: float, seed: int, success: list[int]) -> dict:
    n = len(success)
    return {
        "checkpoint": "ck-12345678",
        "checkpoint_path": "checkpoints/ck",
        "checkpoint_sha256": "12345678" * 8,
        "env": "cube-single-play-singletask-task2-v0",
        "estimator": est,
        "weight": weight,
        "seed": seed,
        "episodes": n,
        "num_envs": n,
        "max_episode_steps": None,
        "flow_steps": 10,
        "horizon": 1,
        "actions": 10 * n,
        "off_manifold_actions": int(100 * weight),
        "nonfinite_rows": 1,
        "ms_per_action": 2.0,
        "wall_s": 1.0,
        "success_per_episode": success,
        "return_per_episode": [-10.0 + 5 * s for s in success],
        "length_per_episode": [100] * n,
    }


def test_report_pools_seed_blocks(tmp_path):
    for est in ("qgf", "ood"):
        for w in (0.0, 0.03, 0.1):
            for seed, success in ((0, [1, 0, 0, 0]), (4, [1, 1, 0, 0])):
                cell = Cell("ck-12345678", est, w, seed)
                write_row(cell.path(tmp_path), fake_row(est, w, seed, success))
    assert len(read_rows(tmp_path)) == 12
    paths = write_report(tmp_path)
    assert [p.name for p in paths] == ["report-ck-12345678.png", "REPORT.md"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = paths[1].read_text()
    # 3 of 8 pooled episodes; 10 of the 40 chunks off the manifold in each block at w = 0.1.
    assert "| qgf | 0.1 | 8 | 38% | [14, 69] | -8.1 | 25.0% | 2 | 2.0 |" in text
    assert text.count("| ood |") == 3


# ----------------------------------------------------------------------------- on Ray


@pytest.fixture(scope="module")
def cluster():
    import ray

    from core.sweep import connect

    connect(cpus=2)
    yield ray
    ray.shutdown()


def tiny_spec(out: Path, **kw) -> SweepSpec:
    values = dict(checkpoints=(CHECKPOINT,), weights=(0.0, 0.1), out=str(out), **TINY)
    values.update(kw)
    return SweepSpec(**values)


@pytest.mark.slow
def test_a_cell_equals_qgf_eval(cluster, tmp_path):
    """The same seeds give exactly the numbers `qgf eval` gives (run on Ray workers)."""
    import torch

    from core.checkpoints import load_checkpoint
    from core.evaluation import evaluate

    spec = tiny_spec(tmp_path, weights=(0.0, 0.3), estimators=("qgf", "ood"), seeds=(3,))
    outcome = run_sweep(spec, progress=False)
    assert outcome.exit_code == 0 and len(outcome.done) == 4
    policy, critic, config = load_checkpoint(CHECKPOINT)
    torch.set_num_threads(1)
    result = evaluate(
        policy, critic, config, weights=[0.0, 0.3], estimators=["qgf", "ood"], seed=3,
        episodes=2, num_envs=2, max_episode_steps=4, progress=False,
    )  # fmt: skip
    rows = {(r["estimator"], r["weight"]): r for r in read_rows(tmp_path)}
    assert len(rows) == 4
    for p in result.points:
        row = rows[(p.estimator, p.weight)]
        assert row["success_per_episode"] == p.success_per_episode
        assert row["return_mean"] == p.return_mean and row["return_ci"] == list(p.return_ci)
        assert row["length_mean"] == p.length_mean
        assert row["success_ci"] == list(p.success_ci)
        assert row["nonfinite_rows"] == p.nonfinite_steps
        assert row["actions"] == 2 * 4 and row["ms_per_action"] > 0
        assert 0 <= row["off_manifold_share"] <= 1 and row["seed"] == 3
        assert row["checkpoint_sha256"] == config.files["weights.safetensors"]
        assert row["code_version"].startswith("0.")
    # Run again: nothing to do.
    again = run_sweep(spec, progress=False)
    assert len(again.skipped) == 4 and not again.done


def _counting(cell_fn, log_dir: Path, fault):
    """Wrap a cell so each attempt is logged to ``log_dir`` and ``fault`` may act first."""

    def cell(payload, cell, settings):
        name = f"{cell.estimator}-w{cell.weight}-s{cell.seed}"
        with open(log_dir / f"attempts-{name}", "a") as f:
            f.write(f"{os.getpid()}\n")
        row = cell_fn(payload, cell, settings)
        fault(cell, log_dir / f"fault-{name}")
        return row

    return cell


def _kill_once(cell, marker: Path) -> None:
    """The worker dies after doing the cell's work but before returning it, once."""
    if cell.weight == 0.1 and cell.seed == 0 and not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)


def _raise_at_w01(cell, marker: Path) -> None:
    if cell.weight == 0.1 and cell.seed == 0:
        raise RuntimeError(f"boom at {cell}")


def _attempts(log_dir: Path) -> dict[str, int]:
    return {
        p.name.removeprefix("attempts-"): len(p.read_text().split())
        for p in log_dir.glob("attempts-*")
    }


@pytest.fixture
def by_value():
    """Ship this module's fault wrappers to the workers by value (they cannot import it)."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.mark.slow
def test_killed_worker_is_retried_and_each_cell_is_written_once(cluster, by_value, tmp_path):
    log = tmp_path / "log"
    log.mkdir()
    spec = tiny_spec(tmp_path / "out", seeds=(0, 2))
    outcome = run_sweep(spec, progress=False, cell_fn=_counting(run_cell, log, _kill_once))
    assert outcome.exit_code == 0 and len(outcome.done) == 4 and not outcome.failed
    attempts = _attempts(log)
    assert attempts.pop("qgf-w0.1-s0") == 2  # killed once, retried once
    assert set(attempts.values()) == {1}
    rows = read_rows(tmp_path / "out")
    keys = [(r["weight"], r["seed"]) for r in rows]
    assert sorted(keys) == [(0.0, 0), (0.0, 2), (0.1, 0), (0.1, 2)]
    files = list((tmp_path / "out" / CELLS_DIR).rglob("*"))
    assert not [f for f in files if f.name.startswith(".")]  # no temp files left


@pytest.mark.slow
def test_a_raising_cell_is_reported_and_the_rest_complete(cluster, by_value, tmp_path):
    from core.sweep import summary_lines

    log = tmp_path / "log"
    log.mkdir()
    spec = tiny_spec(tmp_path / "out", seeds=(0, 2))
    outcome = run_sweep(spec, progress=False, cell_fn=_counting(run_cell, log, _raise_at_w01))
    assert outcome.exit_code == 1 and len(outcome.done) == 3
    [(cell, error)] = outcome.failed
    assert (cell.weight, cell.seed) == (0.1, 0) and "RuntimeError: boom at" in error
    assert _attempts(log)["qgf-w0.1-s0"] == 1  # an exception is not retried
    lines = summary_lines(outcome, spec.out)
    assert lines[0].startswith("3 cells run, 0 already done, 1 failed, of 4")
    assert "RuntimeError: boom at" in lines[-1]
    assert "boom at" in (tmp_path / "out" / "errors.txt").read_text()
    # The next run does only the failed cell.
    again = run_sweep(spec, progress=False)
    assert again.exit_code == 0 and len(again.skipped) == 3 and again.done == [cell]
    assert not (tmp_path / "out" / "errors.txt").exists()


def finished(out: Path) -> list[Path]:
    """Cell files, not the temporary files they are written through (.NAME.*.tmp.jsonl)."""
    return [p for p in out.glob(f"{CELLS_DIR}/*/*/*.jsonl") if not p.name.startswith(".")]


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_recomputing(cluster, tmp_path):
    """`qgf sweep` joins the running cluster (--address), is interrupted, and resumes.

    24 cells: enough that the interrupt, sent when the first cell is written, lands while
    cells are left even when the test process is starved on a loaded machine (with 8, the
    whole sweep once finished before the signal arrived)."""
    cells = 24
    address = cluster.get_runtime_context().gcs_address
    out = tmp_path / "out"
    argv = [
        sys.executable, "-m", "core.cli", "sweep", "--checkpoints", CHECKPOINT,
        "--weights", "0,0.01,0.03,0.1", "--seeds", "0,2,4,6,8,10", "--episodes", "2",
        "--envs", "2", "--max-episode-steps", "40", "--out", str(out), "--address", address,
        "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "interrupted.log"
    with open(log, "w") as f:
        # A shell without job control (CI running the suite in the background) starts its
        # children with SIGINT ignored, and Python then keeps it ignored: give the sweep
        # the default disposition, so that SIGINT is the KeyboardInterrupt of a terminal.
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        # Generous: on a loaded 2-core machine new workers take tens of seconds to start.
        deadline = time.monotonic() + 300
        while not finished(out) and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    first = {p: p.stat().st_mtime_ns for p in finished(out)}
    assert 1 <= len(first) < cells, log.read_text()
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    expect = f"{cells - len(first)} cells run, {len(first)} already done, 0 failed, of {cells}"
    assert expect in done.stdout
    rows = read_rows(out)
    assert len(rows) == cells and len({(r["weight"], r["seed"]) for r in rows}) == cells
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())  # not rewritten
    assert (out / "REPORT.md").exists()


@pytest.mark.slow
def test_settings_of_an_output_directory_are_fixed(cluster, tmp_path):
    spec = tiny_spec(tmp_path, weights=(0.0,))
    assert run_sweep(spec, progress=False).exit_code == 0
    with pytest.raises(SweepError, match="episodes = 2, this one asks for 3"):
        run_sweep(tiny_spec(tmp_path, weights=(0.0,), episodes=3), progress=False)
    more = run_sweep(tiny_spec(tmp_path, weights=(0.0, 0.1)), progress=False)
    assert len(more.skipped) == 1 and len(more.done) == 1
    assert np.isfinite([r["return_mean"] for r in read_rows(tmp_path)]).all()


@pytest.mark.slow
def test_a_checkpoint_without_dataset_sample_runs_without_distances(tmp_path):
    """An agent imported without its data: the cell runs, off-manifold fields are null."""
    import torch

    from core.checkpoints import DatasetSample, save_checkpoint
    from core.sweep import CellSettings, load_payload

    torch.manual_seed(0)
    config = tiny_config(flow_steps=2)
    critic = config.build_critic()
    empty = DatasetSample(np.zeros((0, 28), np.float32), np.zeros((0, 5), np.float32))
    save_checkpoint(tmp_path / "ck", config, config.build_policy(), critic, critic, empty)
    payload = load_payload(tmp_path / "ck")
    assert payload.manifold is None and payload.label.startswith("ck-")
    cell = Cell(payload.label, "qgf", 0.1, 0)
    row = run_cell(payload, cell, CellSettings(1, 1, 2, None, "test"))
    assert row["off_manifold_share"] is None and row["manifold_threshold"] is None
    assert row["actions"] == 2 and row["episodes"] == 1
    write_row(cell.path(tmp_path / "out"), row)
    report = write_report(tmp_path / "out")[-1].read_text()
    assert "| qgf | 0.1 | 1 | 0% |" in report and "| n/a |" in report


def test_an_unreadable_settings_file_is_one_clear_error(tmp_path):
    (tmp_path / "sweep.json").write_text("[1, 2]")
    with pytest.raises(SweepError, match="does not hold a JSON object"):
        run_sweep(SweepSpec(checkpoints=(CHECKPOINT,), out=str(tmp_path)), progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("weight", [0.1, 1e3])
def test_a_critic_that_returns_nan_is_counted_and_never_reaches_the_env(tmp_path, weight):
    """A diverged critic (NaN out): every sampled row is flagged, the episodes still run on
    finite actions (the env refuses any other: ``core.envs.FiniteActions``), and the cell
    and the report count the rows."""
    from core.sweep import CellSettings, load_payload

    payload = load_payload(nan_critic_checkpoint(tmp_path / "ck", flow_steps=2))
    cell = Cell(payload.label, "qgf", weight, 0)
    row = run_cell(payload, cell, CellSettings(1, 1, 3, None, "test"))
    assert row["actions"] == 3 and row["nonfinite_rows"] == 3
    write_row(cell.path(tmp_path / "out"), row)
    report = write_report(tmp_path / "out")[-1].read_text()
    assert f"| qgf | {weight:g} | 1 | 0% |" in report
    assert "| 3 |" in report  # the non-finite rows' column


def test_connect_keeps_the_sigterm_handler_that_ray_init_replaces(monkeypatch):
    """ray.init installs a SIGTERM handler that exits at once; qgf's own (SIGTERM raised like
    Ctrl-C, so the sweep cancels its tasks and exits 143) must survive it."""
    import ray

    from core import sweep

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(
        sweep, "_init", lambda address, cpus: signal.signal(signal.SIGTERM, lambda *a: None)
    )

    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        sweep.connect()
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
