"""Save and open a viewer session's whole timeline as one file (``qgf view --open FILE``).

One file holds every branch of the episode with every step record (exact env snapshot,
observation, settings, both denoising traces, critic values, outcome), the active branch and
the step shown, the session's settings and episode counter, the identity of the checkpoint
(name, path, env, sha256 of its files) and the policy and critic weights themselves, so the
file reopens on a machine without the checkpoint, and random weights or custom networks
reopen too.

The container is safetensors: a little-endian u64 header length, a JSON header naming every
tensor (dtype, shape, byte range) with a string-to-string ``__metadata__`` table, then the
raw tensor bytes. Chosen because it cannot hold code or objects (only plain numeric arrays
and strings), the project already reads and writes it for checkpoints, and any language with
a JSON parser can read it. The timeline's structure is one JSON document in the metadata;
records, samples, traces, snapshots and settings are tables in it that refer to each other by
index, so an object shared in memory (a branch's records before its fork, the sample of an
action chunk) is stored once and shared again after opening. Arrays are stored once per
distinct content. A sha256 over the document and every tensor detects a modified or damaged
file; a truncated one fails the header's byte ranges. ``docs/TIMELINE_FORMAT.md`` documents
every key, dtype and shape, and the version policy.

Nothing here unpickles: safetensors parses its header as JSON and copies bytes into numpy
arrays, the document is read with ``json``, and networks are rebuilt from their recorded
architecture (``core.models`` classes only) and loaded with ``load_state_dict``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file as save_tensors
from torch import nn

from core.checkpoints import (
    REQUIRED_FILES,
    CheckpointConfig,
    CheckpointError,
    code_version,
    read_config,
)
from core.defaults import CHECKPOINT_ROOT
from core.envs import EnvSnapshot
from core.files import atomic_write, check_output_dir
from core.guidance import ESTIMATORS, DenoiseTrace
from core.models import Critic, VelocityField
from viewer.manifold_view import CandidateDistances
from viewer.session import (
    CUSTOM_LABEL,
    RANDOM_LABEL,
    Branch,
    Session,
    Settings,
    StepRecord,
    StepSample,
)

FORMAT = "qgf-timeline"
VERSION = 1
SUFFIX = ".timeline.safetensors"
TIMELINE_DIR = "timelines"

# What the format stores of each class, by field. Saving checks that these are all of the
# class's fields, so a field added to a record cannot be silently dropped from files.
_TRACE_TENSORS = (
    "actions",
    "a_t",
    "a_hat",
    "grad",
    "q_hat",
    "q_final",
    "chosen",
    "nonfinite",
    "weight",
)
_TRACE_SCALARS = ("estimator", "steps", "best_of", "clip")
_SAMPLE_ARRAYS = (
    "origin",
    "ee_denoise",
    "ee_final",
    "ee_ghost",
    "gripper",
    "q_denoise",
    "q_denoise_ghost",
)
_SAMPLE_REFS = ("guided", "unguided", "noise", "settings", "off_manifold", "distances")
_SAMPLE_SCALARS = ("executed", "seconds")
_DISTANCE_ARRAYS = ("distance", "off_manifold", "ghost_distance", "ghost_off_manifold")
_DISTANCE_SCALARS = ("threshold", "seconds")
_RECORD_SCALARS = ("index", "chunk_step", "v", "reward", "success", "terminated", "truncated")
_RECORD_REFS = ("snapshot", "obs", "settings", "sample", "action", "effector")
_SNAPSHOT_FIELDS = ("env_id", "physics", "arrays", "meta", "observation")
_BRANCH_FIELDS = ("id", "parent", "fork", "history", "current")
# Settings fields stored under another name: version 1 called ``pick_best`` ``best_of``.
_SETTINGS_KEYS = {"pick_best": "best_of"}
_SETTINGS_FIELDS = {v: k for k, v in _SETTINGS_KEYS.items()}
# Keys version 1 stores that are no longer settings (the weight slider's scale is a view
# preference now): written with this value for version-1 readers, ignored when read.
_SETTINGS_RETIRED = {"log_weight": True}
SCHEMA: dict[type, tuple[str, ...]] = {
    Settings: tuple(f.name for f in fields(Settings)),
    DenoiseTrace: _TRACE_TENSORS + _TRACE_SCALARS,
    StepSample: _SAMPLE_ARRAYS + _SAMPLE_REFS + _SAMPLE_SCALARS,
    CandidateDistances: _DISTANCE_ARRAYS + _DISTANCE_SCALARS,
    StepRecord: _RECORD_SCALARS + _RECORD_REFS,
    EnvSnapshot: _SNAPSHOT_FIELDS,
    Branch: _BRANCH_FIELDS,
}


class TimelineError(Exception):
    """A timeline file is not one, is damaged, modified or truncated, is of a format
    version this code does not read, or a session cannot be stored in one."""


@dataclass
class CheckpointIdentity:
    """Which checkpoint the timeline's networks came from.

    Attributes:
        name: the checkpoint directory's name, e.g. ``cube-single-task2``.
        path: where it was on the machine that saved the timeline.
        env: the env it was trained for.
        files: sha256 of each of its files, as its ``config.json`` records them.
        config: its whole ``CheckpointConfig``, as a dict.
    """

    name: str
    path: str
    env: str
    files: dict[str, str]
    config: dict[str, Any]


@dataclass
class Timeline:
    """A timeline as read from a file: everything ``Session.open_timeline`` installs.

    Attributes:
        settings: the session's settings when saved (``device`` is the one opened on).
        branches: every branch, records shared as they were (``Branch.history[:fork]`` are
            the parent's record objects; the records of a chunk share one ``StepSample``).
        active: index of the active branch.
        viewing: the step shown (index into the active branch's history), None when live.
        episode: the session's episode counter.
        steps_taken: env steps the session had taken over all its episodes.
        policy, critic: the embedded networks, on ``settings.device``, in eval mode.
        label: what the policy was called when saved (checkpoint name, "random weights",
            "custom networks").
        checkpoint: the checkpoint's identity, None for random weights or custom networks.
        checkpoint_path: a checkpoint on this machine with the same weights and dataset
            sample (by sha256), else None.
        config: that checkpoint's config; else the recorded one (None without a checkpoint).
        view: the viewer's view choices when saved (e.g. the landscape's slice and layers);
            empty for files that have none.
        notes: what differs here from where it was saved (a checkpoint missing or with other
            files, another device, an unregistered estimator), for the user to read.
        created: UTC time of saving; code_version: the qgf version that saved it.
        path: the file read.
    """

    settings: Settings
    branches: list[Branch]
    active: int
    viewing: int | None
    episode: int
    steps_taken: int
    policy: VelocityField
    critic: Critic
    label: str
    checkpoint: CheckpointIdentity | None
    checkpoint_path: Path | None
    config: CheckpointConfig | None
    notes: list[str] = field(default_factory=list)
    created: str = ""
    code_version: str = ""
    path: Path | None = None
    view: dict[str, Any] = field(default_factory=dict)

    @property
    def installed_label(self) -> str:
        """The policy's label once opened: the checkpoint's name when it is here with the
        same files, else the saved label, marked when the weights came from the file alone."""
        if self.checkpoint_path is not None or self.label in (RANDOM_LABEL, CUSTOM_LABEL):
            return self.label
        return f"{self.label} (weights from the timeline)"


def default_path(env_name: str, directory: str | Path = TIMELINE_DIR) -> Path:
    """``<directory>/<env>-<YYYYmmdd-HHMMSS>.timeline.safetensors`` relative to the working
    directory, with ``-2``, ``-3``, ... added when that name is taken."""
    stem = f"{env_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = Path(directory) / f"{stem}{SUFFIX}"
    n = 2
    while path.exists():
        path = Path(directory) / f"{stem}-{n}{SUFFIX}"
        n += 1
    return path


# --------------------------------------------------------------------------------- saving


def check_schema() -> None:
    """Raise ``TimelineError`` if a stored class has a field the format does not store."""
    for cls, stored in SCHEMA.items():
        have = {f.name for f in fields(cls)}
        if have != set(stored):
            raise TimelineError(
                f"{cls.__name__} has fields {sorted(have - set(stored))} that timeline format "
                f"{VERSION} does not store (and lacks {sorted(set(stored) - have)}): update "
                "viewer/timeline_file.py and docs/TIMELINE_FORMAT.md"
            )


def _scalar(value: Any) -> Any:
    """A JSON value for a recorded scalar (numpy scalars become Python ones)."""
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TimelineError(f"cannot store a {type(value).__name__} as a scalar")


class _Writer:
    """Collects the document's tables and the tensors, each stored once."""

    def __init__(self) -> None:
        self.tensors: dict[str, np.ndarray] = {}
        self._by_content: dict[bytes, int] = {}
        self._ids: dict[str, dict[int, int]] = {}
        self.tables: dict[str, list[Any]] = {
            k: [] for k in ("settings", "snapshots", "traces", "samples", "records")
        }
        self._settings: dict[Settings, int] = {}

    def array(self, value: np.ndarray | torch.Tensor, what: str) -> int:
        """Store an array (or tensor) unless one of the same dtype, shape and bytes is stored
        already; returns the index of the tensor that holds it (its name in the file is that
        index in decimal). ``what`` names it in errors."""
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            if value.dtype == torch.bfloat16:
                raise TimelineError(f"{what}: bfloat16 tensors cannot be stored")
            value = value.numpy()
        a = np.asarray(value)
        if a.dtype.hasobject or a.dtype.kind not in "biuf":
            raise TimelineError(f"{what}: arrays of dtype {a.dtype} cannot be stored")
        if not a.flags.c_contiguous:
            a = a.copy(order="C")
        key = hashlib.blake2b(
            f"{a.dtype.str}|{a.shape}|".encode() + a.tobytes(), digest_size=20
        ).digest()
        stored = self._by_content.get(key)
        if stored is None:
            stored = self._by_content[key] = len(self.tensors)
            self.tensors[str(stored)] = a
        return stored

    def optional_array(self, value: np.ndarray | None, what: str) -> int | None:
        return None if value is None else self.array(value, what)

    def _index(self, table: str, obj: Any, encode: Callable[[int], Any]) -> int:
        ids = self._ids.setdefault(table, {})
        i = ids.get(id(obj))
        if i is None:
            i = ids[id(obj)] = len(self.tables[table])
            self.tables[table].append(None)  # reserve the slot: encode may add to other tables
            self.tables[table][i] = encode(i)
        return i

    def settings(self, s: Settings) -> int:
        # By value: settings are frozen, and equal ones are interchangeable.
        if s not in self._settings:
            self._settings[s] = len(self.tables["settings"])
            stored = {_SETTINGS_KEYS.get(k, k): _scalar(getattr(s, k)) for k in SCHEMA[Settings]}
            self.tables["settings"].append({**stored, **_SETTINGS_RETIRED})
        return self._settings[s]

    def snapshot(self, snap: EnvSnapshot) -> int:
        def encode(i: int) -> dict[str, Any]:
            p = f"snapshots/{i}"
            return {
                "env_id": snap.env_id,
                "physics": self.array(snap.physics, f"{p}/physics"),
                "arrays": {k: self.array(v, f"{p}/arrays/{k}") for k, v in snap.arrays.items()},
                "meta": snap.meta,
                "observation": self.optional_array(snap.observation, f"{p}/observation"),
            }

        return self._index("snapshots", snap, encode)

    def trace(self, trace: DenoiseTrace) -> int:
        def encode(i: int) -> dict[str, Any]:
            out = {k: self.array(getattr(trace, k), f"traces/{i}/{k}") for k in _TRACE_TENSORS}
            return out | {k: _scalar(getattr(trace, k)) for k in _TRACE_SCALARS}

        return self._index("traces", trace, encode)

    def sample(self, sample: StepSample) -> int:
        def encode(i: int) -> dict[str, Any]:
            p = f"samples/{i}"
            d = sample.distances
            distances = None
            if d is not None:
                distances = {
                    k: self.array(getattr(d, k), f"{p}/distances/{k}") for k in _DISTANCE_ARRAYS
                }
                distances |= {k: _scalar(getattr(d, k)) for k in _DISTANCE_SCALARS}
            out = {k: self.array(getattr(sample, k), f"{p}/{k}") for k in _SAMPLE_ARRAYS}
            return out | {
                "guided": self.trace(sample.guided),
                "unguided": self.trace(sample.unguided),
                "noise": self.array(sample.noise, f"{p}/noise"),
                "settings": self.settings(sample.settings),
                "off_manifold": self.optional_array(sample.off_manifold, f"{p}/off_manifold"),
                "distances": distances,
                "executed": _scalar(sample.executed),
                "seconds": _scalar(sample.seconds),
            }

        return self._index("samples", sample, encode)

    def record(self, rec: StepRecord) -> int:
        def encode(i: int) -> dict[str, Any]:
            p = f"records/{i}"
            out = {k: _scalar(getattr(rec, k)) for k in _RECORD_SCALARS}
            return out | {
                "snapshot": self.snapshot(rec.snapshot),
                "obs": self.array(rec.obs, f"{p}/obs"),
                "settings": self.settings(rec.settings),
                "sample": self.sample(rec.sample),
                "action": self.optional_array(rec.action, f"{p}/action"),
                "effector": self.optional_array(rec.effector, f"{p}/effector"),
            }

        return self._index("records", rec, encode)


_NETWORKS: dict[str, type[VelocityField] | type[Critic]] = {
    "policy": VelocityField,
    "critic": Critic,
}


def _network(role: str, net: nn.Module, writer: _Writer) -> dict[str, Any]:
    """The document entry of one network (architecture, dtype, tensor names) and its
    weights into ``writer``. Only ``core.models`` classes can be rebuilt without running
    code from the file, so a subclass or another module is refused."""
    cls = _NETWORKS[role]
    if type(net) is not cls:
        raise TimelineError(
            f"the {role} is a {type(net).__module__}.{type(net).__name__}; a timeline embeds "
            f"core.models.{cls.__name__} networks only"
        )
    architecture = net.architecture()
    state = net.state_dict()
    # The rebuilt network must have exactly these tensors (e.g. a value network of other
    # widths than the Q heads cannot be described by the constructor's arguments).
    with torch.device("meta"):
        rebuilt = cls.from_architecture(architecture).state_dict()
    shapes = {k: tuple(t.shape) for k, t in state.items()}
    if shapes != {k: tuple(t.shape) for k, t in rebuilt.items()}:
        raise TimelineError(
            f"the {role}'s layers are not those of core.models.{cls.__name__}(**{architecture})"
        )
    dtypes = {t.dtype for t in state.values()}
    if len(dtypes) != 1:
        raise TimelineError(f"the {role} mixes dtypes {sorted(map(str, dtypes))}")
    tensors = {k: writer.array(t, f"networks/{role}/{k}") for k, t in state.items()}
    return {
        "class": cls.__name__,
        "architecture": architecture,
        "dtype": str(dtypes.pop()).removeprefix("torch."),
        "tensors": tensors,
    }


def _checkpoint_identity(session: Session) -> dict[str, Any] | None:
    if session.config is None or session.checkpoint_path is None:
        return None
    config = session.config
    return {
        "name": session.checkpoint_path.name,
        "path": str(session.checkpoint_path),
        "env": config.env,
        "files": dict(config.files),
        "config": asdict(config),
    }


def _digest(document: str, tensors: Mapping[str, np.ndarray]) -> str:
    """Hex sha256 over the format, the document and every tensor (name, dtype, shape,
    bytes, in sorted name order)."""
    h = hashlib.sha256(f"{FORMAT}|{VERSION}|".encode())
    h.update(document.encode())
    for name in sorted(tensors):
        a = tensors[name]
        h.update(f"|{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_timeline(
    session: Session, path: str | os.PathLike, view: dict[str, Any] | None = None
) -> Path:
    """Write ``session``'s whole timeline to ``path`` (one file, atomically), with ``view``,
    the viewer's view choices (JSON; e.g. the landscape's slice and layers), when given.

    Call it on the thread that owns the session (in the viewer: the worker), so that no
    step lands half-way through. Returns the path.

    Raises:
        TimelineError: the session holds something the format cannot store (networks
            other than ``core.models`` ones, a record with a field the format lacks).
    """
    check_schema()
    path = Path(path)
    check_output_dir(path.parent)  # a read-only or full disk fails before the encoding
    w = _Writer()
    branches = [
        {
            "id": b.id,
            "parent": b.parent,
            "fork": b.fork,
            "history": [w.record(r) for r in b.history],
            "current": w.record(b.current),
        }
        for b in session.branches
    ]
    networks = {role: _network(role, getattr(session, role), w) for role in _NETWORKS}
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code_version": code_version(),
        "session": {
            "settings": w.settings(session.settings),
            "active": session.active,
            "viewing": session.viewing,
            "episode": session.episode,
            "steps_taken": session.steps_taken,
            "label": session.label,
        },
        "checkpoint": _checkpoint_identity(session),
        "view": dict(view or {}),
        "networks": networks,
        **w.tables,
        "branches": branches,
    }
    document = json.dumps(doc, separators=(",", ":"))
    metadata = {
        "format": FORMAT,
        "version": str(VERSION),
        "document": document,
        "sha256": _digest(document, w.tensors),
    }
    atomic_write(path, lambda tmp: save_tensors(w.tensors, str(tmp), metadata=metadata))
    return path


# --------------------------------------------------------------------------------- opening


# What safetensors' header errors mean for a file that should be a timeline, by the reason
# safetensors gives ("Error while deserializing header: <reason>"). It checks the header's
# length, its JSON, every tensor entry, and that the byte ranges cover the file exactly.
_SAFETENSORS_REASONS = (
    ("header too small", "is not a qgf timeline, or is truncated: too short for a header"),
    (
        "header too large",
        "is not a qgf timeline: its first 8 bytes claim a header larger than safetensors allows",
    ),
    (
        "invalid header length",
        "is not a qgf timeline, or is truncated: its header runs past the end",
    ),
    ("incomplete metadata", "is truncated or damaged: its size is not what its header describes"),
    (
        "invalid json",
        "is damaged or not a qgf timeline: its header is not JSON, or a tensor entry of its "
        "header is malformed",
    ),
    ("invalid utf-8", "is damaged or not a qgf timeline: its header is not UTF-8 text"),
)


def _read_safetensors(path: Path) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """The ``__metadata__`` and the tensors of the timeline file ``path``, read by safetensors;
    the tensors only once the metadata is a timeline's (``_check_format``). Safetensors'
    errors become ``TimelineError`` saying what they mean for a timeline."""
    size = path.stat().st_size  # OSError when the file cannot be read
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            _check_format(meta, str(path))
            try:
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
            except (SafetensorError, TypeError, ValueError) as e:  # e.g. a dtype numpy lacks
                raise TimelineError(f"{path} is damaged: its tensors cannot be read ({e})") from e
            return meta, tensors
    except SafetensorError as e:
        reason = str(e).partition("header: ")[2] or str(e)
        what = next(
            (text for key, text in _SAFETENSORS_REASONS if reason.lower().startswith(key)),
            "is damaged or not a qgf timeline",
        )
        raise TimelineError(f"{path} {what} ({size} bytes; safetensors: {reason})") from e


def _check_format(meta: Mapping[str, str], name: str) -> None:
    """That the metadata is a qgf timeline's, in a version this code reads."""
    found = meta.get("format")
    if found != FORMAT:
        raise TimelineError(
            f"{name} is not a qgf timeline (format {found!r}, expected {FORMAT!r})"
            + ("; it looks like a checkpoint's weights file" if found is None else "")
        )
    version = meta.get("version")
    if not (isinstance(version, str) and version.isdigit()):
        raise TimelineError(f"{name}: unknown timeline format version {version!r}")
    if int(version) > VERSION:
        raise TimelineError(
            f"{name} was written by a newer qgf (timeline format version {version}); this qgf "
            f"reads version {VERSION}: update qgf to open it"
        )
    if int(version) != VERSION:
        raise TimelineError(
            f"{name}: timeline format version {version} is not one this qgf reads ({VERSION})"
        )


class _Reader:
    """Rebuilds the objects of a document; shared objects come out shared."""

    def __init__(
        self, doc: dict[str, Any], tensors: dict[str, np.ndarray], device: str, moved: bool
    ) -> None:
        self.doc, self.tensors, self.device = doc, tensors, device
        self.moved = moved  # opened on another device than the session's when saved
        self._used: set[str] = set()
        self._built: dict[str, dict[int, Any]] = {}

    def array(self, ref: int) -> np.ndarray:
        """Stored array ``ref``: the loaded one at its first use, a copy after, so no two
        references share memory that did not share it when saved."""
        name = str(ref)
        if not isinstance(ref, int) or name not in self.tensors:
            raise TimelineError(f"a reference to tensor {ref!r}: there are {len(self.tensors)}")
        a = self.tensors[name]
        if name in self._used:
            return a.copy()
        self._used.add(name)
        return a

    def optional_array(self, ref: int | None) -> np.ndarray | None:
        return None if ref is None else self.array(ref)

    def tensor(self, ref: int) -> torch.Tensor:
        return torch.from_numpy(self.array(ref))

    def _get(self, table: str, i: int, build: Callable[[dict[str, Any]], Any]) -> Any:
        built = self._built.setdefault(table, {})
        if i not in built:
            entries = self.doc[table]
            if not (isinstance(i, int) and 0 <= i < len(entries)):
                raise TimelineError(f"a reference to {table}[{i}]: there are {len(entries)}")
            built[i] = build(entries[i])
        return built[i]

    def settings(self, i: int) -> Settings:
        def build(d: dict[str, Any]) -> Settings:
            kept = {k: v for k, v in d.items() if k not in _SETTINGS_RETIRED}
            settings = Settings(**{_SETTINGS_FIELDS.get(k, k): v for k, v in kept.items()})
            # The device is where the networks are now, for every record alike.
            return replace(settings, device=self.device) if self.moved else settings

        return self._get("settings", i, build)

    def snapshot(self, i: int) -> EnvSnapshot:
        def build(d: dict[str, Any]) -> EnvSnapshot:
            return EnvSnapshot(
                env_id=d["env_id"],
                physics=self.array(d["physics"]),
                arrays={k: self.array(v) for k, v in d["arrays"].items()},
                meta=d["meta"],
                observation=self.optional_array(d["observation"]),
            )

        return self._get("snapshots", i, build)

    def trace(self, i: int) -> DenoiseTrace:
        def build(d: dict[str, Any]) -> DenoiseTrace:
            tensors = {k: self.tensor(d[k]) for k in _TRACE_TENSORS}
            return DenoiseTrace(**tensors, **{k: d[k] for k in _TRACE_SCALARS})

        return self._get("traces", i, build)

    def sample(self, i: int) -> StepSample:
        def build(d: dict[str, Any]) -> StepSample:
            dist = d["distances"]
            if dist is not None:
                dist = CandidateDistances(
                    **{k: self.array(dist[k]) for k in _DISTANCE_ARRAYS},
                    **{k: dist[k] for k in _DISTANCE_SCALARS},
                )
            return StepSample(
                guided=self.trace(d["guided"]),
                unguided=self.trace(d["unguided"]),
                noise=self.tensor(d["noise"]),
                settings=self.settings(d["settings"]),
                off_manifold=self.optional_array(d["off_manifold"]),
                distances=dist,
                **{k: self.array(d[k]) for k in _SAMPLE_ARRAYS},
                **{k: d[k] for k in _SAMPLE_SCALARS},
            )

        return self._get("samples", i, build)

    def record(self, i: int) -> StepRecord:
        def build(d: dict[str, Any]) -> StepRecord:
            return StepRecord(
                snapshot=self.snapshot(d["snapshot"]),
                obs=self.array(d["obs"]),
                settings=self.settings(d["settings"]),
                sample=self.sample(d["sample"]),
                action=self.optional_array(d["action"]),
                effector=self.optional_array(d["effector"]),
                **{k: d[k] for k in _RECORD_SCALARS},
            )

        return self._get("records", i, build)

    def branches(self) -> list[Branch]:
        out: list[Branch] = []
        for i, d in enumerate(self.doc["branches"]):
            b = Branch(
                id=d["id"],
                parent=d["parent"],
                fork=d["fork"],
                history=[self.record(r) for r in d["history"]],
                current=self.record(d["current"]),
            )
            if b.id != i or (b.parent is None) != (i == 0):
                raise TimelineError(f"branch {i} has id {b.id} and parent {b.parent}")
            if not 0 <= b.fork <= len(b.history):
                raise TimelineError(f"branch {i} forks at {b.fork} of {len(b.history)} steps")
            if b.parent is not None:
                if not 0 <= b.parent < i:
                    raise TimelineError(f"branch {i} has parent {b.parent}, not an earlier one")
                shared = out[b.parent].history[: b.fork]
                if len(shared) != b.fork or any(
                    x is not y for x, y in zip(shared, b.history[: b.fork], strict=False)
                ):
                    raise TimelineError(
                        f"branch {i} does not share its parent's first {b.fork} steps"
                    )
            out.append(b)
        if not out:
            raise TimelineError("the timeline has no branch")
        return out

    def network(self, role: str) -> nn.Module:
        d = self.doc["networks"][role]
        cls = _NETWORKS[role]
        if d["class"] != cls.__name__:
            raise TimelineError(f"the {role} is a {d['class']!r}, expected {cls.__name__!r}")
        dtype = getattr(torch, d["dtype"], None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TimelineError(f"the {role} has an unknown dtype {d['dtype']!r}")
        # Built on the meta device and then given memory: no initialisation is computed (the
        # stored weights replace it) and torch's global random state is left as it was.
        try:
            with torch.device("meta"):
                net = cls.from_architecture(d["architecture"])
        except (TypeError, ValueError, RuntimeError) as e:
            raise TimelineError(f"the {role}'s architecture cannot be built: {e}") from e
        state = {k: torch.from_numpy(self.array(v)) for k, v in d["tensors"].items()}
        # Checked on the meta device, before the network is given memory: the stored weights
        # are as big as the file, the architecture's widths could ask for any size.
        want = {k: tuple(t.shape) for k, t in net.state_dict().items()}
        if want != {k: tuple(t.shape) for k, t in state.items()}:
            raise TimelineError(
                f"the {role}'s weights do not fit its architecture {d['architecture']}"
            )
        net = net.to_empty(device="cpu").to(dtype)
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise TimelineError(f"the {role}'s weights do not fit its architecture: {e}") from e
        return net.to(self.device).eval().requires_grad_(False)


def _pick_device(saved: str, device: str | None, notes: list[str]) -> str:
    if device is None:
        device = "cpu" if saved.startswith("cuda") and not torch.cuda.is_available() else saved
    if device != saved:
        notes.append(f"saved with the networks on {saved}, opened on {device}")
    return device


def _local_checkpoint(
    identity: CheckpointIdentity, root: Path, notes: list[str]
) -> tuple[Path | None, CheckpointConfig | None]:
    """The checkpoint on this machine with the recorded weights and dataset sample (at the
    recorded path, else ``root/<name>``), or None, with a note saying why not."""
    places = list(dict.fromkeys([Path(identity.path), root / identity.name]))
    for place in places:
        if not place.is_dir():
            continue
        try:
            local = read_config(place)
        except CheckpointError as e:
            notes.append(f"checkpoint {identity.name} at {place} is unusable ({e})")
            continue
        differ = [
            f"{f} {local.files.get(f, 'missing')[:12]} here, {identity.files.get(f, '?')[:12]} "
            "in the timeline"
            for f in REQUIRED_FILES
            if local.files.get(f) != identity.files.get(f)
        ]
        if not differ:
            return place.resolve(), local
        notes.append(
            f"checkpoint {identity.name} at {place} differs from the one this timeline was "
            f"recorded with (sha256 of {'; '.join(differ)}): the timeline's own weights are used"
        )
        return None, CheckpointConfig.from_dict(identity.config)
    notes.append(
        f"checkpoint {identity.name} is not on this machine (looked in "
        f"{', '.join(map(str, places))}): the timeline's own weights are used; new steps have "
        "no distance to the data"
    )
    return None, CheckpointConfig.from_dict(identity.config)


def read_timeline(
    path: str | os.PathLike,
    device: str | None = None,
    checkpoint_root: str | os.PathLike = CHECKPOINT_ROOT,
) -> Timeline:
    """Read and check a timeline file; nothing in it runs and nothing is unpickled.

    Args:
        path: the file.
        device: torch device for the networks; None: the one it was saved with, or the
            CPU when that is a GPU this machine lacks.
        checkpoint_root: where else to look for the recorded checkpoint by name.

    Raises:
        TimelineError: not a timeline, damaged, modified or truncated (sha256 and byte
            ranges), a format version this code does not read, or a malformed document.
        OSError: the file cannot be read.
    """
    path = Path(path)
    meta, tensors = _read_safetensors(path)
    document = meta.get("document")
    if not isinstance(document, str) or _digest(document, tensors) != meta.get("sha256"):
        raise TimelineError(
            f"{path} is damaged or was modified: its content does not match its sha256"
        )
    try:
        return _timeline(json.loads(document), tensors, path, device, Path(checkpoint_root))
    except TimelineError as e:
        raise TimelineError(f"{path}: {e}") from e
    except RecursionError as e:
        raise TimelineError(f"{path}: malformed timeline document (it nests too deeply)") from e
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, CheckpointError) as e:
        raise TimelineError(f"{path}: malformed timeline document ({type(e).__name__}: {e})") from e


def _timeline(
    doc: dict[str, Any],
    tensors: dict[str, np.ndarray],
    path: Path,
    device: str | None,
    root: Path,
) -> Timeline:
    notes: list[str] = []
    s = doc["session"]
    saved = doc["settings"][s["settings"]]["device"]
    opened_on = _pick_device(saved, device, notes)
    reader = _Reader(doc, tensors, opened_on, moved=opened_on != saved)
    settings = reader.settings(s["settings"])
    branches = reader.branches()
    active, viewing = s["active"], s["viewing"]
    if not 0 <= active < len(branches):
        raise TimelineError(f"active branch {active} of {len(branches)}")
    if viewing is not None and not 0 <= viewing < len(branches[active].history):
        raise TimelineError(f"shown step {viewing} of {len(branches[active].history)}")
    identity = None
    checkpoint_path = config = None
    if doc["checkpoint"] is not None:
        identity = CheckpointIdentity(**doc["checkpoint"])
        checkpoint_path, config = _local_checkpoint(identity, root, notes)
    unknown = sorted({e for e in (x["estimator"] for x in doc["settings"]) if e not in ESTIMATORS})
    if unknown:
        notes.append(
            f"estimator(s) {', '.join(unknown)} are not registered here: recorded steps show, "
            "new samples with them fail until they are"
        )
    return Timeline(
        settings=settings,
        branches=branches,
        active=active,
        viewing=viewing,
        episode=s["episode"],
        steps_taken=s["steps_taken"],
        policy=reader.network("policy"),
        critic=reader.network("critic"),
        label=s["label"],
        checkpoint=identity,
        checkpoint_path=checkpoint_path,
        config=config,
        notes=notes,
        created=doc.get("created", ""),
        code_version=doc.get("code_version", ""),
        view=doc["view"] if isinstance(doc.get("view"), dict) else {},
        path=path,
    )


def open_timeline(
    session: Session, source: str | os.PathLike | Timeline, device: str | None = None
) -> Timeline:
    """Read ``source`` (unless it is a ``Timeline`` already) and install it in ``session``
    (``Session.open_timeline``; on error the session is unchanged).

    Returns the timeline read; its ``notes`` say what differs from where it was saved
    (e.g. the checkpoint is missing here or has other files: its embedded weights are used
    either way).
    """
    timeline = source if isinstance(source, Timeline) else read_timeline(source, device)
    session.open_timeline(timeline)
    return timeline


def open_session(source: str | os.PathLike | Timeline, device: str | None = None) -> Session:
    """A new session on a saved timeline (``open_timeline``; notes are dropped: read the
    file with ``read_timeline`` first to show them)."""
    timeline = source if isinstance(source, Timeline) else read_timeline(source, device)
    s = timeline.settings
    session = Session(settings=Settings(env_name=s.env_name, device=s.device, seed=s.seed))
    session.open_timeline(timeline)
    return session
