"""viewer/timeline_file.py: a session's whole timeline saved to one file and opened again
exactly (records, traces, settings, branch structure, env state), refused when damaged,
truncated, newer or not a timeline, never unpickled, written atomically. No window
(tests/test_timeline_file_app.py drives the buttons)."""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import struct
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_config
from safetensors.numpy import save_file

from core import envs
from core.checkpoints import WEIGHTS_FILE, DatasetSample, save_checkpoint
from core.models import Critic, VelocityField
from viewer import timeline_file
from viewer.session import (
    CUSTOM_LABEL,
    RANDOM_LABEL,
    CandidateDistances,
    Session,
    Settings,
)
from viewer.timeline_file import (
    FORMAT,
    SUFFIX,
    TimelineError,
    check_schema,
    default_path,
    open_session,
    read_timeline,
    save_timeline,
)

pytestmark = pytest.mark.slow

ENV = "cube-single-play-singletask-task2-v0"
BASE = Settings(env_name=ENV, weight=0.05, steps=3, candidates=3, seed=1)


def tiny_checkpoint(path: Path, seed: int) -> Path:
    """A small trained-looking checkpoint for ENV: 2-action chunks, so the records of a
    chunk share their sample."""
    torch.manual_seed(seed)
    config = tiny_config(
        env=ENV,
        horizon=2,
        hidden=[32, 32],
        flow_steps=3,
        training_steps=1,
        data_fingerprint={"arrays_sha256": f"seed {seed}"},
    )
    policy, critic = config.build_policy(), config.build_critic()
    rng = np.random.default_rng(seed)
    sample = DatasetSample(
        rng.random((50, 28), dtype=np.float32), rng.random((50, 5), dtype=np.float32)
    )
    return save_checkpoint(path, config, policy, critic, critic, sample)


def fake_distances(session: Session, sample, obs: np.ndarray) -> None:
    """A sample hook standing in for the distance-to-data analysis (the tiny checkpoint's
    data is noise): deterministic per state, so the stored values can be checked."""
    n = sample.noise.shape[0]
    d = np.random.default_rng(int(abs(obs).sum() * 1e6)).random(2 * n).astype(np.float32)
    sample.off_manifold = d[:n] > 0.5
    sample.distances = CandidateDistances(
        d[:n], d[:n] > 0.5, d[n:], d[n:] > 0.5, threshold=0.5, seconds=1e-4
    )


def play(session: Session, steps: int) -> None:
    for _ in range(steps):
        session.step()


def build_timeline(session: Session) -> None:
    """Three branches, one left mid-chunk, a past step shown."""
    play(session, 9)
    session.branch_from(4, weight=0.3, estimator="ood")
    play(session, 3)
    session.switch_branch(0)
    play(session, 2)
    session.branch_from(7, seed=5, pick_best=True)
    play(session, 1)
    session.view_step(5)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny-ck", seed=0)


@pytest.fixture(scope="module")
def original(checkpoint) -> Session:
    s = Session(checkpoint, settings=BASE)
    s.sample_hooks.append(fake_distances)
    s.reset()
    build_timeline(s)
    yield s
    s.close()


@pytest.fixture(scope="module")
def saved(original, tmp_path_factory) -> Path:
    return save_timeline(original, tmp_path_factory.mktemp("tl") / f"run{SUFFIX}")


@pytest.fixture(scope="module")
def opened(saved) -> Session:
    s = open_session(saved)
    yield s
    s.close()


# ---------------------------------------------------------------------- comparing sessions


def assert_same(a, b, where: str = "") -> None:
    """Equal values, bit for bit for arrays and tensors (dtype and shape included)."""
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), where
        assert (a.dtype, a.shape) == (b.dtype, b.shape), where
        assert a.tobytes() == b.tobytes(), where
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert (a.dtype, a.shape, a.device) == (b.dtype, b.shape, b.device), where
        assert a.numpy().tobytes() == b.numpy().tobytes(), where
    elif hasattr(a, "__dataclass_fields__"):
        assert type(a) is type(b), where
        for f in fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and np.isnan(a):
        assert isinstance(b, float) and np.isnan(b), where
    else:
        assert type(a) is type(b) and a == b, f"{where}: {a!r} != {b!r}"


def shared_objects(session: Session) -> dict[str, list]:
    """Every record, sample, trace and snapshot reference of every branch, in order."""
    out: dict[str, list] = {"records": [], "samples": [], "traces": [], "snapshots": []}
    for b in session.branches:
        for r in [*b.history, b.current]:
            out["records"].append(r)
            out["samples"].append(r.sample)
            out["traces"] += [r.sample.guided, r.sample.unguided]
            out["snapshots"].append(r.snapshot)
    return out


def assert_same_sharing(xs: list, ys: list, what: str) -> None:
    """Two references are the same object in ``xs`` exactly when they are in ``ys``."""
    forward: dict[int, int] = {}
    backward: dict[int, int] = {}
    for x, y in zip(xs, ys, strict=True):
        assert forward.setdefault(id(x), id(y)) == id(y), f"{what}: a shared one was split"
        assert backward.setdefault(id(y), id(x)) == id(x), f"{what}: separate ones were merged"


# ---------------------------------------------------------------------------- round trip


def test_schema_covers_every_field_of_the_stored_classes(monkeypatch):
    check_schema()

    @dataclass
    class Grown:
        index: int
        extra: float

    monkeypatch.setitem(timeline_file.SCHEMA, Grown, ("index",))
    with pytest.raises(TimelineError, match=r"Grown has fields \['extra'\]"):
        check_schema()


def test_every_record_array_setting_and_branch_comes_back_bit_equal(original, opened):
    # The timeline exercises what it should: branches sharing steps, chunks sharing samples,
    # distances stored, a past step shown, several settings.
    objs = shared_objects(original)
    assert len(original.branches) == 3
    assert len({id(r) for r in objs["records"]}) < len(objs["records"])
    assert len({id(s) for s in objs["samples"]}) < len({id(r) for r in objs["records"]})
    assert all(s.distances is not None for s in objs["samples"])
    assert original.viewing == 5 and original.current.chunk_step == 1

    assert len(opened.branches) == len(original.branches)
    for a, b in zip(original.branches, opened.branches, strict=True):
        assert_same(a, b, f"branch {a.id}")
    assert_same(original.settings, opened.settings, "settings")
    assert (opened.active, opened.viewing) == (original.active, original.viewing)
    assert (opened.episode, opened.steps_taken) == (original.episode, original.steps_taken)
    assert opened.step_index == original.step_index
    assert [b.label for b in opened.branches] == [b.label for b in original.branches]
    assert_same(opened.viewed, original.viewed, "viewed")


def test_shared_records_samples_traces_and_snapshots_stay_shared(original, opened):
    before, after = shared_objects(original), shared_objects(opened)
    for what in before:
        assert_same_sharing(before[what], after[what], what)
    # A branch's steps before its fork are its parent's record objects.
    for b in opened.branches[1:]:
        parent = opened.branches[b.parent]
        assert all(x is y for x, y in zip(b.history[: b.fork], parent.history, strict=False))


def test_networks_checkpoint_and_env_state_are_restored(original, opened, checkpoint):
    for role in ("policy", "critic"):
        a, b = getattr(original, role).state_dict(), getattr(opened, role).state_dict()
        assert_same(dict(a), dict(b), role)
    # The checkpoint is here with the same files: it is the one in use (dataset sample too).
    assert opened.checkpoint_path == checkpoint.resolve()
    assert opened.label == original.label == "tiny-ck"
    assert opened.config.files == original.config.files
    # The env is in the active branch's current state, exactly.
    now = envs.snapshot(opened.env)
    recorded = opened.current.snapshot
    assert_same(now.physics, recorded.physics, "physics")
    assert_same(now.arrays, recorded.arrays, "arrays")
    assert now.meta == recorded.meta


def test_replay_is_exact_after_opening(opened):
    for b in opened.branches:
        check = opened.replay(b.id)
        assert check.exact, check
        assert check.stop - check.start == len(b.history)


def test_play_continues_after_opening_as_it_would_have(checkpoint, tmp_path):
    s = Session(checkpoint, settings=BASE)
    play(s, 5)
    s.branch_from(2, weight=0.4)
    play(s, 3)  # ends mid-chunk: the next step executes the chunk's second action
    path = save_timeline(s, tmp_path / f"c{SUFFIX}")
    again = open_session(path)
    try:
        for _ in range(2):
            for session in (s, again):
                play(session, 4)
            for x, y in zip(s.branch.own, again.branch.own, strict=True):
                assert_same(x.obs, y.obs, "obs")
                assert_same(x.action, y.action, "action")
                assert (x.reward, x.success) == (y.reward, y.success)
                assert_same(x.sample.guided, y.sample.guided, "guided")
            # The other line of play continues as it would have too.
            s.switch_branch(0)
            again.switch_branch(0)
        assert again.step_index == s.step_index == 9
    finally:
        s.close()
        again.close()


def test_random_weights_and_custom_networks_reopen(tmp_path):
    s = Session(settings=BASE)
    try:
        play(s, 3)
        opened = open_session(save_timeline(s, tmp_path / f"r{SUFFIX}"))
        assert opened.label == RANDOM_LABEL and opened.config is None
        assert_same(dict(s.policy.state_dict()), dict(opened.policy.state_dict()), "policy")
        assert_same(s.branches, opened.branches, "branches")
        opened.close()

        torch.manual_seed(3)
        policy = VelocityField(28, 5, hidden=(24,), horizon=3, layer_norm=False, time_dim=8)
        critic = Critic(28, 15, hidden=(20, 12), ensemble=3, aggregate="mean", layer_norm=False)
        s.use_networks(policy, critic)
        play(s, 4)
        opened = open_session(save_timeline(s, tmp_path / f"n{SUFFIX}"))
        assert opened.label == CUSTOM_LABEL
        assert opened.policy.horizon == 3 and opened.critic.aggregate == "mean"
        assert_same(dict(critic.state_dict()), dict(opened.critic.state_dict()), "critic")
        assert_same(s.branches, opened.branches, "branches")
        play(s, 2)
        play(opened, 2)
        assert_same(s.current.obs, opened.current.obs, "obs")
        opened.close()
    finally:
        s.close()


def test_networks_it_cannot_rebuild_are_refused(tmp_path):
    class Mine(VelocityField):
        pass

    s = Session(settings=BASE)
    try:
        s.policy = Mine(28, 5, hidden=(8,))
        with pytest.raises(TimelineError, match=r"Mine; a timeline embeds core.models.Veloc"):
            save_timeline(s, tmp_path / f"x{SUFFIX}")
        assert not list(tmp_path.iterdir())
    finally:
        s.close()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_timeline_saved_on_a_gpu_opens_on_the_cpu_here(tmp_path):
    s = Session(settings=BASE)
    try:
        play(s, 2)
        # As if saved on a GPU machine: only the settings say where the networks were.
        s.settings = replace(s.settings, device="cuda:0")
        path = save_timeline(s, tmp_path / f"g{SUFFIX}")
    finally:
        s.close()
    t = read_timeline(path)
    assert t.notes == ["saved with the networks on cuda:0, opened on cpu"]
    assert t.settings.device == "cpu"
    assert {r.settings.device for b in t.branches for r in [*b.history, b.current]} == {"cpu"}
    assert next(t.policy.parameters()).device.type == "cpu"


# -------------------------------------------------------------------- checkpoint identity


def test_a_checkpoint_changed_or_missing_here_is_noted_and_the_file_weights_are_used(
    tmp_path,
):
    ck = tiny_checkpoint(tmp_path / "moving-ck", seed=0)
    s = Session(ck, settings=BASE)
    try:
        play(s, 3)
        path = save_timeline(s, tmp_path / f"m{SUFFIX}")
        weights = {r: dict(getattr(s, r).state_dict()) for r in ("policy", "critic")}
    finally:
        s.close()
    # Retrained under the same name: other weights, other hashes.
    tiny_checkpoint(ck, seed=1)
    t = read_timeline(path)
    assert t.checkpoint.name == "moving-ck" and t.checkpoint_path is None
    assert "differs from the one this timeline was recorded with" in t.notes[0]
    assert WEIGHTS_FILE in t.notes[0] and "the timeline's own weights are used" in t.notes[0]
    for role, state in weights.items():
        assert_same(state, dict(getattr(t, role).state_dict()), role)
    opened = open_session(t)
    assert opened.label == "moving-ck (weights from the timeline)"
    assert opened.config.env == ENV and opened.replay().exact
    opened.close()
    # Gone: opened all the same, from the file alone.
    shutil.rmtree(ck)
    t = read_timeline(path)
    assert t.checkpoint_path is None and "is not on this machine" in t.notes[0]
    for role, state in weights.items():
        assert_same(state, dict(getattr(t, role).state_dict()), role)


# --------------------------------------------------------------------------- bad files


def test_tampered_bytes_are_refused(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    for at in (8 + n + 10, len(data) - 3, 8 + n + (len(data) - 8 - n) // 2):
        bad = bytearray(data)
        bad[at] ^= 0x01
        path = tmp_path / "bad.safetensors"
        path.write_bytes(bytes(bad))
        with pytest.raises(TimelineError, match="does not match its sha256"):
            read_timeline(path)
    # A changed number in the document itself (same length, so the header still parses).
    text = data[8 : 8 + n].decode()
    i = text.index('\\"episode\\":') + len('\\"episode\\":')
    digit = text[i]
    bad = data[: 8 + i] + str((int(digit) + 1) % 10).encode() + data[8 + i + 1 :]
    path.write_bytes(bytes(bad))
    with pytest.raises(TimelineError, match="does not match its sha256"):
        read_timeline(path)


@pytest.mark.parametrize("keep", [0, 5, 8, 100, -1000, -1])
def test_truncated_files_are_refused(saved, tmp_path, keep):
    data = saved.read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[:keep] if keep >= 0 else data[: len(data) + keep])
    with pytest.raises(TimelineError, match="truncated|too short"):
        read_timeline(path)


def rewrite(saved: Path, path: Path, **metadata: str) -> None:
    """``saved``'s tensors again, with ``metadata`` replacing keys of its metadata."""
    from safetensors import safe_open

    with safe_open(str(saved), framework="numpy") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    save_file(tensors, str(path), metadata=meta | metadata)


def test_a_newer_or_unknown_version_is_refused(original, saved, tmp_path):
    path = tmp_path / "v.safetensors"
    rewrite(saved, path, version="2")
    with pytest.raises(TimelineError, match=r"newer qgf \(timeline format version 2\).*update"):
        read_timeline(path)
    rewrite(saved, path, version="one")
    with pytest.raises(TimelineError, match="unknown timeline format version 'one'"):
        read_timeline(path)
    rewrite(saved, path)  # the control: the same rewrite with nothing changed opens
    assert read_timeline(path).episode == original.episode == 2


def test_files_that_are_not_timelines_are_refused(checkpoint, tmp_path):
    with pytest.raises(TimelineError, match="not a qgf timeline.*checkpoint's weights"):
        read_timeline(checkpoint / WEIGHTS_FILE)
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a timeline at all\n")
    with pytest.raises(TimelineError, match="not a qgf timeline"):
        read_timeline(text)
    other = tmp_path / "other.safetensors"
    save_file({"x": np.zeros(3)}, str(other), metadata={"format": "something-else"})
    with pytest.raises(TimelineError, match="format 'something-else', expected 'qgf-timeline'"):
        read_timeline(other)
    head = json.dumps({"__metadata__": {"format": FORMAT, "version": "1"}, "0": {"dtype": "F32"}})
    other.write_bytes(struct.pack("<Q", len(head)) + head.encode())
    with pytest.raises(TimelineError, match="a tensor entry of its header is malformed"):
        read_timeline(other)


class _Bomb:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_named_as_a_timeline_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / f"bomb{SUFFIX}"
    path.write_bytes(pickle.dumps(_Bomb(marker)))
    with pytest.raises(TimelineError, match="not a qgf timeline"):
        read_timeline(path)
    assert not marker.exists()


def test_nothing_pickle_based_runs_on_save_or_open(original, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("something unpickled")

    for owner, name in (
        (pickle, "loads"),
        (pickle, "load"),
        (pickle, "Unpickler"),
        (torch, "load"),
        (np, "load"),
    ):
        monkeypatch.setattr(owner, name, refuse)
    path = save_timeline(original, tmp_path / f"p{SUFFIX}")
    opened = open_session(path)
    assert opened.replay().exact
    opened.close()


def test_a_failed_write_leaves_no_file_and_keeps_an_old_one(original, tmp_path, monkeypatch):
    def half_then_fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(timeline_file, "save_tensors", half_then_fail)
    path = tmp_path / f"a{SUFFIX}"
    with pytest.raises(OSError, match="disk full"):
        save_timeline(original, path)
    assert list(tmp_path.iterdir()) == []
    path.write_bytes(b"an older file")
    with pytest.raises(OSError, match="disk full"):
        save_timeline(original, path)
    assert list(tmp_path.iterdir()) == [path] and path.read_bytes() == b"an older file"


# ---------------------------------------------------------------------- size, paths, CLI


def test_file_is_about_as_big_as_the_timeline_in_memory(original, saved):
    t = read_timeline(saved)
    meta_len = struct.unpack("<Q", saved.read_bytes()[:8])[0]
    weights = sum(
        p.numel() * p.element_size()
        for r in ("policy", "critic")
        for p in getattr(t, r).parameters()
    )
    arrays = saved.stat().st_size - 8 - meta_len - weights
    # Content stored once: never more than the arrays held in memory.
    assert 0 < arrays <= original.timeline_nbytes()
    # The JSON document: well under a kilobyte per distinct record.
    header = json.loads(saved.read_bytes()[8 : 8 + meta_len])
    document = json.loads(header["__metadata__"]["document"])
    assert document["format"] == FORMAT
    assert meta_len < 3000 * len(document["records"])


def test_default_path_is_time_stamped_in_timelines_and_never_taken(tmp_path):
    first = default_path(ENV, tmp_path)
    assert first.parent == tmp_path and first.name.startswith(ENV)
    assert first.name.endswith(SUFFIX) and time.strftime("%Y%m%d") in first.name
    first.write_bytes(b"")
    assert default_path(ENV, tmp_path) != first


def cli_args(**values) -> argparse.Namespace:
    from viewer.cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    for k, v in values.items():
        setattr(args, k, v)
    return args


def test_qgf_view_open_refuses_a_bad_file_before_any_window(tmp_path, capsys):
    from viewer.cli import run

    bad = tmp_path / f"bad{SUFFIX}"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    assert run(cli_args(open=str(bad), frames=1)) == 2
    err = capsys.readouterr().err
    assert "cannot open the timeline" in err and "truncated" in err
    assert run(cli_args(open=str(bad), weight=0.1, frames=1)) == 2
    assert "drop --weight" in capsys.readouterr().err


def test_a_file_from_before_the_architecture_switches_opens_with_their_defaults(saved, tmp_path):
    """Timelines written before ``MLPStyle``, raw time, optional V and the Q aggregation
    switch existed describe networks without those keys: they read as the recipe they had."""
    import json

    from safetensors import safe_open

    from viewer.timeline_file import _digest

    with safe_open(str(saved), framework="numpy") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    doc = json.loads(meta["document"])
    new_keys = {"style", "norm_last_hidden", "time_embedding", "value"}
    for entry in doc["networks"].values():
        entry["architecture"] = {
            k: v for k, v in entry["architecture"].items() if k not in new_keys
        }
    document = json.dumps(doc, separators=(",", ":"))
    path = tmp_path / "old.safetensors"
    save_file(
        tensors,
        str(path),
        metadata=meta | {"document": document, "sha256": _digest(document, tensors)},
    )
    old, new = read_timeline(path), read_timeline(saved)
    for role in ("policy", "critic"):
        a, b = getattr(old, role), getattr(new, role)
        assert a.architecture() == b.architecture()
        assert_same(dict(a.state_dict()), dict(b.state_dict()), role)


def test_view_choices_round_trip_and_older_files_have_none(original, saved, tmp_path):
    view = {"landscape": {"slice": {"dims": [0, 2], "chunk_index": 0}, "heat": "head std"}}
    path = save_timeline(original, tmp_path / f"v{SUFFIX}", view=view)
    assert read_timeline(path).view == view
    assert read_timeline(saved).view == {}


def test_landscape_prefs_from_a_file_are_checked():
    from viewer.landscape_view import LandscapeView

    class App:  # the view needs no window to hold its choices
        pass

    view = LandscapeView(App())
    view.apply_prefs({"slice": {"dims": [1, 2], "hold": "mean", "resolution": 32}})
    assert view.spec.dims == (1, 2) and view.spec.hold == "mean"
    # Bad entries are ignored, never half-applied or raised.
    for bad in (None, 3, {"slice": {"dims": [1, 1]}}, {"slice": {"nope": 1}}, {"heat": "x"}):
        view.apply_prefs(bad)
        assert view.spec.dims == (1, 2) and view.heat == "Q"
    view.apply_prefs({"layers": {"density": False, "unknown": True}})
    assert view.layers["density"] is False and "unknown" not in view.layers
