"""Checkpoints: a directory of safetensors weights and JSON, never pickle.

Layout of a checkpoint directory::

    config.json              CheckpointConfig: architecture, env, dims, data fingerprint,
                             training steps, code version, provenance of an imported agent,
                             and the sha256 of every file below
    weights.safetensors      policy.*, critic.*, target_critic.*, and onestep.* when the
                             agent has a one-step policy (float32)
    dataset_sample.safetensors  observations [N, O], actions [N, A]: a compact sample of the
                             training data for nearest-neighbour queries
    optimizer.safetensors    (optional) Adam state, so training can resume
    train_log.csv, eval.json, eval.png   (optional) logs and evaluation results, not hashed

Loading validates before it builds anything: a missing part, a file whose sha256 differs
from the one recorded (truncated or tampered), a file that is not safetensors, a checkpoint
for another env, or tensors whose shapes do not match the recorded architecture all raise
``CheckpointError`` naming the problem. Pickle-based files (.pt, .pkl, ...) are refused by
name and never opened, so nothing in them can run.

Format versions: 1 had one architecture (this project's MLP recipe); 2 adds the switches
that imported agents need (``MLPStyle``, raw time, separate critic widths, no V network, a
one-step policy, the Q aggregation, provenance). A version-1 config reads as version 2 with
those switches at their defaults, which is what version 1 meant.

Saving is atomic: everything is written to a temporary sibling directory, which is then
renamed onto the final name; an existing checkpoint is moved aside first and deleted only
after the new one is in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy_file
from safetensors.numpy import save_file as save_numpy_file
from safetensors.torch import load_file as load_torch_file
from safetensors.torch import save_file as save_torch_file

from core import __version__
from core.files import check_output_dir, read_json_object, write_failure
from core.models import (
    ACTIVATIONS,
    AGGREGATIONS,
    NORM_POSITIONS,
    TIME_EMBEDDINGS,
    Critic,
    MLPStyle,
    OneStepPolicy,
    VelocityField,
)

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
SAMPLE_FILE = "dataset_sample.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
EVAL_FILE = "eval.json"
REQUIRED_FILES = (WEIGHTS_FILE, SAMPLE_FILE)
# Formats that unpickle on load: their presence is an error, and they are never opened.
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib", ".npy")
WEIGHT_GROUPS = ("policy", "critic", "target_critic")
ONESTEP_GROUP = "onestep"
_MAX_HEADER = 100 * 1024 * 1024


class CheckpointError(Exception):
    """A checkpoint is missing, incomplete, tampered with, unsafe, or for something else."""


class NoDatasetSample(CheckpointError):
    """The checkpoint has an empty dataset sample (an agent imported without its data), so
    distances to the data cannot be measured."""


@dataclass
class CheckpointConfig:
    """What a checkpoint is: enough to rebuild its networks and check they fit an env.

    Attributes:
        env: full singletask env name, e.g. ``cube-single-play-singletask-task2-v0``.
        dataset: dataset name, e.g. ``cube-single-play-v0``.
        task: task id within the env (``2`` for ``...-task2-v0``), or None.
        obs_dim: O, size of one observation.
        action_dim: size of one env action (5 for manipulation).
        horizon: H, actions per chunk; the policy and Q see ``H * action_dim`` dims.
        hidden: hidden widths of the policy (and of every MLP unless ``critic_hidden``).
        layer_norm, time_dim: architecture switches of ``core.models``; ``layer_norm`` is the
            policy's, and the critic's unless ``critic_layer_norm`` is set.
        q_ensemble: number of Q heads.
        flow_steps: Euler steps T the policy was trained for.
        training_steps: gradient steps taken.
        data_fingerprint: sha256 of the training arrays (and of the file when known), sizes.
        train: every training hyperparameter, as ``TrainConfig`` fields.
        code_version: package version and git commit of the code that trained it.
        wall_time_s: training wall time so far.
        files: sha256 of every hashed file in the directory.
        created: UTC time of saving.
        format_version: layout version of the directory.
        activation, norm_position, layer_norm_eps: the ``MLPStyle`` of every network.
        policy_norm_last_hidden: whether the policy's last hidden layer has a LayerNorm.
        time_embedding: ``sinusoidal`` or ``raw`` flow time (``time_dim`` 1).
        critic_hidden, critic_layer_norm: the Q heads' and V's widths and LayerNorm, when
            they differ from the policy's.
        value_network: whether the critic has a V network.
        onestep_policy: whether ``onestep.*`` weights hold a ``OneStepPolicy``.
        q_aggregate: how Q heads are combined for guidance and selection (min or mean).
        source: for an imported agent, where it came from (format, file and its sha256,
            training step, inferred architecture, the flags that set what shapes cannot).
    """

    env: str
    dataset: str
    task: int | None
    obs_dim: int
    action_dim: int
    horizon: int
    hidden: list[int]
    layer_norm: bool
    time_dim: int
    q_ensemble: int
    flow_steps: int
    training_steps: int
    data_fingerprint: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)
    code_version: str = ""
    wall_time_s: float = 0.0
    files: dict[str, str] = field(default_factory=dict)
    created: str = ""
    format_version: int = FORMAT_VERSION
    activation: str = "gelu"
    norm_position: str = "after_activation"
    layer_norm_eps: float = 1e-5
    policy_norm_last_hidden: bool = True
    time_embedding: str = "sinusoidal"
    critic_hidden: list[int] | None = None
    critic_layer_norm: bool | None = None
    value_network: bool = True
    onestep_policy: bool = False
    q_aggregate: str = "min"
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def chunk_dim(self) -> int:
        """``H * action_dim``: the flat action the policy samples and Q takes."""
        return self.horizon * self.action_dim

    @property
    def style(self) -> MLPStyle:
        return MLPStyle(self.activation, self.norm_position, self.layer_norm_eps)

    def build_policy(self) -> VelocityField:
        return VelocityField(
            self.obs_dim,
            self.action_dim,
            hidden=tuple(self.hidden),
            horizon=self.horizon,
            layer_norm=self.layer_norm,
            time_dim=self.time_dim,
            time_embedding=self.time_embedding,
            style=self.style,
            norm_last_hidden=self.policy_norm_last_hidden,
        )

    def build_critic(self) -> Critic:
        return Critic(
            self.obs_dim,
            self.chunk_dim,
            hidden=tuple(self.critic_hidden or self.hidden),
            ensemble=self.q_ensemble,
            aggregate=self.q_aggregate,
            layer_norm=self.layer_norm
            if self.critic_layer_norm is None
            else self.critic_layer_norm,
            style=self.style,
            value=self.value_network,
        )

    def build_onestep(self) -> OneStepPolicy | None:
        """The one-step policy's network, or None when the agent has none."""
        if not self.onestep_policy:
            return None
        return OneStepPolicy(
            self.obs_dim,
            self.action_dim,
            hidden=tuple(self.hidden),
            horizon=self.horizon,
            layer_norm=self.layer_norm,
            style=self.style,
            norm_last_hidden=self.policy_norm_last_hidden,
        )

    def weight_groups(self) -> tuple[str, ...]:
        """The tensor groups of ``weights.safetensors``."""
        return WEIGHT_GROUPS + ((ONESTEP_GROUP,) if self.onestep_policy else ())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckpointConfig:
        """Build and validate a config from its JSON; raises ``CheckpointError`` naming the
        first missing or malformed key."""
        names = {f.name for f in fields(cls)}
        required = {
            f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
        }
        missing = sorted(required - set(data))
        if missing:
            raise CheckpointError(f"{CONFIG_FILE} lacks required keys: {', '.join(missing)}")
        config = cls(**{k: v for k, v in data.items() if k in names})
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ``CheckpointError`` naming the first field whose value cannot be built."""
        choices = {
            "activation": ACTIVATIONS,
            "norm_position": NORM_POSITIONS,
            "time_embedding": TIME_EMBEDDINGS,
            "q_aggregate": AGGREGATIONS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise CheckpointError(
                    f"{CONFIG_FILE}: {name} is {getattr(self, name)!r}, expected one of {allowed}"
                )
        for name in ("obs_dim", "action_dim", "horizon", "q_ensemble", "flow_steps", "time_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise CheckpointError(
                    f"{CONFIG_FILE}: {name} must be an integer >= 1, got {value!r}"
                )
        for name in ("hidden", "critic_hidden"):
            widths = getattr(self, name)
            if widths is None and name == "critic_hidden":
                continue
            if not isinstance(widths, list) or not all(
                isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in widths
            ):
                raise CheckpointError(
                    f"{CONFIG_FILE}: {name} must be a list of widths >= 1, got {widths!r}"
                )
        eps = self.layer_norm_eps
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
            raise CheckpointError(f"{CONFIG_FILE}: layer_norm_eps must be > 0")
        if self.time_embedding == "raw" and self.time_dim != 1:
            raise CheckpointError(f"{CONFIG_FILE}: raw time needs time_dim 1, got {self.time_dim}")
        for name, kinds in _FIELD_TYPES.items():
            value = getattr(self, name)
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                wanted = " or ".join(_JSON_NAMES[k] for k in kinds)
                raise CheckpointError(
                    f"{CONFIG_FILE}: {name} must be {wanted}, got {type(value).__name__}"
                )
        for name, digest in self.files.items():
            if Path(name).name != name or name in ("", ".", ".."):
                raise CheckpointError(f"{CONFIG_FILE}: files names {name!r}, not a plain file name")
            if not isinstance(digest, str):
                raise CheckpointError(f"{CONFIG_FILE}: the sha256 of {name} is not a string")


# The JSON type of every config field not checked by value in ``validate`` (a wrong type
# there fails later, e.g. ``files`` of numbers when the hashes are compared).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "env": (str,),
    "dataset": (str,),
    "task": (int, type(None)),
    "layer_norm": (bool,),
    "training_steps": (int,),
    "data_fingerprint": (dict,),
    "train": (dict,),
    "code_version": (str,),
    "wall_time_s": (int, float),
    "files": (dict,),
    "created": (str,),
    "policy_norm_last_hidden": (bool,),
    "critic_layer_norm": (bool, type(None)),
    "value_network": (bool,),
    "onestep_policy": (bool,),
    "source": (dict,),
}
_JSON_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    dict: "an object",
    type(None): "null",
}


@dataclass
class DatasetSample:
    """A compact sample of the training data (for distance-to-data queries).

    Attributes:
        observations: ``[N, O]`` float32 states.
        actions: ``[N, A]`` float32 dataset actions (one env action each).
    """

    observations: np.ndarray
    actions: np.ndarray


@dataclass
class CheckpointState:
    """Everything in a checkpoint's tensors, validated, for resuming training.

    Attributes:
        config: the checkpoint's config.
        weights: ``{"policy": state_dict, "critic": ..., "target_critic": ...}``.
        optimizer: flat tensors of the optimizer state (empty when none was saved).
        optimizer_meta: the optimizer's JSON-able state (param groups, tensor key layout).
    """

    config: CheckpointConfig
    weights: dict[str, dict[str, torch.Tensor]]
    optimizer: dict[str, torch.Tensor]
    optimizer_meta: dict[str, Any]


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_arrays(arrays: Mapping[str, np.ndarray]) -> str:
    """Hex sha256 over named arrays (name, dtype, shape and bytes, in sorted name order)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        digest.update(a.data)
    return digest.hexdigest()


def code_version() -> str:
    """``<package version>+g<commit>`` (``+dirty`` with local changes) when git is there."""
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "core"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}{'.dirty' if dirty else ''}"


def _flatten(groups: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {
        f"{group}.{key}": t.detach().to("cpu", torch.float32).clone()
        for group, sd in groups.items()
        for key, t in sd.items()
    }


def save_checkpoint(
    path: str | os.PathLike,
    config: CheckpointConfig,
    policy: VelocityField,
    critic: Critic,
    target_critic: Critic,
    sample: DatasetSample,
    optimizer: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
    extras: Mapping[str, bytes] | None = None,
    onestep: OneStepPolicy | None = None,
) -> Path:
    """Write a checkpoint directory atomically (replacing one already at ``path``).

    Args:
        path: the checkpoint directory to create or replace.
        config: its config; ``files``, ``created`` and ``code_version`` are filled in here.
        policy, critic, target_critic: the networks (any device; stored as float32 on CPU).
        sample: compact dataset sample stored next to the weights.
        optimizer: optional ``(tensors, meta)`` from ``optimizer_to_tensors`` for resuming.
        extras: optional unhashed files (name -> bytes), e.g. ``train_log.csv``, ``eval.json``.
        onestep: the one-step policy, exactly when ``config.onestep_policy``.

    Returns:
        The checkpoint path.
    """
    if (onestep is not None) != config.onestep_policy:
        raise ValueError("pass a one-step policy exactly when config.onestep_policy is set")
    path = Path(path)
    check_output_dir(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        weights = {
            "policy": policy.state_dict(),
            "critic": critic.state_dict(),
            "target_critic": target_critic.state_dict(),
        }
        if onestep is not None:
            weights[ONESTEP_GROUP] = onestep.state_dict()
        save_torch_file(_flatten(weights), str(tmp / WEIGHTS_FILE))
        save_numpy_file(
            {
                "observations": np.ascontiguousarray(sample.observations, dtype=np.float32),
                "actions": np.ascontiguousarray(sample.actions, dtype=np.float32),
            },
            str(tmp / SAMPLE_FILE),
        )
        hashed = [WEIGHTS_FILE, SAMPLE_FILE]
        if optimizer is not None:
            tensors, meta = optimizer
            save_torch_file(
                {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                str(tmp / OPTIMIZER_FILE),
                metadata={"meta": json.dumps(meta)},
            )
            hashed.append(OPTIMIZER_FILE)
        for name, data in (extras or {}).items():
            if Path(name).name != name or name in (CONFIG_FILE, *hashed):
                raise ValueError(f"extra file name {name!r} is not a plain, free file name")
            (tmp / name).write_bytes(data)
        config.files = {name: sha256_file(tmp / name) for name in hashed}
        config.created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        config.code_version = config.code_version or code_version()
        config.format_version = FORMAT_VERSION
        (tmp / CONFIG_FILE).write_text(json.dumps(asdict(config), indent=2) + "\n")
        os.chmod(tmp, 0o755)
        _swap_in(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        failure = write_failure(path, e)
        if failure is None:
            raise
        raise failure from e
    return path


def _swap_in(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` onto ``path``; an old ``path`` is moved aside and removed after.

    Between the two renames no checkpoint is under ``path``: Ctrl-C and SIGTERM are held
    back until both are done (they then interrupt as usual), and a process killed outright
    there leaves both directories, which ``recover_checkpoint`` puts back.
    """
    if not path.exists():
        os.rename(tmp, path)
        return
    if not path.is_dir() or not (path / CONFIG_FILE).exists():
        raise CheckpointError(
            f"refusing to replace {path}: it exists and is not a checkpoint directory"
        )
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
    os.rmdir(old)
    with _signals_held():
        os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            os.rename(old, path)
            raise
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the block: one that comes meanwhile is noted, and
    handled as it would have been once the block is done.

    Python runs signal handlers in the main thread only, so a block on another thread is
    never interrupted; in the main thread the handlers are swapped for one that takes
    note. (Blocking the signals with ``pthread_sigmask`` would not do: the kernel hands a
    signal sent to the process to any thread that does not block it, torch's among them.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if handler not in (signal.SIG_IGN, None):
            previous[signum] = signal.signal(signum, lambda n, frame: came.append(n))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for number in came[:1]:
            handler = previous[signal.Signals(number)]
            if callable(handler):
                handler(number, None)
            else:  # the default action (SIGTERM ends the process): as it would have come
                os.kill(os.getpid(), number)


def recover_checkpoint(path: str | os.PathLike) -> bool:
    """Put back a checkpoint that a killed save left under temporary names.

    A save writes ``.NAME.tmp-*`` whole (``config.json`` last), moves the old checkpoint to
    ``.NAME.old-*`` and renames the new one onto ``NAME``. Killed between those renames it
    leaves no ``NAME``: the newest complete ``.tmp-`` directory (else the ``.old-`` one)
    becomes ``NAME`` again. Leftovers of a killed save beside an existing ``NAME`` are
    removed. Returns whether a checkpoint was put back.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return False
    prefixes = (f".{path.name}.tmp-", f".{path.name}.old-")
    leftovers = [p for p in path.parent.glob(f".{path.name}.*") if p.name.startswith(prefixes)]
    leftovers = [p for p in leftovers if p.is_dir()]
    restored = False
    if not path.exists():
        complete = [p for p in leftovers if (p / CONFIG_FILE).is_file()]
        # A complete new one first (it is newer than the old one), newest first.
        complete.sort(key=lambda p: (".tmp-" in p.name, p.stat().st_mtime_ns), reverse=True)
        if complete:
            os.rename(complete[0], path)
            leftovers.remove(complete[0])
            restored = True
    for p in leftovers:
        shutil.rmtree(p, ignore_errors=True)
    return restored


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state into flat tensors and JSON-able metadata."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict:
    """Inverse of ``optimizer_to_tensors``: a ``state_dict`` for ``Optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("state."):
            continue  # other tensors saved alongside (e.g. RNG state) are not the optimizer's
        idx, key = name[len("state.") :].split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, values in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def _refuse_pickles(path: Path) -> None:
    found = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if found:
        raise CheckpointError(
            f"{path} contains pickle-based file(s) {', '.join(found)}; they can run code when "
            "loaded and are refused (checkpoints hold safetensors and JSON only)"
        )


def _check_safetensors(file: Path) -> None:
    """Reject anything that is not a well-formed safetensors file, without unpickling."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{file.name} is not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, _MAX_HEADER):
            raise CheckpointError(
                f"{file.name} is not a safetensors file (header length {n} for {size} bytes)"
            )
        header = f.read(n)
    try:
        meta = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{file.name} is not a safetensors file (bad header: {e})") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{file.name} is not a safetensors file (header is not a table)")


def read_config(path: str | os.PathLike, verify: bool = True) -> CheckpointConfig:
    """Read and validate a checkpoint's config, and (``verify``) every hashed file.

    Raises:
        CheckpointError: no such directory, pickle files present, config missing or
            malformed, a required file missing, or a sha256 mismatch.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint directory at {path}")
    _refuse_pickles(path)
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file():
        raise CheckpointError(f"{path} is missing {CONFIG_FILE}")
    data = read_json_object(cfg_file, CheckpointError)
    if data.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{cfg_file}: format_version {data.get('format_version')!r}, "
            f"this code reads {', '.join(map(str, READABLE_VERSIONS))}"
        )
    try:
        config = CheckpointConfig.from_dict(data)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{cfg_file} is malformed: {e}") from e
    for name in REQUIRED_FILES:
        if name not in config.files:
            raise CheckpointError(f"{cfg_file} records no sha256 for required file {name}")
    if verify:
        for name, digest in config.files.items():
            file = path / name
            if not file.is_file():
                raise CheckpointError(f"{path} is missing {name}")
            actual = sha256_file(file)
            if actual != digest:
                raise CheckpointError(
                    f"{name} in {path} does not match its recorded sha256 (truncated, modified "
                    f"or replaced): expected {digest[:16]}..., found {actual[:16]}..."
                )
    return config


def _group_weights(
    flat: Mapping[str, torch.Tensor], config: CheckpointConfig
) -> dict[str, dict[str, torch.Tensor]]:
    # Built on the meta device (no memory), so widths of any size are compared with the
    # file's tensors before anything is allocated.
    try:
        with torch.device("meta"):
            expected = {
                "policy": config.build_policy().state_dict(),
                "critic": config.build_critic().state_dict(),
            }
            onestep = config.build_onestep()
            if onestep is not None:
                expected[ONESTEP_GROUP] = onestep.state_dict()
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise CheckpointError(
            f"the architecture in {CONFIG_FILE} cannot be built: {str(e).splitlines()[0]}"
        ) from e
    expected["target_critic"] = expected["critic"]
    names = config.weight_groups()
    groups: dict[str, dict[str, torch.Tensor]] = {g: {} for g in names}
    for name, tensor in flat.items():
        group, _, key = name.partition(".")
        if group not in groups:
            raise CheckpointError(f"{WEIGHTS_FILE} holds an unknown tensor {name!r}")
        groups[group][key] = tensor
    for group in names:
        want, got = expected[group], groups[group]
        missing = sorted(set(want) - set(got))
        if missing:
            raise CheckpointError(f"{WEIGHTS_FILE} lacks {group} tensors: {', '.join(missing)}")
        extra = sorted(set(got) - set(want))
        if extra:
            raise CheckpointError(f"{WEIGHTS_FILE} has unexpected {group} tensors: {extra}")
        for key, t in want.items():
            if tuple(got[key].shape) != tuple(t.shape):
                raise CheckpointError(
                    f"{WEIGHTS_FILE}: {group}.{key} has shape {list(got[key].shape)}, the "
                    f"architecture in {CONFIG_FILE} needs {list(t.shape)}"
                )
    return groups


def load_state(path: str | os.PathLike, expect_env: str | None = None) -> CheckpointState:
    """Validate a checkpoint and return all its tensors on CPU (for resuming training)."""
    path = Path(path)
    config = read_config(path)
    if expect_env is not None and config.env != expect_env:
        raise CheckpointError(f"checkpoint {path} is for env {config.env!r}, not {expect_env!r}")
    _check_safetensors(path / WEIGHTS_FILE)
    try:
        flat = load_torch_file(str(path / WEIGHTS_FILE))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{WEIGHTS_FILE} in {path} cannot be read: {e}") from e
    weights = _group_weights(flat, config)
    optimizer: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    if OPTIMIZER_FILE in config.files:
        from safetensors import safe_open

        _check_safetensors(path / OPTIMIZER_FILE)
        try:
            optimizer = load_torch_file(str(path / OPTIMIZER_FILE))
            with safe_open(str(path / OPTIMIZER_FILE), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("meta", "{}"))
        except Exception as e:
            raise CheckpointError(f"{OPTIMIZER_FILE} in {path} cannot be read: {e}") from e
    return CheckpointState(config, weights, optimizer, meta)


@dataclass
class Agent:
    """A checkpoint's networks, ready to sample with.

    Attributes:
        policy: the velocity field ``(obs [B,O], a_t [B,H*A], t [B]) -> [B,H*A]``.
        critic: the TARGET critic, aggregated over its heads as ``config.q_aggregate`` says,
            ``(obs [B,O], a [B,H*A]) -> [B]``; ``critic.has_value`` says whether V exists.
        config: the checkpoint's config.
        onestep: the one-step policy ``(obs, noise) -> action`` (unclipped), or None.
    """

    policy: VelocityField
    critic: Critic
    config: CheckpointConfig
    onestep: OneStepPolicy | None = None


def load_agent(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    expect_env: str | None = None,
) -> Agent:
    """Load a checkpoint for sampling, every network it has (see ``load_checkpoint``)."""
    state = load_state(path, expect_env)
    config = state.config
    policy = config.build_policy()
    critic = config.build_critic()
    onestep = config.build_onestep()
    policy.load_state_dict(state.weights["policy"])
    critic.load_state_dict(state.weights["target_critic"])
    if onestep is not None:
        onestep.load_state_dict(state.weights[ONESTEP_GROUP])
    for net in (policy, critic, onestep):
        if net is not None:
            net.to(device).eval().requires_grad_(False)
    return Agent(policy, critic, config, onestep)


def load_checkpoint(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    expect_env: str | None = None,
) -> tuple[VelocityField, Critic, CheckpointConfig]:
    """Load a checkpoint for sampling: ``(policy, critic, config)``.

    The parts plug straight into ``guided_sample(policy, critic, obs, ...)``: ``policy`` is
    the velocity field ``(obs [B,O], a_t [B,H*A], t [B]) -> [B,H*A]`` and ``critic`` is the
    TARGET critic aggregated over its heads (min, unless the checkpoint says mean),
    ``(obs [B,O], a [B,H*A]) -> [B]``, as the reference evaluation guides with. Both are in
    eval mode with gradients off for their parameters (guidance still differentiates Q with
    respect to actions). ``load_agent`` also gives a one-step policy where there is one.

    Args:
        path: checkpoint directory.
        device: where to put the networks.
        expect_env: if given, the env name the checkpoint must have been trained for.

    Raises:
        CheckpointError: anything wrong with the checkpoint (see the module docstring).
    """
    agent = load_agent(path, device, expect_env)
    return agent.policy, agent.critic, agent.config


def load_dataset_sample(path: str | os.PathLike, verify: bool = True) -> DatasetSample:
    """The compact dataset sample of a checkpoint (validated like the weights)."""
    path = Path(path)
    config = read_config(path, verify=verify)
    file = path / SAMPLE_FILE
    _check_safetensors(file)
    try:
        arrays = load_numpy_file(str(file))
    except Exception as e:
        raise CheckpointError(f"{SAMPLE_FILE} in {path} cannot be read: {e}") from e
    obs, act = arrays.get("observations"), arrays.get("actions")
    if obs is None or act is None:
        raise CheckpointError(f"{SAMPLE_FILE} needs 'observations' and 'actions'")
    if obs.ndim != 2 or obs.shape[1] != config.obs_dim:
        raise CheckpointError(
            f"{SAMPLE_FILE}: observations have shape {list(obs.shape)}, "
            f"expected [N, {config.obs_dim}]"
        )
    if act.shape != (obs.shape[0], config.action_dim):
        raise CheckpointError(
            f"{SAMPLE_FILE}: actions have shape {list(act.shape)}, "
            f"expected [{obs.shape[0]}, {config.action_dim}]"
        )
    if obs.shape[0] == 0:
        raise NoDatasetSample(
            f"checkpoint {path.name} has no dataset sample (imported without --data): "
            "distance to the data is unavailable"
        )
    return DatasetSample(obs, act)


def check_env_dims(config: CheckpointConfig, obs_dim: int, action_dim: int, env: str) -> None:
    """Raise ``CheckpointError`` when an env's spaces do not fit the checkpoint."""
    if (obs_dim, action_dim) != (config.obs_dim, config.action_dim):
        raise CheckpointError(
            f"env {env} has obs/action dims ({obs_dim}, {action_dim}); the checkpoint was "
            f"trained with ({config.obs_dim}, {config.action_dim})"
        )
