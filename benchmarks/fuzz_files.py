"""Fuzzing every file qgf reads: seeded mutations, each loaded in a guarded child process.

Four file types, each through the loader the tools use:

==========  ==========================================  ===================================
type        files mutated                               loader (named error)
==========  ==========================================  ===================================
checkpoint  config.json, weights.safetensors,           ``load_agent`` and
            dataset_sample.safetensors                  ``load_dataset_sample``
                                                        (``CheckpointError``)
timeline    ``*.timeline.safetensors``                  ``read_timeline`` (``TimelineError``)
dataset     OGBench ``.npz``, compressed (as OGBench    ``load_dataset`` (``DatasetError``)
            and ``qgf datagen`` write it) and stored
pickle      ``params_<step>.pkl`` of the reference      ``import_agent`` (``AgentImportError``,
            agents in tests/fixtures                    ``UnsafePickleError``)
==========  ==========================================  ===================================

A case is ``(type, seed)``: the seed alone picks the seed file, the mutation and its
parameters (``random.Random(seed)``), so any case replays with ``--type T --seed S``.
Mutations: bit flips, bytes set to boundary values, truncation, appended, inserted,
deleted, overwritten and duplicated bytes, non-UTF-8 bytes, and, knowing each format,
changed JSON values, types and nesting (config.json, safetensors headers, the timeline's
document), changed tensor dtypes, shapes and byte ranges, huge declared sizes (safetensors
header length, ``.npy`` shapes, zip member sizes, pickle string and bytes lengths), and
rewritten ``.npy`` headers. Some mutations re-seal what they change (the sha256 a checkpoint's
config records, the timeline's document digest, the zip CRC), as someone editing the file on
purpose would, so the loader's own checks behind the checksum are reached too.

Each case ends in one of:

- ``same``: loaded to the same numbers as the unmutated file (every tensor, array and
  config value equal, bit for bit), e.g. a change to JSON whitespace or to an unused field;
- ``changed``: loaded to other numbers; allowed only where no checksum covers what changed
  (config.json, a re-sealed file, a pickle), since then the file is simply another valid one;
- ``refused``: raised the file type's named error, with a message naming the file;
- a failure: any other exception (a bare ``KeyError`` from a loader, safetensors' or numpy's
  own errors), a crash of the child, no answer within the hang guard, ``MemoryError`` under
  the child's address-space limit, or ``changed`` behind an intact checksum.

Cases run in a worker process per type (``spawn``), which limits its address space
(``RLIMIT_AS``) to what it uses after warming up plus ``MEMORY_HEADROOM``, so a declared size
that makes a loader allocate it fails as ``MemoryError`` instead of exhausting the machine;
the parent waits ``HANG_GUARD_S`` for each answer and replaces a worker that hangs or dies.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing as mp
import os
import random
import resource
import shutil
import struct
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

HELP = "fuzz the files qgf reads with seeded mutations: every case loads the same or is refused"

ENV = "cube-single-play-singletask-task2-v0"
DATASET = "cube-single-play-v0"
TYPES = ("checkpoint", "timeline", "dataset", "pickle")
FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "reference"
PICKLE_CASES = ("qgf_single", "qgf_chunked", "fql", "fql_qgf_release")
HANG_GUARD_S = 30.0
MEMORY_HEADROOM = 2 << 30
PINNED_TIME = "2000-01-01T00:00:00Z"
# The bound a refusal or a load should stay within (reported, never asserted in tests).
QUICK_S = 2.0


# --------------------------------------------------------------------------- mutations


@dataclass
class Mutated:
    """A mutated case: every file of it by name, what was done, and whether a checksum the
    mutation left alone still covers the changed bytes (then the file must not load to other
    numbers)."""

    files: dict[str, bytes]
    what: str
    sealed: bool


BOUNDARY_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x22, 0x5C, 0x7B, 0x5D)
# Invalid UTF-8: a lone continuation byte, an overlong encoding, a truncated sequence, a
# surrogate's encoding, and bytes that never occur in UTF-8.
NON_UTF8 = (b"\x80", b"\xc0\xaf", b"\xe2\x28\xa1", b"\xed\xa0\x80", b"\xff\xfe", b"\xf8\x88")
HUGE = (2**31 - 1, 2**32, 2**40, 2**62, 2**63 - 1, 2**64 - 1)


def mutate_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One format-blind mutation of ``data``: ``(new bytes, description)``."""
    n = len(data)
    op = rng.choice(
        ("flip", "flip", "set", "truncate", "append", "insert", "delete", "overwrite", "dup")
        + ("non_utf8",)
    )
    at = rng.randrange(max(n, 1))
    if op == "flip":
        out = bytearray(data)
        bits = [rng.randrange(max(n * 8, 1)) for _ in range(rng.choice((1, 1, 2, 3, 8)))]
        for b in bits:
            if n:
                out[b // 8] ^= 1 << (b % 8)
        return bytes(out), f"flip bits {bits}"
    if op == "set":
        value = rng.choice(BOUNDARY_BYTES)
        return data[:at] + bytes([value]) + data[at + 1 :], f"byte {at} = {value:#04x}"
    if op == "truncate":
        keep = rng.choice((0, 1, 7, 8, 9, rng.randrange(max(n, 1)), n - 1))
        keep = max(0, min(keep, n - 1))
        return data[:keep], f"truncate to {keep} of {n} bytes"
    if op == "append":
        extra = rng.choice(
            (b"\x00", b"\x00" * rng.randrange(1, 4096), rng.randbytes(rng.randrange(1, 64)))
            + (data[: rng.randrange(1, 64)], b"{}", b"\n")
        )
        return data + extra, f"append {len(extra)} bytes"
    if op == "insert":
        extra = rng.randbytes(rng.randrange(1, 32))
        return data[:at] + extra + data[at:], f"insert {len(extra)} bytes at {at}"
    if op == "delete":
        k = rng.randrange(1, 64)
        return data[:at] + data[at + k :], f"delete {k} bytes at {at}"
    if op == "overwrite":
        k = rng.randrange(1, 64)
        return data[:at] + rng.randbytes(k) + data[at + k :], f"overwrite {k} bytes at {at}"
    if op == "dup":
        k = rng.randrange(1, 256)
        return data[:at] + data[at : at + k] * 2 + data[at + k :], f"duplicate {k} bytes at {at}"
    bad = rng.choice(NON_UTF8)
    return data[:at] + bad + data[at + len(bad) :], f"non-UTF-8 {bad!r} at {at}"


def _paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a node of a JSON tree (the root is ``()``)."""
    out = [prefix]
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += _paths(v, (*prefix, i))
    return out


def _get(tree: Any, path: tuple) -> Any:
    for key in path:
        tree = tree[key]
    return tree


DEEP = "\u2063DEEP\u2063"  # replaced by deeply nested brackets after serialising


def _replacement(value: Any, rng: random.Random) -> Any:
    """A value of another type or an extreme one, in place of ``value``."""
    choices: list[Any] = [None, True, False, 0, -1, 1, 2**63, 10**30, -(10**30), 1.5, -0.0]
    choices += [float("nan"), float("inf"), "", "x", "\u00e9\U0001f600", [], {}, [1, 2]]
    choices += [{"a": 1}, [value], {"v": value}, DEEP, str(value)]
    if isinstance(value, bool):
        choices.append(not value)
    elif isinstance(value, int):
        choices += [value + 1, value - 1, -value, value * 1000, rng.choice(HUGE)]
    elif isinstance(value, float):
        choices += [value * 2, -value, round(value, 1)]
    elif isinstance(value, list) and value:
        choices += [value[:-1], value + value[-1:], value[::-1]]
    return rng.choice(choices)


def mutate_json_tree(tree: Any, rng: random.Random) -> tuple[Any, str]:
    """One structural change to a JSON tree: a value replaced by one of another type or an
    extreme one, a key dropped, or a key added: ``(new tree, description)``."""
    tree = json.loads(json.dumps(tree))
    paths = _paths(tree)
    path = rng.choice(paths[1:] or paths)
    op = rng.choice(("replace", "replace", "replace", "drop", "add"))
    if not path:
        return _replacement(tree, rng), "root replaced"
    parent, key = _get(tree, path[:-1]), path[-1]
    where = "/".join(map(str, path))
    if op == "drop":
        del parent[key]
        return tree, f"drop {where}"
    if op == "add" and isinstance(parent, dict):
        parent[f"{key}_extra"] = parent[key]
        return tree, f"add {where}_extra"
    new = _replacement(parent[key], rng)
    parent[key] = new
    return tree, f"{where} = {new!r:.60}"


def dump_json(tree: Any, rng: random.Random) -> str:
    """Serialise a mutated tree (NaN and infinities as Python's json writes them), in one of
    the layouts JSON allows; ``DEEP`` becomes brackets nested deeper than any parser's
    recursion."""
    indent = rng.choice((None, None, 0, 2, "\t"))
    text = json.dumps(tree, indent=indent, ensure_ascii=rng.random() < 0.5)
    return text.replace(json.dumps(DEEP), "[" * 100_000 + "]" * 100_000)


def split_safetensors(data: bytes) -> tuple[dict, bytes]:
    """``(header, tensor bytes)`` of a well-formed safetensors file."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join_safetensors(header: Any, body: bytes, text: str | None = None) -> bytes:
    """A safetensors file of ``header`` (or the header's JSON ``text``) and ``body``, the
    header padded to 8 bytes as safetensors writes it."""
    raw = (text if text is not None else json.dumps(header, separators=(",", ":"))).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


DTYPES = ("F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "I8", "F8_E4M3", "U64", "XX", "f4")


def mutate_safetensors(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One change to a safetensors file's header: a tensor's dtype, shape or byte range, a
    tensor dropped or renamed, any value of the header (the metadata too) changed as
    ``mutate_json_tree`` does, or the declared header length made huge or wrong."""
    header, body = split_safetensors(data)
    names = [k for k in header if k != "__metadata__"]
    op = rng.choice(("dtype", "shape", "offsets", "drop", "rename", "json", "json", "length"))
    if op == "length":
        value = rng.choice((*HUGE, len(data), len(data) - 7, 0, 1))
        return struct.pack("<Q", value) + data[8:], f"header length = {value}"
    if op == "json" or not names:
        tree, what = mutate_json_tree(header, rng)
        return join_safetensors(None, body, dump_json(tree, rng)), f"header: {what}"
    name = rng.choice(names)
    entry = header[name]
    if op == "dtype":
        entry["dtype"] = rng.choice(DTYPES)
        what = f"{name} dtype = {entry['dtype']}"
    elif op == "shape":
        shape = list(entry["shape"])
        change = rng.choice(("dim", "add", "drop", "huge", "negative", "float"))
        if change == "dim" and shape:
            i = rng.randrange(len(shape))
            shape[i] = rng.choice((0, 1, shape[i] + 1, max(shape[i] - 1, 0), shape[i] * 2))
        elif change == "add":
            shape.insert(rng.randrange(len(shape) + 1), rng.choice((1, 2)))
        elif change == "drop" and shape:
            shape.pop(rng.randrange(len(shape)))
        elif change == "huge":
            shape = [rng.choice(HUGE)] + shape[1:]
        elif change == "negative":
            shape = [-1] + shape[1:]
        else:
            shape = [float(d) + 0.5 for d in shape]
        entry["shape"] = shape
        what = f"{name} shape = {shape}"
    elif op == "offsets":
        lo, hi = entry["data_offsets"]
        new = rng.choice(
            ([lo, hi + 4], [lo + 4, hi], [hi, lo], [lo, rng.choice(HUGE)], [0, hi - lo], [-1, hi])
        )
        entry["data_offsets"] = new
        what = f"{name} data_offsets = {new}"
    elif op == "drop":
        del header[name]
        what = f"drop tensor {name}"
    else:
        header[f"{name}x"] = header.pop(name)
        what = f"rename tensor {name}"
    return join_safetensors(header, body), what


# --------------------------------------------------------------------------- comparing


def summarize(obj: Any, out: dict[str, Any] | None = None, prefix: str = "") -> dict[str, Any]:
    """Every number a loaded object holds, flattened to ``{path: value}`` (arrays and
    tensors as numpy arrays; dataclasses, dicts, lists and tuples walked into)."""
    import torch

    out = {} if out is None else out
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj.detach().cpu().numpy()
    elif isinstance(obj, np.ndarray):
        out[prefix] = obj
    elif is_dataclass(obj) and not isinstance(obj, type):
        for f in obj.__dataclass_fields__:
            summarize(getattr(obj, f), out, f"{prefix}.{f}")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            summarize(v, out, f"{prefix}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            summarize(v, out, f"{prefix}[{i}]")
    else:
        out[prefix] = repr(obj)
    return out


def same_numbers(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two summaries hold the same keys and bit-equal values (dtype and shape too)."""
    if a.keys() != b.keys():
        return False
    for k, x in a.items():
        y = b[k]
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if not (
                isinstance(x, np.ndarray)
                and isinstance(y, np.ndarray)
                and x.dtype == y.dtype
                and x.shape == y.shape
                and x.tobytes() == y.tobytes()
            ):
                return False
        elif x != y:
            return False
    return True


# --------------------------------------------------------------------------- file types


class FileType:
    """One kind of file: its seed files, how to mutate them, and the loader to check."""

    name = ""
    errors: tuple[type[BaseException], ...] = ()

    def make_seeds(self, root: Path) -> None:
        """Write the unmutated seed cases under ``root`` (in the parent, once)."""
        raise NotImplementedError

    def setup(self, root: Path) -> None:
        """Read the seeds and load each unmutated (in the worker, once)."""
        raise NotImplementedError

    def seed_cases(self) -> dict[str, dict[str, bytes]]:
        """Every unmutated case by name: its files, named as a case writes them."""
        raise NotImplementedError

    def mutate(self, seed: int) -> tuple[str, Mutated]:
        """The seed case and its mutation for case ``seed``."""
        raise NotImplementedError

    def load(self, case: Path, seed_name: str) -> dict[str, Any]:
        """Load the case written in ``case``: its summary."""
        raise NotImplementedError

    def names_file(self, message: str, mutated: Mutated) -> bool:
        """Whether a refusal's message names the file (or directory) it refuses."""
        return any(name in message for name in mutated.files) or "/" in message


def _read_dir(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


def _tiny_checkpoint(path: Path, seed: int) -> Path:
    """A small untrained checkpoint for ``ENV`` with 40 rows of dataset sample."""
    import torch

    from core.checkpoints import CheckpointConfig, DatasetSample, save_checkpoint

    torch.manual_seed(seed)
    config = CheckpointConfig(
        env=ENV,
        dataset=DATASET,
        task=2,
        obs_dim=28,
        action_dim=5,
        horizon=2,
        hidden=[16, 16],
        layer_norm=True,
        time_dim=16,
        q_ensemble=2,
        flow_steps=3,
        training_steps=1,
        data_fingerprint={"arrays_sha256": f"seed {seed}"},
    )
    policy, critic = config.build_policy(), config.build_critic()
    rng = np.random.default_rng(seed)
    sample = DatasetSample(
        rng.random((40, 28), dtype=np.float32), rng.random((40, 5), dtype=np.float32)
    )
    config.code_version = "fuzz"
    save_checkpoint(path, config, policy, critic, critic, sample)
    # The same bytes on every run, so that a seed is the same case (config.json is not
    # hashed: its time of saving can be pinned after).
    written = json.loads((path / "config.json").read_text())
    written["created"] = PINNED_TIME
    (path / "config.json").write_text(json.dumps(written, indent=2) + "\n")
    return path


class CheckpointFiles(FileType):
    """A checkpoint directory: one of its three files mutated; a mutated safetensors file
    is re-sealed (its sha256 in config.json updated) in half the cases."""

    name = "checkpoint"

    def __init__(self) -> None:
        from core.checkpoints import CheckpointError

        self.errors = (CheckpointError,)

    def make_seeds(self, root: Path) -> None:
        _tiny_checkpoint(root / "ck", seed=0)

    def setup(self, root: Path) -> None:
        self.seed = _read_dir(root / "ck")
        self.config = json.loads(self.seed["config.json"])

    def seed_cases(self) -> dict[str, dict[str, bytes]]:
        return {"ck": dict(self.seed)}

    def mutate(self, seed: int) -> tuple[str, Mutated]:
        from core.checkpoints import CONFIG_FILE, SAMPLE_FILE, WEIGHTS_FILE

        rng = random.Random(seed)
        files = dict(self.seed)
        name = rng.choice((CONFIG_FILE, WEIGHTS_FILE, SAMPLE_FILE))
        if name == CONFIG_FILE:
            if rng.random() < 0.5:
                tree, what = mutate_json_tree(self.config, rng)
                files[name] = dump_json(tree, rng).encode()
            else:
                files[name], what = mutate_bytes(files[name], rng)
            return "ck", Mutated(files, f"{name}: {what}", sealed=False)
        if rng.random() < 0.5:
            files[name], what = mutate_safetensors(files[name], rng)
        else:
            files[name], what = mutate_bytes(files[name], rng)
        reseal = rng.random() < 0.5
        if reseal:
            import hashlib

            config = json.loads(files[CONFIG_FILE])
            config["files"][name] = hashlib.sha256(files[name]).hexdigest()
            files[CONFIG_FILE] = json.dumps(config, indent=2).encode()
        return "ck", Mutated(files, f"{name}: {what}{' (re-sealed)' * reseal}", not reseal)

    def load(self, case: Path, seed_name: str) -> dict[str, Any]:
        from core.checkpoints import load_agent, load_dataset_sample

        agent = load_agent(case)
        sample = load_dataset_sample(case)
        config = asdict(agent.config)
        return summarize({"agent": agent, "sample": sample, "config": config})


class TimelineFiles(FileType):
    """A saved viewer timeline (three branches of a tiny checkpoint's episode): bytes or
    its safetensors header mutated (its sha256 then no longer matches), or its document
    mutated and the digest re-sealed, so the document's own checks are reached."""

    name = "timeline"

    def __init__(self) -> None:
        from viewer.timeline_file import TimelineError

        self.errors = (TimelineError,)

    def make_seeds(self, root: Path) -> None:
        from viewer.session import Session, Settings
        from viewer.timeline_file import save_timeline

        checkpoint = _tiny_checkpoint(root / "ck", seed=1)
        session = Session(checkpoint, settings=Settings(env_name=ENV, steps=3, candidates=3))
        try:
            for _ in range(4):
                session.step()
            session.branch_from(2, weight=0.3)
            session.step()
            session.view_step(1)
            save_timeline(session, root / "run.timeline.safetensors")
        finally:
            session.close()
        _pin_timeline(root / "run.timeline.safetensors")

    def setup(self, root: Path) -> None:
        self.root = root
        self.seed = (root / "run.timeline.safetensors").read_bytes()

    def seed_cases(self) -> dict[str, dict[str, bytes]]:
        return {"tl": {"run.timeline.safetensors": self.seed}}

    def mutate(self, seed: int) -> tuple[str, Mutated]:
        rng = random.Random(seed)
        op = rng.choice(("bytes", "header", "document", "document"))
        if op == "bytes":
            data, what = mutate_bytes(self.seed, rng)
        elif op == "header":
            data, what = mutate_safetensors(self.seed, rng)
        else:
            data, what = self._reseal_document(rng)
            return "tl", Mutated({"run.timeline.safetensors": data}, what, sealed=False)
        return "tl", Mutated({"run.timeline.safetensors": data}, what, sealed=True)

    def _reseal_document(self, rng: random.Random) -> tuple[bytes, str]:
        from safetensors.numpy import load, save

        from viewer.timeline_file import _digest

        tensors = load(self.seed)
        header, _ = split_safetensors(self.seed)
        metadata = dict(header["__metadata__"])
        tree, what = mutate_json_tree(json.loads(metadata["document"]), rng)
        metadata["document"] = dump_json(tree, rng)
        metadata["sha256"] = _digest(metadata["document"], tensors)
        return save(tensors, metadata=metadata), f"document (re-sealed): {what}"

    def load(self, case: Path, seed_name: str) -> dict[str, Any]:
        from viewer.timeline_file import read_timeline

        timeline = read_timeline(
            case / "run.timeline.safetensors", device="cpu", checkpoint_root=self.root
        )
        return summarize(
            {
                "settings": timeline.settings,
                "branches": timeline.branches,
                "at": (timeline.active, timeline.viewing, timeline.episode, timeline.steps_taken),
                "label": timeline.label,
                "policy": timeline.policy,
                "critic": timeline.critic,
                "checkpoint": timeline.checkpoint,
                "view": timeline.view,
            }
        )


def _pin_timeline(path: Path) -> None:
    """Rewrite a timeline with what varies between runs pinned: the time of saving, the
    code version, the measured seconds, and the checkpoint's path (a bare name, found in the
    checkpoint root), re-sealed."""
    from safetensors.numpy import load, save

    from viewer.timeline_file import _digest

    data = path.read_bytes()
    tensors = load(data)
    metadata = dict(split_safetensors(data)[0]["__metadata__"])
    doc = json.loads(metadata["document"])
    doc["created"], doc["code_version"] = PINNED_TIME, "fuzz"
    doc["checkpoint"]["path"] = doc["checkpoint"]["name"]
    for sample in doc["samples"]:
        sample["seconds"] = 0.0
        if sample["distances"] is not None:
            sample["distances"]["seconds"] = 0.0
    metadata["document"] = json.dumps(doc, separators=(",", ":"))
    metadata["sha256"] = _digest(metadata["document"], tensors)
    path.write_bytes(save(tensors, metadata=metadata))


def _write_npz(path: Path, arrays: dict[str, np.ndarray], compression: int) -> None:
    """``np.savez_compressed`` (``ZIP_DEFLATED``) or ``np.savez`` (``ZIP_STORED``), member
    for member, with the members' dates pinned."""
    with zipfile.ZipFile(path, "w", compression=compression, allowZip64=True) as zf:
        for key, a in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = compression
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(a), allow_pickle=False)


class DatasetFiles(FileType):
    """An OGBench dataset ``.npz`` of two 30-step episodes from the scripted oracles: as
    ``np.savez_compressed`` writes it (OGBench and ``qgf datagen``) and stored uncompressed.
    Beyond format-blind bytes: a zip member's declared size made huge, and an ``.npy``
    header rewritten (shape, dtype, order) with the zip's CRC re-sealed."""

    name = "dataset"
    SEEDS = ("compressed.npz", "stored.npz")

    def __init__(self) -> None:
        from core.data import DatasetError

        self.errors = (DatasetError,)

    def make_seeds(self, root: Path) -> None:
        from core.data import GenerationConfig, generate_dataset

        config = GenerationConfig(DATASET, episodes=2, val_episodes=1, max_episode_steps=30)
        stats = generate_dataset(config, root / "generated.npz", progress=False)
        with np.load(stats.train_path) as d:
            arrays = dict(d)
        _write_npz(root / "compressed.npz", arrays, zipfile.ZIP_DEFLATED)
        _write_npz(root / "stored.npz", arrays, zipfile.ZIP_STORED)

    def setup(self, root: Path) -> None:
        from core.envs import make_env

        self.seeds = {name: (root / name).read_bytes() for name in self.SEEDS}
        self.env = make_env(ENV)

    def seed_cases(self) -> dict[str, dict[str, bytes]]:
        return {name: {"data.npz": data} for name, data in self.seeds.items()}

    def mutate(self, seed: int) -> tuple[str, Mutated]:
        rng = random.Random(seed)
        name = self.SEEDS[seed % 2]
        data = self.seeds[name]
        op = rng.choice(("bytes", "bytes", "zip_size", "npy_header"))
        if op == "zip_size":
            data, what = _zip_declared_size(data, rng)
            sealed = True
        elif op == "npy_header":
            data, what = _npy_header(data, rng)
            sealed = False
        else:
            data, what = mutate_bytes(data, rng)
            sealed = True
        return name, Mutated({"data.npz": data}, what, sealed)

    def load(self, case: Path, seed_name: str) -> dict[str, Any]:
        from core.data import load_dataset

        return summarize(load_dataset(ENV, path=case / "data.npz", env=self.env).as_dict())


def _zip_declared_size(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A member's uncompressed size, in its local header and the central directory (or one
    of them), set to a huge or slightly wrong value."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = rng.choice(zf.infolist())
    value = rng.choice((2**32 - 2, 2**31, info.file_size + 1, max(info.file_size - 1, 0), 0))
    out = bytearray(data)
    where = rng.choice(("both", "local", "central"))
    if where in ("both", "local"):
        struct.pack_into("<I", out, info.header_offset + 22, value)
    if where in ("both", "central"):
        pos = data.find(b"PK\x01\x02")
        while pos != -1:
            (offset,) = struct.unpack_from("<I", data, pos + 42)
            if offset == info.header_offset:
                struct.pack_into("<I", out, pos + 24, value)
                break
            pos = data.find(b"PK\x01\x02", pos + 4)
    return bytes(out), f"{info.filename} declared size = {value} ({where})"


def _npy_header(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One ``.npy`` member's header rewritten (the zip rewritten with correct CRCs)."""
    src = zipfile.ZipFile(io.BytesIO(data))
    infos = src.infolist()
    target = rng.choice(infos)
    raw = src.read(target)
    magic_len = 10 if raw[6] == 1 else 12
    (hlen,) = struct.unpack("<H", raw[8:10]) if magic_len == 10 else struct.unpack("<I", raw[8:12])
    header_text = raw[magic_len : magic_len + hlen].decode("latin1")
    import ast

    header = ast.literal_eval(header_text)
    change = rng.choice(("shape", "shape", "dtype", "order", "text"))
    if change == "shape":
        shape = list(header["shape"])
        options = [[rng.choice(HUGE)] + shape[1:], shape + [1], shape[:-1], [0] + shape[1:]]
        if shape:
            options.append([shape[0] + 1] + shape[1:])
            options.append([shape[0] * 10**9] + shape[1:])
        header["shape"] = tuple(rng.choice(options))
        text = repr(header)
    elif change == "dtype":
        header["descr"] = rng.choice(("<f8", "<f2", "|O", "<i8", "|b1", "<U4", "|V8", ">f4", "?"))
        text = repr(header)
    elif change == "order":
        header["fortran_order"] = not header["fortran_order"]
        text = repr(header)
    else:
        text = rng.choice(
            ("{}", "{'descr': '<f4'}", "__import__('os')", "[" * 200, "{'shape': (1,)" * 3)
        )
    body = text.encode("latin1")
    body += b" " * (-(magic_len + len(body) + 1) % 64) + b"\n"
    if magic_len == 10 and len(body) > 65535:
        body = body[:65535]
    new = raw[:8] + struct.pack("<H" if magic_len == 10 else "<I", len(body)) + body
    new += raw[magic_len + hlen :]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in infos:
            dst.writestr(info, new if info is target else src.read(info))
    return out.getvalue(), f"{target.filename} header {change}: {text[:60]!r}"


# A run's flags.json as both codebases write it, with what the importer reads from it.
RUN_FLAGS = {
    "env_name": ENV,
    "seed": 0,
    "agent": {
        "agent_name": "qgf",
        "activation": "gelu",
        "flow_steps": 10,
        "q_agg": "min",
        "value_network_class": "MLP",
        "encoder": None,
    },
}


class PickleFiles(FileType):
    """A reference agent's ``params_5.pkl`` (QGF release and FQL layouts), imported as
    ``qgf import`` does. Beyond format-blind bytes: a string or bytes opcode's declared
    length made huge or wrong. Every fifth case leaves the pickle as it is and puts a
    mutated ``flags.json`` beside it, the env then taken from it (``qgf import RUN``)."""

    name = "pickle"

    def __init__(self) -> None:
        from core.agent_import import AgentImportError
        from core.safe_pickle import UnsafePickleError

        self.errors = (AgentImportError, UnsafePickleError)

    def make_seeds(self, root: Path) -> None:
        for case in PICKLE_CASES:
            shutil.copy(FIXTURES / case / "params_5.pkl", root / f"{case}.pkl")

    def setup(self, root: Path) -> None:
        import core.envs

        self.seeds = {case: (root / f"{case}.pkl").read_bytes() for case in PICKLE_CASES}
        self.env = core.envs.make_env(ENV)

    def seed_cases(self) -> dict[str, dict[str, bytes]]:
        return {case: {"params_5.pkl": data} for case, data in self.seeds.items()}

    def mutate(self, seed: int) -> tuple[str, Mutated]:
        rng = random.Random(seed)
        case = PICKLE_CASES[seed % len(PICKLE_CASES)]
        data = self.seeds[case]
        if seed % 5 == 4:
            if rng.random() < 0.7:
                tree, what = mutate_json_tree(RUN_FLAGS, rng)
                flags = dump_json(tree, rng).encode()
            else:
                flags, what = mutate_bytes(json.dumps(RUN_FLAGS).encode(), rng)
            files = {"params_5.pkl": data, "flags.json": flags}
            return case, Mutated(files, f"flags.json: {what}", sealed=False)
        if rng.random() < 0.3:
            data, what = _pickle_length(data, rng)
        else:
            data, what = mutate_bytes(data, rng)
        return case, Mutated({"params_5.pkl": data}, what, sealed=False)

    def load(self, case: Path, seed_name: str) -> dict[str, Any]:
        from safetensors.numpy import load_file

        import core.envs
        from core.agent_import import import_agent
        from core.checkpoints import WEIGHTS_FILE

        # The import makes the env for its spaces only: the one made in setup serves.
        make_env = core.envs.make_env
        core.envs.make_env = lambda name, *a, **k: self.env  # type: ignore[assignment]
        try:
            env = None if (case / "flags.json").exists() else ENV
            report = import_agent(case / "params_5.pkl", case / "imported", env)
        finally:
            core.envs.make_env = make_env
        config = asdict(report.config)
        for volatile in ("source", "files", "created", "code_version"):
            config.pop(volatile)
        weights = load_file(case / "imported" / WEIGHTS_FILE)
        return summarize({"config": config, "weights": weights})


_LENGTH_OPCODES = {
    "BINUNICODE": "<I",
    "BINBYTES": "<I",
    "BINUNICODE8": "<Q",
    "BINBYTES8": "<Q",
    "BYTEARRAY8": "<Q",
    "SHORT_BINBYTES": "<B",
    "SHORT_BINUNICODE": "<B",
    "SHORT_BINSTRING": "<B",
    "BINSTRING": "<i",
    "FRAME": "<Q",
}


def _pickle_length(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A length-prefixed opcode's declared length set huge, zero, or off by one."""
    import pickletools

    found = [
        (op.name, pos)
        for op, _, pos in pickletools.genops(data)
        if op.name in _LENGTH_OPCODES and pos is not None
    ]
    name, pos = rng.choice(found)
    fmt = _LENGTH_OPCODES[name]
    size = struct.calcsize(fmt)
    (old,) = struct.unpack_from(fmt, data, pos + 1)
    limit = 2 ** (8 * size - (1 if fmt == "<i" else 0)) - 1
    value = min(rng.choice((limit, limit // 2, 0, old + 1, max(old - 1, 0), 2**31)), limit)
    out = bytearray(data)
    struct.pack_into(fmt, out, pos + 1, value)
    return bytes(out), f"{name} at {pos}: length {old} -> {value}"


FILE_TYPES: dict[str, Callable[[], FileType]] = {
    "checkpoint": CheckpointFiles,
    "timeline": TimelineFiles,
    "dataset": DatasetFiles,
    "pickle": PickleFiles,
}


# --------------------------------------------------------------------------- running


@dataclass
class Outcome:
    """What one case did.

    Attributes:
        kind, seed: the case; ``what`` its mutation.
        result: ``same``, ``changed``, ``refused`` or ``failure``.
        error: the exception's type and message (refused and failed cases).
        seconds: time to load or refuse.
        rss_growth_kb: the worker's peak resident size after the case, above its peak
            after warming up (kB).
    """

    kind: str
    seed: int
    what: str = ""
    result: str = "failure"
    error: str = ""
    seconds: float = 0.0
    rss_growth_kb: int = 0

    def replay(self) -> str:
        return f"qgf bench fuzz_files --type {self.kind} --seed {self.seed}"


def _peak_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _limit_address_space(headroom: int) -> None:
    """Cap this process's address space at its current size plus ``headroom``."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[0])
    limit = pages * os.sysconf("SC_PAGE_SIZE") + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run_case(ftype: FileType, seed: int, work: Path, baseline: dict[str, dict]) -> Outcome:
    """Mutate, write and load one case; classify what happened."""
    outcome = Outcome(ftype.name, seed)
    seed_name, mutated = ftype.mutate(seed)
    outcome.what = f"{seed_name}: {mutated.what}"
    case = work / f"case-{seed}"
    case.mkdir()
    try:
        for name, data in mutated.files.items():
            (case / name).write_bytes(data)
        start = time.perf_counter()
        try:
            summary = ftype.load(case, seed_name)
        except ftype.errors as e:
            outcome.seconds = time.perf_counter() - start
            outcome.error = f"{type(e).__name__}: {e}"[:400]
            outcome.result = "refused" if ftype.names_file(str(e), mutated) else "failure"
            if outcome.result == "failure":
                outcome.error = f"message names no file: {outcome.error}"
            return outcome
        except BaseException as e:  # noqa: BLE001 - every other ending is the finding
            outcome.seconds = time.perf_counter() - start
            tb = traceback.extract_tb(e.__traceback__)[-1]
            outcome.error = f"{type(e).__name__}: {e} (at {tb.filename}:{tb.lineno})"[:400]
            return outcome
        outcome.seconds = time.perf_counter() - start
        if same_numbers(summary, baseline[seed_name]):
            outcome.result = "same"
        elif mutated.sealed:
            outcome.error = "loaded to other numbers behind an intact checksum"
        else:
            outcome.result = "changed"
        return outcome
    finally:
        shutil.rmtree(case, ignore_errors=True)


def load_seeds(ftype: FileType, work: Path) -> dict[str, dict[str, Any]]:
    """The summary of every unmutated case of ``ftype`` (written under ``work``)."""
    out = {}
    for name, files in ftype.seed_cases().items():
        case = work / f"seed-{name}"
        case.mkdir()
        for file, data in files.items():
            (case / file).write_bytes(data)
        out[name] = ftype.load(case, name)
        shutil.rmtree(case)
    return out


def _worker(conn: Any, kind: str, root: str, headroom: int) -> None:
    """A worker process: set up ``kind``, then run the seeds it is sent until ``None``."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    ftype = FILE_TYPES[kind]()
    ftype.setup(Path(root) / kind)
    work = Path(tempfile.mkdtemp(prefix=f"fuzz-{kind}-"))
    try:
        baseline = load_seeds(ftype, work)
        for seed in range(3):  # warm up the paths a refusal takes before measuring
            run_case(ftype, seed, work, baseline)
        _limit_address_space(headroom)
        peak = _peak_rss_kb()
        conn.send("ready")
        while (seed := conn.recv()) is not None:
            outcome = run_case(ftype, seed, work, baseline)
            outcome.rss_growth_kb = max(0, _peak_rss_kb() - peak)
            conn.send(outcome)
    finally:
        shutil.rmtree(work, ignore_errors=True)


class Worker:
    """The parent's handle on a worker process: started when a case needs one, killed when
    it hangs or dies (the next case starts a new one)."""

    def __init__(self, kind: str, root: Path, headroom: int) -> None:
        self.args = (kind, str(root), headroom)
        self.process: Any = None

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(child, *self.args), daemon=True)
        self.process.start()
        child.close()
        if not self.conn.poll(600) or self.conn.recv() != "ready":
            raise RuntimeError(f"the {self.args[0]} fuzz worker did not start")

    def run(self, seed: int, guard: float) -> Outcome:
        if self.process is None:
            self._start()
        outcome = Outcome(self.args[0], seed)
        try:
            self.conn.send(seed)
            if self.conn.poll(guard):
                return self.conn.recv()
            outcome.error = f"no answer within {guard:g} s (hang)"
        except (EOFError, OSError):
            self.process.join(5)
            outcome.error = f"the worker died (exit code {self.process.exitcode})"
        self.process.kill()
        self.process.join()
        self.process = None
        return outcome

    def close(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.process = None


def make_seeds(root: Path, kinds: Iterable[str]) -> None:
    """Write the seed files of each kind under ``root/<kind>`` (skipped when there)."""
    for kind in kinds:
        where = root / kind
        if where.is_dir():
            continue
        tmp = root / f".{kind}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        FILE_TYPES[kind]().make_seeds(tmp)
        os.rename(tmp, where)


@dataclass
class Summary:
    """One row of the table: a file type's cases and how they ended."""

    kind: str
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, result: str) -> int:
        return sum(o.result == result for o in self.outcomes)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.result == "failure"]


def fuzz(
    kind: str,
    seeds: Iterable[int],
    root: Path,
    guard: float = HANG_GUARD_S,
    headroom: int = MEMORY_HEADROOM,
) -> Summary:
    """Run the cases ``seeds`` of file type ``kind`` (seed files under ``root``)."""
    make_seeds(root, [kind])
    worker = Worker(kind, root, headroom)
    summary = Summary(kind)
    try:
        for seed in seeds:
            summary.outcomes.append(worker.run(seed, guard))
    finally:
        worker.close()
    return summary


def table(summaries: list[Summary]) -> str:
    """The results as a fixed-width table."""
    head = (
        f"{'file type':<11}{'cases':>7}{'same':>7}{'changed':>9}{'refused':>9}"
        f"{'max s':>8}{'max RSS MiB':>13}{'failures':>10}"
    )
    lines = [head, "-" * len(head)]
    for s in summaries:
        secs = max((o.seconds for o in s.outcomes), default=0.0)
        rss = max((o.rss_growth_kb for o in s.outcomes), default=0) / 1024
        lines.append(
            f"{s.kind:<11}{len(s.outcomes):>7}{s.count('same'):>7}{s.count('changed'):>9}"
            f"{s.count('refused'):>9}{secs:>8.2f}{rss:>13.1f}{len(s.failures):>10}"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--type", choices=TYPES, action="append", help="file type(s) to fuzz (default: all)"
    )
    parser.add_argument("--cases", type=int, default=1000, help="cases per file type")
    parser.add_argument("--first", type=int, default=0, help="seed of the first case")
    parser.add_argument("--seed", type=int, action="append", help="replay these seeds only")
    parser.add_argument("--quick", action="store_true", help="50 cases per file type")
    parser.add_argument(
        "--seeds-dir", help="where the seed files are made and kept (default: a temporary one)"
    )


def run(args: argparse.Namespace) -> int:
    kinds = args.type or list(TYPES)
    cases = 50 if args.quick else args.cases
    seeds = args.seed if args.seed else range(args.first, args.first + cases)
    root = Path(args.seeds_dir or tempfile.mkdtemp(prefix="qgf-fuzz-seeds-"))
    summaries = []
    try:
        for kind in kinds:
            print(f"fuzzing {kind}: {len(seeds)} cases", file=sys.stderr, flush=True)
            summaries.append(fuzz(kind, seeds, root))
    finally:
        if not args.seeds_dir:
            shutil.rmtree(root, ignore_errors=True)
    print(table(summaries))
    failed = [o for s in summaries for o in s.failures]
    for o in failed:
        print(f"FAIL {o.replay()}: {o.what}\n    {o.error}")
    if args.seed:
        for s in summaries:
            for o in s.outcomes:
                print(f"{o.kind} seed {o.seed}: {o.result}: {o.what} {o.error}".rstrip())
    return 1 if failed else 0
