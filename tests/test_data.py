"""Tests for core/data.py and `qgf datagen`: generation, OGBench round trip, bad files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from core.data import (
    Dataset,
    DatasetError,
    GenerationConfig,
    _EnvFacts,
    compact_sample,
    dataset_paths,
    generate_dataset,
    load_dataset,
    save_npz_atomic,
    validate_file,
)

CUBE = "cube-single-play-singletask-task2-v0"
STEPS = 60  # per episode: enough for the oracle to move, short enough for a test
# cube-single: observation 28, qpos 6 arm + 8 gripper + 7 cube = 21, qvel 6 + 8 + 6 = 20.
CUBE_FACTS = _EnvFacts(obs_dim=28, action_dim=5, nq=21, nv=20, num_buttons=None)


def _tiny(name: str = "cube-single-play-v0", seed: int = 0, episodes: int = 2) -> GenerationConfig:
    return GenerationConfig(
        name=name, episodes=episodes, val_episodes=1, seed=seed, max_episode_steps=STEPS
    )


@pytest.fixture(scope="module")
def cube_files(tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("cube")
    stats = generate_dataset(_tiny(), out, workers=1, progress=False)
    assert stats.train_transitions == 2 * STEPS and stats.val_transitions == STEPS
    return Path(stats.train_path), Path(stats.val_path)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


# ----------------------------------------------------------------------------- generation


@pytest.mark.slow
def test_generated_file_is_official_format_and_ogbench_loads_it(cube_files) -> None:
    import ogbench

    train_path, val_path = cube_files
    raw = _arrays(train_path)
    assert set(raw) == {"observations", "actions", "terminals", "qpos", "qvel"}
    assert raw["observations"].dtype == np.float32 and raw["actions"].dtype == np.float32
    assert raw["terminals"].dtype == bool
    assert np.flatnonzero(raw["terminals"]).tolist() == [STEPS - 1, 2 * STEPS - 1]
    assert np.abs(raw["actions"]).max() <= 1.0
    # qpos is the state *before* each action, the one its observation shows (arm joints).
    assert np.array_equal(raw["observations"][:, :6], raw["qpos"][:, :6])

    env, train, val = ogbench.make_env_and_datasets(CUBE, dataset_path=str(train_path))
    assert len(train["observations"]) == 2 * (STEPS - 1)  # the last row of an episode drops
    assert len(val["observations"]) == STEPS - 1
    ours = load_dataset(CUBE, path=train_path)
    assert len(ours) == 2 * (STEPS - 1) and (ours.obs_dim, ours.action_dim) == (28, 5)
    for key, value in ours.as_dict().items():
        assert np.array_equal(value, train[key]), key
    assert set(np.unique(ours.rewards)) <= {-1.0, 0.0}
    assert np.array_equal(ours.masks, (ours.rewards != 0).astype(np.float32))
    ours_val = load_dataset(CUBE, path=train_path.parent, split="val")
    assert np.array_equal(ours_val.observations, val["observations"])


@pytest.mark.slow
def test_scene_data_has_button_states_and_loads(tmp_path) -> None:
    import ogbench

    config = GenerationConfig("scene-play-v0", episodes=1, val_episodes=1, max_episode_steps=30)
    stats = generate_dataset(config, tmp_path / "scene.npz", progress=False)
    raw = _arrays(Path(stats.train_path))
    assert raw["button_states"].shape == (30, 2) and raw["observations"].shape == (30, 40)
    name = "scene-play-singletask-task2-v0"
    _, train, _ = ogbench.make_env_and_datasets(name, dataset_path=stats.train_path)
    ours = load_dataset(name, path=stats.train_path)
    assert np.array_equal(ours.rewards, train["rewards"])


@pytest.mark.slow
def test_generation_is_deterministic_for_any_worker_count(cube_files, tmp_path) -> None:
    train_path, val_path = cube_files
    stats = generate_dataset(_tiny(), tmp_path / "w2", workers=2, progress=False)
    for ours, ref in ((stats.train_path, train_path), (stats.val_path, val_path)):
        a, b = _arrays(Path(ours)), _arrays(ref)
        assert a.keys() == b.keys()
        for key in a:
            assert np.array_equal(a[key], b[key]), key
    other = generate_dataset(_tiny(seed=1, episodes=1), tmp_path / "s1", progress=False)
    first = _arrays(Path(other.train_path))["observations"]
    assert not np.array_equal(first, _arrays(train_path)["observations"][:STEPS])


@pytest.mark.slow
def test_interrupted_generation_leaves_no_file(tmp_path) -> None:
    train, val = dataset_paths(tmp_path, "cube-single-play-v0")
    train.write_bytes(b"previous complete file")

    def interrupt(done: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_dataset(_tiny(), tmp_path, progress=False, on_episode=interrupt)
    assert train.read_bytes() == b"previous complete file"
    assert not val.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [train.name]


def test_atomic_write_survives_a_crash_mid_write(tmp_path, monkeypatch) -> None:
    path = tmp_path / "d.npz"
    save_npz_atomic(path, {"x": np.arange(3)})

    def crash(f, **arrays):
        f.write(b"PK half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", crash)
    with pytest.raises(OSError, match="disk full"):
        save_npz_atomic(path, {"x": np.arange(5)})
    assert np.array_equal(_arrays(path)["x"], np.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["d.npz"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600


def test_dataset_paths() -> None:
    assert dataset_paths("/d", "cube-single-play-singletask-task2-v0") == (
        Path("/d/cube-single-play-v0.npz"),
        Path("/d/cube-single-play-v0-val.npz"),
    )
    assert dataset_paths("/d/x.npz", "scene-play-v0") == (Path("/d/x.npz"), Path("/d/x-val.npz"))


def test_recipe_defaults() -> None:
    assert GenerationConfig("cube-single-play-v0", 1).random_action_prob == 0.0
    assert GenerationConfig("scene-noisy-v0", 1).random_action_prob == 0.1
    assert GenerationConfig("puzzle-3x3-noisy-v0", 1).random_action_prob == 0.2
    with pytest.raises(ValueError, match="unknown dataset type"):
        _ = GenerationConfig("cube-single-plya-v0", 1).parsed


# ----------------------------------------------------------------------------- bad files


def _valid_cube_arrays(n: int = 10) -> dict[str, np.ndarray]:
    terminals = np.zeros(n, dtype=bool)
    terminals[-1] = True
    return {
        "observations": np.zeros((n, 28), np.float32),
        "actions": np.zeros((n, 5), np.float32),
        "terminals": terminals,
        "qpos": np.zeros((n, 21), np.float32),
        "qvel": np.zeros((n, 20), np.float32),
    }


def _write(path: Path, arrays: dict) -> Path:
    np.savez_compressed(path, **arrays)
    return path


def test_valid_file_passes(tmp_path) -> None:
    assert validate_file(_write(tmp_path / "ok.npz", _valid_cube_arrays()), CUBE_FACTS, CUBE) == 10


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.pop("actions"), "missing key 'actions'"),
        (lambda a: a.pop("qpos"), "missing key 'qpos'"),
        (
            lambda a: a.update(observations=np.zeros((10, 27), np.float32)),
            r"key 'observations' has shape \(10, 27\), expected \[N, 28\]",
        ),
        (
            lambda a: a.update(actions=np.zeros((9, 5), np.float32)),
            r"key 'actions' has shape \(9, 5\), expected \[N, 5\] with N=10",
        ),
        (
            lambda a: a.update(qvel=np.zeros((10, 21), np.float32)),
            r"key 'qvel' has shape \(10, 21\), expected \[N, 20\]",
        ),
        (
            lambda a: a.update(terminals=np.zeros((10, 1), bool)),
            r"key 'terminals' has shape \(10, 1\), expected \[N\]",
        ),
    ],
)
def test_bad_files_name_the_key(tmp_path, change, message) -> None:
    arrays = _valid_cube_arrays()
    change(arrays)
    path = _write(tmp_path / "bad.npz", arrays)
    with pytest.raises(DatasetError, match=message) as info:
        validate_file(path, CUBE_FACTS, CUBE)
    assert str(path) in str(info.value)


def test_pickle_bearing_file_is_refused_without_unpickling(tmp_path) -> None:
    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    arrays = _valid_cube_arrays()
    arrays["qvel"] = np.array([Boom()] * 10, dtype=object)
    path = _write(tmp_path / "evil.npz", arrays)
    with pytest.raises(DatasetError, match="key 'qvel' holds Python objects"):
        validate_file(path, CUBE_FACTS, CUBE)
    assert not (tmp_path / "pwned").exists()


def test_not_an_npz_is_refused(tmp_path) -> None:
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(DatasetError, match="not a readable .npz"):
        validate_file(path, CUBE_FACTS, CUBE)


def test_missing_dataset_says_how_to_make_one(tmp_path) -> None:
    with pytest.raises(DatasetError, match="qgf datagen --env cube-single-play-v0"):
        load_dataset(CUBE, path=tmp_path / "nothing.npz")
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(CUBE, dataset_dir=str(tmp_path))


@pytest.mark.slow
def test_load_dataset_checks_against_the_env(cube_files, tmp_path) -> None:
    arrays = _arrays(cube_files[0])
    arrays["observations"] = arrays["observations"][:, :20]
    path = _write(tmp_path / "cut.npz", arrays)
    with pytest.raises(
        DatasetError, match=r"'observations' has shape \(120, 20\), expected \[N, 28\]"
    ):
        load_dataset(CUBE, path=path)
    # The same file is fine for no env with 20-dim observations; scene needs button states.
    with pytest.raises(DatasetError, match="missing key 'button_states'"):
        load_dataset("scene-play-singletask-task2-v0", path=cube_files[0])


@pytest.mark.slow
def test_directory_of_slices(cube_files, tmp_path) -> None:
    """OGBench's 100M datasets come as a directory of .npz slices (and -val slices)."""
    raw, val = _arrays(cube_files[0]), _arrays(cube_files[1])
    for i in range(2):
        rows = slice(i * STEPS, (i + 1) * STEPS)
        _write(tmp_path / f"cube-single-play-v0-{i:03d}.npz", {k: v[rows] for k, v in raw.items()})
        _write(tmp_path / f"cube-single-play-v0-{i:03d}-val.npz", val)
    whole = load_dataset(CUBE, path=cube_files[0])
    sliced = load_dataset(CUBE, path=tmp_path)
    assert len(sliced.sources) == 2
    for key, value in whole.as_dict().items():
        assert np.array_equal(sliced.as_dict()[key], value), key
    first = load_dataset(CUBE, path=tmp_path, max_files=1)
    assert len(first) == STEPS - 1
    assert len(load_dataset(CUBE, path=tmp_path, split="val")) == 2 * (STEPS - 1)
    (tmp_path / "cube-single-play-v0-001-val.npz").unlink()
    with pytest.raises(DatasetError, match="validation file.*001-val.npz"):
        load_dataset(CUBE, path=tmp_path, split="val")


# ----------------------------------------------------------------------------- samples


def _synthetic(n: int = 100) -> Dataset:
    obs = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    zeros = np.zeros(n, np.float32)
    actions = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    return Dataset(obs, actions, obs + 1, zeros, zeros + 1, zeros, name=CUBE)


def test_compact_sample() -> None:
    data = _synthetic()
    s = compact_sample(data, 10, seed=3)
    assert s["observations"].shape == (10, 3) and s["actions"].shape == (10, 2)
    assert s["observations"].dtype == np.float32 and s["indices"].dtype == np.int64
    assert np.all(np.diff(s["indices"]) > 0)
    assert np.array_equal(s["observations"], data.observations[s["indices"]])
    assert np.array_equal(s["actions"], data.actions[s["indices"]])
    assert np.array_equal(compact_sample(data, 10, seed=3)["indices"], s["indices"])
    assert not np.array_equal(compact_sample(data, 10, seed=4)["indices"], s["indices"])
    assert len(compact_sample(data, 1000)["indices"]) == 100


# ----------------------------------------------------------------------------- qgf datagen


def test_datagen_names() -> None:
    from core.commands.datagen import _dataset_name

    assert _dataset_name("cube-single-play-v0", None) == "cube-single-play-v0"
    assert _dataset_name("cube-single-v0", "noisy") == "cube-single-noisy-v0"
    assert _dataset_name("scene-v0", None) == "scene-play-v0"
    assert _dataset_name("scene-play-singletask-task2-v0", "play") == "scene-play-v0"
    with pytest.raises(ValueError, match="is a play dataset but --dataset-type is noisy"):
        _dataset_name("cube-single-play-v0", "noisy")
    with pytest.raises(ValueError, match="unknown env family"):
        _dataset_name("cube-singel-v0", None)


@pytest.mark.slow
def test_datagen_command(tmp_path, capsys) -> None:
    from core.cli import main

    args = ["datagen", "--env", "cube-single-v0", "--dataset-type", "noisy", "--episodes", "1"]
    args += ["--val-episodes", "1", "--max-episode-steps", "20", "--out", str(tmp_path)]
    assert main(args + ["--no-progress"]) == 0
    assert '"train_transitions": 20' in capsys.readouterr().out
    raw = _arrays(tmp_path / "cube-single-noisy-v0.npz")
    assert raw["observations"].shape == (20, 28)
    assert (tmp_path / "cube-single-noisy-v0-val.npz").is_file()
