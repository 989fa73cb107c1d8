"""Guidance sweeps on Ray: many (checkpoint, estimator, weight, seed block) cells, resumable.

A *cell* is one checkpoint evaluated with one estimator at one weight on one seed block:
``episodes`` episodes whose seeds are ``seed, seed + 1, ...``, run batched by
``core.evaluation.run_episodes`` exactly as ``qgf eval --seed SEED`` runs them, so a cell's
numbers equal ``qgf eval``'s for the same settings. Each cell is one Ray task; the loaded
networks and the data manifold (fitted from the checkpoint's dataset sample) go into Ray's
object store once per checkpoint, and a worker keeps its envs from cell to cell.

Results go to ``OUT/cells/<checkpoint>/<estimator>/w<weight>-seed<seed>.jsonl``, one JSON
line per cell, written atomically by the driver when the cell's task returns. A cell whose
file exists is never run again: rerunning the same command resumes after Ctrl-C, a lost
machine or a crashed driver. A worker that dies inside a cell is retried by Ray
(``MAX_RETRIES``); since only the driver writes, and only once per returned task, every cell
appears once. A cell that raises is not retried: its error is collected, the other cells
finish, and the next run tries it again. ``OUT/sweep.json`` records the settings that change
a cell's numbers (episodes, envs, episode length, env); a later run into the same directory
must use the same ones, and may add checkpoints, estimators, weights or seeds.

Layout of one row (every field needed to re-plot)::

    checkpoint, checkpoint_path, checkpoint_sha256   label, where, sha256 of its weights
    env, estimator, weight, seed, episodes, num_envs, max_episode_steps, flow_steps, horizon
    successes, success_rate, success_ci [lo, hi]     Wilson 95%
    return_mean, return_ci [lo, hi], length_mean
    off_manifold_share, off_manifold_actions, actions, manifold_threshold  (null: no sample)
    nonfinite_rows                                   sampled rows with NaN/inf guidance
    ms_per_action                                    batched sampling time / chunks sampled
    wall_s, cpu_s                                    the cell's wall and CPU time (worker)
    device, node, pid, code_version, finished        where and when it ran
    success_per_episode, return_per_episode, length_per_episode
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from core.files import atomic_write, check_output_dir, read_json_object, write_json

CELLS_DIR = "cells"
SETTINGS_FILE = "sweep.json"
ERRORS_FILE = "errors.txt"
REPORT_FILE = "REPORT.md"
# Retries of a cell whose worker process died (a crash, an OOM kill, a lost node). A cell
# that raises is not retried: the same seeds would raise again.
MAX_RETRIES = 3
# GPU share of one cell on a cluster with GPUs, unless the spec says otherwise: a cell's
# networks are small, so four cells share one GPU.
DEFAULT_GPUS_PER_CELL = 0.25
# Settings that change a cell's numbers: one value per output directory.
RESULT_SETTINGS = ("episodes", "envs", "max_episode_steps", "env")


class SweepError(ValueError):
    """Bad sweep input; the message is one line for the user."""


# ----------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class SweepSpec:
    """What to sweep and where results go.

    Attributes:
        checkpoints: checkpoint directories.
        weights: guidance weights (finite, >= 0).
        estimators: names in ``core.guidance.ESTIMATORS``.
        episodes: episodes per cell (one seed block).
        seeds: first seed of each block; block ``s`` runs seeds ``s .. s + episodes - 1``.
        envs: envs stepped together inside a cell (as ``qgf eval --envs``).
        max_episode_steps: shorter episodes; None keeps the env's limit.
        env: evaluate on another env of the same dims; None is each checkpoint's own.
        out: output directory.
        address: Ray cluster to join; None starts a local one (or uses ``RAY_ADDRESS``).
        cpus: CPUs of a local cluster; None is the whole machine.
        gpus_per_cell: GPU share of a cell; None is ``DEFAULT_GPUS_PER_CELL`` when the
            cluster has GPUs, else 0 (cells then run on the CPU).
    """

    checkpoints: tuple[str, ...]
    weights: tuple[float, ...] = (0.0, 0.01, 0.03, 0.1)
    estimators: tuple[str, ...] = ("qgf",)
    episodes: int = 50
    seeds: tuple[int, ...] = (0,)
    envs: int = 25
    max_episode_steps: int | None = None
    env: str | None = None
    out: str = "sweep"
    address: str | None = None
    cpus: int | None = None
    gpus_per_cell: float | None = None

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], source: str = "spec", options: Iterable[str] = ()
    ) -> SweepSpec:
        """Build and check a spec from a TOML table and/or command-line options.

        Lists may be given as lists or as comma-separated strings. Messages name a field as
        ``SOURCE: field``, or as ``--field`` when it is in ``options``.

        Raises:
            SweepError: an unknown field, a value of the wrong type, or out of range.
        """
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise SweepError(f"{source}: unknown field {unknown[0]!r} (known: {', '.join(known)})")
        values = {k: v for k, v in data.items() if v is not None}
        if "checkpoints" not in values:
            raise SweepError(f"{source}: no checkpoints given")
        parsed: dict[str, Any] = {}
        for name, value in values.items():
            where = f"--{name.replace('_', '-')}" if name in options else f"{source}: {name}"
            if name == "checkpoints" or name == "estimators":
                parsed[name] = _list(value, where, _str)
            elif name == "weights":
                parsed[name] = _list(value, where, _weight)
            elif name == "seeds":
                parsed[name] = _list(value, where, _int)
            elif name in ("episodes", "envs", "max_episode_steps", "cpus"):
                parsed[name] = _positive_int(value, where)
            elif name == "gpus_per_cell":
                parsed[name] = _number(value, where)
                if not 0 <= parsed[name] <= 1 and parsed[name] != int(parsed[name]):
                    raise SweepError(f"{where}: a share in [0, 1] or a whole number of GPUs")
            else:
                parsed[name] = _str(value, where)
        spec = cls(**parsed)
        spec.check()
        return spec

    def check(self) -> None:
        """Raise ``SweepError`` for an unknown estimator (the registry is only known here)."""
        from core.guidance import ESTIMATORS

        unknown = [e for e in self.estimators if e not in ESTIMATORS]
        if unknown:
            raise SweepError(
                f"unknown estimator {unknown[0]!r}; registered: {', '.join(sorted(ESTIMATORS))}"
            )

    def result_settings(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in RESULT_SETTINGS}


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SweepError(f"{where}: expected a non-empty string, got {value!r}")
    return value.strip()


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise SweepError(f"{where}: expected a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise SweepError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(x):
        raise SweepError(f"{where}: expected a finite number, got {value!r}")
    return x


def _weight(value: Any, where: str) -> float:
    w = _number(value, where)
    if w < 0:
        raise SweepError(f"{where}: weights must be >= 0, got {value!r}")
    return w


def _int(value: Any, where: str) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise SweepError(f"{where}: expected a whole number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise SweepError(f"{where}: expected a whole number, got {value!r}")
    return value


def _positive_int(value: Any, where: str) -> int:
    n = _int(value, where)
    if n < 1:
        raise SweepError(f"{where}: must be at least 1, got {n}")
    return n


def _list(value: Any, where: str, convert: Callable[[Any, str], Any]) -> tuple:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise SweepError(f"{where}: expected a list, got {value!r}")
    items = [x for x in items if not (isinstance(x, str) and not x.strip())]
    if not items:
        raise SweepError(f"{where}: the list is empty")
    out = tuple(convert(x, where) for x in items)
    if len(set(out)) != len(out):
        raise SweepError(f"{where}: {value!r} lists a value twice")
    return out


def read_spec_file(path: str | os.PathLike) -> dict[str, Any]:
    """The table of a ``SPEC.toml`` (``[sweep]`` table or top level), unchecked."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise SweepError(f"cannot read {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise SweepError(f"{path} is not valid TOML: {e}") from None
    if set(data) == {"sweep"} and isinstance(data["sweep"], dict):
        data = data["sweep"]
    return data


# ----------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    """One task: a checkpoint (by label), an estimator, a weight and a seed block."""

    checkpoint: str
    estimator: str
    weight: float
    seed: int

    def path(self, out: str | os.PathLike) -> Path:
        return (
            Path(out)
            / CELLS_DIR
            / self.checkpoint
            / self.estimator
            / f"w{self.weight!r}-seed{self.seed}.jsonl"
        )

    def __str__(self) -> str:
        return f"{self.checkpoint} {self.estimator} w={self.weight:g} seed={self.seed}"


@dataclass
class CheckpointPayload:
    """What a cell needs of its checkpoint; put into Ray's object store once.

    Attributes:
        label: ``<directory name>-<first 8 hex of the weights' sha256>``.
        path: the directory, as given.
        sha256: sha256 of ``weights.safetensors``, as recorded in and checked against
            ``config.json``.
        policy, critic, config: as ``load_checkpoint`` returns them (CPU).
        manifold: fitted on the checkpoint's dataset sample (CPU); None when the
            checkpoint has none (rows then say null for the off-manifold fields).
    """

    label: str
    path: str
    sha256: str
    policy: Any
    critic: Any
    config: Any
    manifold: Any


@dataclass(frozen=True)
class CellSettings:
    """Settings shared by every cell of a run."""

    episodes: int
    envs: int
    max_episode_steps: int | None
    env: str | None
    code_version: str


def checkpoint_label(path: str | os.PathLike):
    """``(label, config)`` of a checkpoint: ``<directory name>-<sha8 of its weights>``.

    Raises:
        SweepError: the checkpoint is missing or invalid (``CheckpointError``'s message).
    """
    from core.checkpoints import WEIGHTS_FILE, CheckpointError, read_config

    try:
        config = read_config(path)
    except CheckpointError as e:
        raise SweepError(str(e)) from None
    return f"{Path(path).resolve().name}-{config.files[WEIGHTS_FILE][:8]}", config


def load_payload(path: str | os.PathLike) -> CheckpointPayload:
    """Load and validate a checkpoint and fit its data manifold.

    Raises:
        SweepError: the checkpoint is missing or invalid (``CheckpointError``'s message).
    """
    from core.checkpoints import WEIGHTS_FILE, CheckpointError, NoDatasetSample, load_checkpoint
    from core.manifold import DataManifold

    label, _ = checkpoint_label(path)
    try:
        policy, critic, config = load_checkpoint(path, "cpu")
        try:
            manifold = DataManifold.from_checkpoint(path)
        except NoDatasetSample:  # an agent imported without its data: no distances
            manifold = None
    except CheckpointError as e:
        raise SweepError(str(e)) from None
    sha = config.files[WEIGHTS_FILE]
    return CheckpointPayload(label, str(path), sha, policy, critic, config, manifold)


# A worker's envs, kept from cell to cell as `qgf eval` keeps them from weight to weight.
_ENVS: dict[tuple[str, int | None], list] = {}


def _cell_device() -> str:
    try:
        import ray

        if ray.is_initialized() and ray.get_gpu_ids():
            return "cuda"
    except ImportError:  # pragma: no cover - ray is a dependency
        pass
    return "cpu"


def _node_id() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except ImportError:  # pragma: no cover
        pass
    return ""


def run_cell(payload: CheckpointPayload, cell: Cell, settings: CellSettings) -> dict:
    """Run one cell's episodes and return its result row (see the module docstring).

    Runs in a Ray worker, or anywhere: it needs no Ray. On a worker that holds a GPU share
    the networks run on CUDA.
    """
    from core.checkpoints import check_env_dims
    from core.envs import make_env, reset
    from core.evaluation import run_episodes, summarize

    started, cpu_started = time.perf_counter(), time.process_time()
    device = _cell_device()
    config = payload.config
    policy, critic = payload.policy.to(device), payload.critic.to(device)
    manifold = payload.manifold.to(device) if payload.manifold is not None else None
    env_name = settings.env or config.env
    kwargs = {}
    if settings.max_episode_steps is not None:
        kwargs["max_episode_steps"] = settings.max_episode_steps

    def new_env():
        return make_env(env_name, **kwargs)

    envs = _ENVS.setdefault((env_name, settings.max_episode_steps), [])
    if not envs:
        envs.append(new_env())
        ob, _ = reset(envs[0], cell.seed)
        check_env_dims(config, len(ob), int(np.prod(envs[0].action_space.shape)), env_name)
    ep = run_episodes(
        policy,
        critic,
        new_env,
        reset,
        settings.episodes,
        settings.envs,
        cell.seed,
        estimator=cell.estimator,
        weight=cell.weight,
        horizon=config.horizon,
        action_dim=config.action_dim,
        flow_steps=config.flow_steps,
        device=device,
        envs=envs,
        manifold=manifold,
    )
    point = summarize(cell.estimator, cell.weight, ep)
    return {
        "checkpoint": payload.label,
        "checkpoint_path": payload.path,
        "checkpoint_sha256": payload.sha256,
        "env": env_name,
        "estimator": cell.estimator,
        "weight": cell.weight,
        "seed": cell.seed,
        "episodes": point.episodes,
        "num_envs": settings.envs,
        "max_episode_steps": settings.max_episode_steps,
        "flow_steps": config.flow_steps,
        "horizon": config.horizon,
        "successes": point.successes,
        "success_rate": point.success_rate,
        "success_ci": list(point.success_ci),
        "return_mean": point.return_mean,
        "return_ci": list(point.return_ci),
        "length_mean": point.length_mean,
        "off_manifold_share": (
            None if manifold is None else ep.off_manifold_actions / max(ep.actions, 1)
        ),
        "off_manifold_actions": None if manifold is None else ep.off_manifold_actions,
        "actions": ep.actions,
        "manifold_threshold": None if manifold is None else manifold.threshold,
        "nonfinite_rows": ep.nonfinite_steps,
        "ms_per_action": 1000 * ep.policy_time_s / ep.actions if ep.actions else 0.0,
        "wall_s": round(time.perf_counter() - started, 3),
        "cpu_s": round(time.process_time() - cpu_started, 3),
        "device": device,
        "node": _node_id(),
        "pid": os.getpid(),
        "code_version": settings.code_version,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "success_per_episode": point.success_per_episode,
        "return_per_episode": [float(r) for r in ep.returns],
        "length_per_episode": [int(n) for n in ep.lengths],
    }


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def read_rows(out: str | os.PathLike) -> list[dict]:
    """Every finished cell's row under ``out``, sorted by checkpoint, estimator, weight, seed."""
    rows: list[dict] = []
    for file in sorted((Path(out) / CELLS_DIR).glob("*/*/*.jsonl")):
        if file.name.startswith("."):  # atomic_write's temporary file (.NAME.*.tmp.jsonl)
            continue
        rows.extend(json.loads(line) for line in file.read_text().splitlines() if line.strip())
    return sorted(rows, key=lambda r: (r["checkpoint"], r["estimator"], r["weight"], r["seed"]))


# ----------------------------------------------------------------------------- running


@dataclass
class SweepOutcome:
    """What one run did.

    Attributes:
        cells: every cell of the spec.
        skipped: cells already finished before this run.
        done: cells finished by this run.
        failed: ``(cell, error)`` for cells that raised or whose retries ran out; ``error``
            is the full traceback.
        interrupted: the run stopped early (Ctrl-C or SIGTERM); unfinished cells run next
            time.
        terminated: it was SIGTERM (``core.interrupts.Terminated``) that stopped it.
        wall_s: the run's wall time.
        tasks_s: from submitting the first task to the last result (without loading the
            checkpoints and starting the cluster); 0 when nothing ran.
    """

    cells: list[Cell]
    skipped: list[Cell] = field(default_factory=list)
    done: list[Cell] = field(default_factory=list)
    failed: list[tuple[Cell, str]] = field(default_factory=list)
    interrupted: bool = False
    terminated: bool = False
    wall_s: float = 0.0
    tasks_s: float = 0.0

    @property
    def exit_code(self) -> int:
        """0 when every cell is finished, 1 when some failed, 130 when interrupted by
        Ctrl-C, 143 by SIGTERM."""
        if self.interrupted:
            return 143 if self.terminated else 130
        return 1 if self.failed else 0


def connect(address: str | None = None, cpus: int | None = None) -> None:
    """Join the Ray cluster at ``address`` (or ``RAY_ADDRESS``), or start a local one.

    A no-op when Ray is already initialised in this process (tests, benchmarks, notebooks).
    When joining a cluster, this package's ``core`` is shipped to it, so the workers run the
    driver's code; the cluster's nodes need the dependencies installed (torch, mujoco,
    ogbench: ``pip install`` this project there).

    ``ray.init`` replaces the SIGTERM handler with one that exits at once; the one in place
    before (``qgf``'s, which raises ``core.interrupts.Terminated`` like Ctrl-C) is put back, so a
    terminated sweep cancels its tasks and keeps every finished cell as Ctrl-C does.
    """
    import ray

    if ray.is_initialized():
        return
    with _sigterm_kept():
        _init(address, cpus)


@contextlib.contextmanager
def _sigterm_kept() -> Iterator[None]:
    """Restore the main thread's SIGTERM handler after the block."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _init(address: str | None, cpus: int | None) -> None:
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    # Workers' output would tear the progress bar; a cell's error comes back with the task:
    # logging_level ERROR and no log_to_driver, either way.
    if address:
        core_dir = str(Path(__file__).resolve().parent)
        ray.init(
            address=address,
            runtime_env={"py_modules": [core_dir]},
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
    else:
        # "local": never attach to some other cluster that happens to run on this machine.
        # Workers import `core` from where the driver did, whatever is installed.
        root = str(Path(__file__).resolve().parent.parent)
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        ray.init(
            address="local",
            num_cpus=cpus,
            include_dashboard=False,
            runtime_env={"env_vars": {"PYTHONPATH": path}},
            logging_level=logging.ERROR,
            log_to_driver=False,
        )


def _check_settings(out: Path, spec: SweepSpec) -> None:
    file = out / SETTINGS_FILE
    wanted = spec.result_settings()
    if file.exists():
        recorded = read_json_object(file, SweepError).get("settings", {})
        if not isinstance(recorded, dict):
            raise SweepError(f"{file} has no settings table; move it away or use another --out")
        differ = [k for k in RESULT_SETTINGS if recorded.get(k) != wanted[k]]
        if differ:
            k = differ[0]
            raise SweepError(
                f"{out} holds a sweep with {k} = {recorded.get(k)!r}, this one asks for "
                f"{wanted[k]!r}: use another --out"
            )


def _record_settings(out: Path, spec: SweepSpec, labels: Sequence[str]) -> None:
    file = out / SETTINGS_FILE
    data = read_json_object(file, SweepError) if file.exists() else {}
    data["settings"] = spec.result_settings()
    data["last_spec"] = {**asdict(spec), "checkpoint_labels": list(labels)}
    write_json(file, data)


def _one_line(error: str) -> str:
    lines = [line for line in error.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "unknown error"


def run_sweep(
    spec: SweepSpec,
    *,
    progress: bool = True,
    cell_fn: Callable[[CheckpointPayload, Cell, CellSettings], dict] = run_cell,
    log: Callable[[str], None] = print,
) -> SweepOutcome:
    """Run every unfinished cell of ``spec`` on Ray and write each result as it arrives.

    Connects (``connect``) unless Ray is already initialised. Returns after every cell has
    finished or failed, or after Ctrl-C (outstanding tasks are cancelled).

    Args:
        spec: what to run.
        progress: show a tqdm bar (cells, episodes, failures, ETA).
        cell_fn: the task body; ``run_cell`` (tests wrap it to inject faults).
        log: where the run's messages go.

    Raises:
        SweepError: bad input (checkpoint, settings of an existing output directory).
    """
    import ray
    from tqdm import tqdm

    from core.checkpoints import code_version

    spec.check()
    started = time.perf_counter()
    out = Path(spec.out)
    _check_settings(out, spec)
    checkpoints = dict(checkpoint_label(p) for p in spec.checkpoints)
    if len(checkpoints) != len(spec.checkpoints):
        raise SweepError("the same checkpoint is listed twice")
    if spec.env is not None:
        _check_env(spec.env, list(checkpoints.values()))
    cells = [
        Cell(label, est, w, seed)
        for label in checkpoints
        for est in spec.estimators
        for w in spec.weights
        for seed in spec.seeds
    ]
    outcome = SweepOutcome(cells)
    outcome.skipped = [c for c in cells if c.path(out).exists()]
    todo = deque(c for c in cells if not c.path(out).exists())
    check_output_dir(out)  # a read-only or full disk fails before any cell
    _record_settings(out, spec, list(checkpoints))
    if not todo:
        outcome.wall_s = time.perf_counter() - started
        return outcome
    payloads = {}
    for path, label in zip(spec.checkpoints, checkpoints, strict=True):
        if any(c.checkpoint == label for c in todo):
            payloads[label] = load_payload(path)

    connect(spec.address, spec.cpus)
    cluster_gpus = ray.cluster_resources().get("GPU", 0)
    gpus = spec.gpus_per_cell
    if gpus is None:
        gpus = DEFAULT_GPUS_PER_CELL if cluster_gpus > 0 else 0.0
    elif gpus > 0 and cluster_gpus == 0:
        # Ray would wait forever for a GPU that no node has.
        raise SweepError(f"gpus_per_cell is {gpus:g} but the Ray cluster has no GPUs")
    task = ray.remote(cell_fn).options(
        num_cpus=1, num_gpus=gpus, max_retries=MAX_RETRIES, retry_exceptions=False
    )
    settings = CellSettings(
        spec.episodes, spec.envs, spec.max_episode_steps, spec.env, code_version()
    )
    # Tasks in flight: enough to keep every CPU busy while results come back, few enough
    # that waiting on them stays cheap with 10^5 cells.
    window = 2 * int(ray.cluster_resources().get("CPU", 1)) + 16
    submitted = time.perf_counter()
    refs = {label: ray.put(p) for label, p in payloads.items()}
    pending: dict[Any, Cell] = {}

    def submit() -> None:
        while todo and len(pending) < window:
            cell = todo.popleft()
            pending[task.remote(refs[cell.checkpoint], cell, settings)] = cell

    episodes_total = len(cells) * spec.episodes
    episodes_done = len(outcome.skipped) * spec.episodes
    bar = tqdm(
        total=len(cells),
        initial=len(outcome.skipped),
        desc="sweep",
        unit="cell",
        disable=not progress,
        dynamic_ncols=True,
    )
    bar.set_postfix(episodes=f"{episodes_done}/{episodes_total}", failed=0)
    try:
        submit()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                cell = pending.pop(ref)
                try:
                    row = ray.get(ref)
                except ray.exceptions.RayError as e:
                    # RayTaskError carries the cell's traceback; WorkerCrashedError and
                    # friends say the retries ran out.
                    outcome.failed.append((cell, str(e)))
                    bar.write(f"failed: {cell}: {_one_line(str(e))}")
                else:
                    _write_text(cell.path(out), json.dumps(row) + "\n")
                    outcome.done.append(cell)
                    episodes_done += spec.episodes
                bar.update(1)
                bar.set_postfix(
                    episodes=f"{episodes_done}/{episodes_total}", failed=len(outcome.failed)
                )
            submit()
    except KeyboardInterrupt as e:
        from core.interrupts import terminated

        outcome.interrupted = True
        outcome.terminated = terminated(e)
        # Cooperative cancellation: force-killing the workers raced tasks that were just
        # completing and aborted the driver inside Ray (ray 2.60: "Tried to complete task
        # that was not pending", exit 1 instead of 130). Results are written by this driver
        # only, so a cell that still finishes is simply not recorded.
        for ref in pending:
            ray.cancel(ref, force=False)
    finally:
        bar.close()
    outcome.tasks_s = time.perf_counter() - submitted
    _write_errors(out, outcome.failed)
    outcome.wall_s = time.perf_counter() - started
    return outcome


def _check_env(env: str, configs: Sequence[Any]) -> None:
    from core.checkpoints import CheckpointError, check_env_dims
    from core.envs import make_env, reset

    try:
        made = make_env(env)
    except ValueError as e:
        raise SweepError(str(e).splitlines()[0]) from None
    try:
        ob, _ = reset(made, 0)
        for config in configs:
            check_env_dims(config, len(ob), int(np.prod(made.action_space.shape)), env)
    except CheckpointError as e:
        raise SweepError(str(e)) from None
    finally:
        made.close()


def _write_errors(out: Path, failed: Sequence[tuple[Cell, str]]) -> None:
    file = out / ERRORS_FILE
    if not failed:
        file.unlink(missing_ok=True)
        return
    _write_text(file, "".join(f"== {cell}\n{error.rstrip()}\n\n" for cell, error in failed))


def summary_lines(outcome: SweepOutcome, out: str | os.PathLike) -> list[str]:
    """What a run did, for the end of ``qgf sweep``: counts, then each failed cell."""
    lines = [
        f"{len(outcome.done)} cells run, {len(outcome.skipped)} already done, "
        f"{len(outcome.failed)} failed, of {len(outcome.cells)} ({outcome.wall_s:.0f} s)"
    ]
    if outcome.failed:
        lines.append(f"failed cells (full tracebacks in {Path(out) / ERRORS_FILE}):")
        lines += [f"  {cell}: {_one_line(error)}" for cell, error in outcome.failed]
    if outcome.interrupted:
        left = len(outcome.cells) - len(outcome.skipped) - len(outcome.done)
        lines.append(f"interrupted: {left} cells left; run the same command to resume")
    return lines


# ----------------------------------------------------------------------------- report


def aggregate(rows: Iterable[Mapping[str, Any]]):
    """Per checkpoint, an ``EvalResult`` with one point per (estimator, weight).

    Seed blocks of a cell are pooled: successes and returns over all their episodes.

    Returns:
        ``{label: (EvalResult, extras)}``; ``extras[(estimator, weight)]`` holds the pooled
        off-manifold share, non-finite rows, ms per action and seed blocks.
    """
    from core.evaluation import Episodes, EvalResult, summarize

    groups: dict[str, dict[tuple[str, float], list[Mapping[str, Any]]]] = {}
    for row in rows:
        cells = groups.setdefault(row["checkpoint"], {})
        cells.setdefault((row["estimator"], row["weight"]), []).append(row)
    results = {}
    for label, cells in sorted(groups.items()):
        points, extras = [], {}
        for (est, w), blocks in sorted(cells.items()):
            ep = Episodes(
                success=np.array([s for b in blocks for s in b["success_per_episode"]], bool),
                returns=np.array([r for b in blocks for r in b["return_per_episode"]], float),
                lengths=np.array([n for b in blocks for n in b["length_per_episode"]], int),
                nonfinite_steps=sum(b["nonfinite_rows"] for b in blocks),
            )
            points.append(summarize(est, w, ep))
            actions = sum(b["actions"] for b in blocks)
            off = [b["off_manifold_actions"] for b in blocks]
            extras[(est, w)] = {
                "off_manifold_share": None if None in off else sum(off) / max(actions, 1),
                "ms_per_action": sum(b["ms_per_action"] * b["actions"] for b in blocks)
                / max(actions, 1),
                "seeds": sorted(b["seed"] for b in blocks),
            }
        first = next(iter(cells.values()))[0]
        estimators = list(dict.fromkeys(p.estimator for p in points))
        result = EvalResult(
            env=first["env"],
            episodes=max(p.episodes for p in points),
            num_envs=first["num_envs"],
            seed=min(b["seed"] for bs in cells.values() for b in bs),
            flow_steps=first["flow_steps"],
            horizon=first["horizon"],
            weights=sorted({p.weight for p in points}),
            estimators=estimators,
            points=points,
            wall_time_s=sum(b["wall_s"] for bs in cells.values() for b in bs),
            checkpoint=first["checkpoint_path"],
        )
        results[label] = (result, extras)
    return results


def write_report(out: str | os.PathLike) -> list[Path]:
    """Re-plot a sweep directory without running anything.

    Writes ``OUT/report-<checkpoint>.png`` (success with Wilson 95% band and return against
    weight, one curve per estimator) per checkpoint and ``OUT/REPORT.md`` (the same as
    tables, with off-manifold share, non-finite rows and ms per action).

    Raises:
        SweepError: ``out`` holds no finished cell.
    """
    from core.evaluation import plot_sweep

    out = Path(out)
    rows = read_rows(out) if out.is_dir() else []
    if not rows:
        raise SweepError(f"no finished cells under {out / CELLS_DIR}")
    written = []
    md = [f"# Sweep report: {out}", ""]
    for label, (result, extras) in aggregate(rows).items():
        png = plot_sweep(result, out / f"report-{label}.png")
        written.append(png)
        md += [
            f"## {label}",
            "",
            f"`{result.checkpoint}` on `{result.env}`; success with Wilson 95% intervals.",
            "",
            f"![{label}]({png.name})",
            "",
            "| estimator | weight | episodes | success | 95% CI | return | off-manifold "
            "| non-finite rows | ms/action |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for p in result.points:
            x = extras[(p.estimator, p.weight)]
            off = x["off_manifold_share"]
            lo, hi = p.success_ci
            md.append(
                f"| {p.estimator} | {p.weight:g} | {p.episodes} | {100 * p.success_rate:.0f}% "
                f"| [{100 * lo:.0f}, {100 * hi:.0f}] | {p.return_mean:.1f} "
                f"| {'n/a' if off is None else f'{100 * off:.1f}%'} | {p.nonfinite_steps} "
                f"| {x['ms_per_action']:.1f} |"
            )
        md.append("")
        best = [result.best(e) for e in result.estimators]
        md += [
            "Best weight per estimator: "
            + ", ".join(f"{b.estimator} {b.weight:g} ({100 * b.success_rate:.0f}%)" for b in best),
            "",
        ]
    report = out / REPORT_FILE
    _write_text(report, "\n".join(md))
    written.append(report)
    return written
