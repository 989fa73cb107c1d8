"""OGBench datasets: generation with OGBench's scripted oracles, loading, validation, samples.

Generation follows OGBench's recipe for manipulation data: the env runs in
``mode='data_collection'`` without terminating at goals, for ``max_episode_steps`` (1001) steps
per episode; whenever the scripted oracle finishes its sub-task the env draws a new target and
the matching oracle takes over. ``play`` data uses the plan oracles (open-loop plans with
temporally correlated noise); ``noisy`` data uses the Markov (closed-loop) oracles with a
per-episode Gaussian noise scale and occasional uniform random actions.

Files are OGBench's own format, so ``ogbench.make_env_and_datasets(name, dataset_path=...)``
reads them: ``np.savez_compressed`` with one row per step of every episode::

                 |<------ episode 1 ------>|  |<- episode 2 ...
    observations   s0   s1  ...  s999 s1000    s0  ...
    actions        a0   a1  ...  a999 a1000    a0  ...
    terminals       0    0  ...     0     1     0  ...
    qpos, qvel     physics state at s_t (the state *before* a_t)
    button_states  scene/puzzle button states at s_t

The last row of an episode has no successor, and OGBench's loader drops it when it builds
``next_observations``. Validation data goes to ``<stem>-val.npz`` next to the training file.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
import tokenize
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from core.envs import EnvName, finite_actions, parse_name, reset
from core.files import atomic_write, check_output_dir

DEFAULT_DATASET_DIR = "~/.ogbench/data"
EPISODE_STEPS = 1001
# Per-step arrays every OGBench manipulation file has, and those only some have.
REQUIRED_KEYS = ("observations", "actions", "terminals")
INFO_KEYS = ("qpos", "qvel", "button_states")
# Seeds for the two splits are drawn from separate streams so that adding validation episodes
# never changes the training episodes.
_SPLIT_STREAM = {"train": 0, "val": 1}


# ----------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class GenerationConfig:
    """How to generate one OGBench dataset (training file plus its validation split).

    Args:
        name: dataset name, e.g. ``cube-single-play-v0`` (a ``-singletask-taskN`` name is
            accepted and means the same data: OGBench relabels rewards at load time).
        episodes: training episodes; each has ``max_episode_steps`` rows.
        val_episodes: validation episodes (OGBench's own splits are ~10% of the training size).
        seed: base seed; episode ``i`` of a split is fully determined by ``(seed, split, i)``.
        max_episode_steps: steps per episode (OGBench uses 1001).
        noise: play: plan-noise scale; noisy: upper bound of the per-episode action-noise scale.
        noise_smoothing: Gaussian smoothing (in steps) of the plan noise, play only.
        min_norm: Markov oracles' minimum norm of the relative position, noisy only.
        p_random_action: probability of a uniform random action per step; ``None`` takes
            OGBench's value for the dataset (0 for play, 0.1 noisy cube/scene, 0.2 noisy puzzle).
    """

    name: str
    episodes: int
    val_episodes: int = 10
    seed: int = 0
    max_episode_steps: int = EPISODE_STEPS
    noise: float = 0.1
    noise_smoothing: float = 0.5
    min_norm: float = 0.4
    p_random_action: float | None = None

    @property
    def parsed(self) -> EnvName:
        return parse_name(self.name)

    @property
    def random_action_prob(self) -> float:
        if self.p_random_action is not None:
            return self.p_random_action
        parsed = self.parsed
        if parsed.dataset_type == "play":
            return 0.0
        return 0.2 if "puzzle" in parsed.family else 0.1


@dataclass
class GenerationStats:
    """What a generation run produced, for logs and the data-ready note."""

    train_path: str
    val_path: str
    train_transitions: int
    val_transitions: int
    seconds: float
    retried_episodes: int
    subtasks_started: int
    subtasks_completed: int
    config: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


@dataclass
class _Episode:
    arrays: dict[str, np.ndarray]
    retries: int
    subtasks_started: int
    subtasks_completed: int


def _episode_seed(seed: int, split: str, index: int, attempt: int) -> int:
    # A 32-bit seed for both np.random (the oracles, OGBench's task draws) and env.reset.
    ss = np.random.SeedSequence([seed, _SPLIT_STREAM[split], index, attempt])
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def _make_oracles(env, config: GenerationConfig) -> dict:
    """The oracle for each target task the env can draw (OGBench's pairing of tasks and oracles)."""
    from ogbench.manipspace.oracles.markov.button_markov import ButtonMarkovOracle
    from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle
    from ogbench.manipspace.oracles.markov.drawer_markov import DrawerMarkovOracle
    from ogbench.manipspace.oracles.markov.window_markov import WindowMarkovOracle
    from ogbench.manipspace.oracles.plan.button_plan import ButtonPlanOracle
    from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle
    from ogbench.manipspace.oracles.plan.drawer_plan import DrawerPlanOracle
    from ogbench.manipspace.oracles.plan.window_plan import WindowPlanOracle

    family = config.parsed.family.removeprefix("visual-")
    if config.parsed.dataset_type == "play":
        kw = dict(env=env, noise=config.noise, noise_smoothing=config.noise_smoothing)
        cube, button = CubePlanOracle(**kw), ButtonPlanOracle
        drawer, window = DrawerPlanOracle(**kw), WindowPlanOracle(**kw)
    else:
        kw = dict(env=env, min_norm=config.min_norm)
        cube = CubeMarkovOracle(**kw, max_step=100 if family == "scene" else 200)
        button, drawer, window = (
            ButtonMarkovOracle,
            DrawerMarkovOracle(**kw),
            WindowMarkovOracle(**kw),
        )
    if family.startswith("cube"):
        return {"cube": cube}
    if family == "scene":
        return {"cube": cube, "button": button(**kw), "drawer": drawer, "window": window}
    if family.startswith("puzzle"):
        # Puzzle buttons are pressed with a closed gripper.
        return {"button": button(**kw, gripper_always_closed=True)}
    raise ValueError(f"no scripted oracle for env family {family!r}")


def _stack_probability(family: str) -> float:
    """OGBench's per-episode chance that a new cube target sits on another cube."""
    ranges = {"single": (0.0, 0.0), "double": (0.0, 0.25), "triple": (0.05, 0.35)}
    ranges |= {"quadruple": (0.1, 0.5), "octuple": (0.0, 0.35)}
    for key, (lo, hi) in ranges.items():
        if family.endswith(key):
            return lo if lo == hi else float(np.random.uniform(lo, hi))
    return 0.5


def _scene_episode_healthy(qpos: np.ndarray) -> bool:
    """OGBench's scene check: the cube stays visible unless it is inside the drawer.

    ``qpos [T, nq]``; qpos[14:17] is the cube's position.
    """
    xyz = qpos[:, 14:17]
    too_far_right = (xyz[:, 1] >= 0.29).any()
    left_not_in_drawer = ((xyz[:, 1] <= -0.3) & ((xyz[:, 2] < 0.06) | (xyz[:, 2] > 0.08))).any()
    return not (too_far_right or left_not_in_drawer)


def _run_episode(env, oracles: dict, config: GenerationConfig, seed: int) -> _Episode:
    """One episode of ``config.max_episode_steps`` steps, the global RNG seeded with ``seed``."""
    ob, info = reset(env, seed)
    family = config.parsed.family
    noisy = config.parsed.dataset_type == "noisy"
    p_random = config.random_action_prob
    p_stack = _stack_probability(family)
    xi = float(np.random.uniform(0, config.noise)) if noisy else 0.0
    agent = oracles[info["privileged/target_task"]]
    agent.reset(ob, info)
    started, completed = 1, 0

    rows: dict[str, list] = {k: [] for k in ("observations", "actions", "qpos", "qvel")}
    has_buttons = hasattr(env.unwrapped, "_cur_button_states")
    if has_buttons:
        rows["button_states"] = []
    for _ in range(config.max_episode_steps):
        if p_random > 0 and np.random.rand() < p_random:
            # Uniform over the action box, drawn from the seeded global RNG (not the action
            # space's own unseeded one) so episodes replay exactly.
            action = np.random.uniform(-1.0, 1.0, size=5)
        else:
            action = np.asarray(agent.select_action(ob, info), dtype=np.float64)
            if noisy:
                scale = np.array([xi, xi, xi, xi * 3, xi * 10])
                action = action + np.random.normal(0.0, scale, action.shape)
        action = np.clip(action, -1.0, 1.0)
        next_ob, _, terminated, truncated, info = env.step(action)
        if agent.done:
            completed += bool(info["success"])
            agent_ob, agent_info = env.unwrapped.set_new_target(p_stack=p_stack)
            agent = oracles[agent_info["privileged/target_task"]]
            agent.reset(agent_ob, agent_info)
            started += 1
        rows["observations"].append(ob)
        rows["actions"].append(action)
        rows["qpos"].append(info["prev_qpos"])
        rows["qvel"].append(info["prev_qvel"])
        if has_buttons:
            rows["button_states"].append(info["prev_button_states"])
        ob = next_ob
        if terminated or truncated:
            break

    steps = len(rows["actions"])
    terminals = np.zeros(steps, dtype=bool)
    terminals[-1] = True
    arrays = {
        "observations": np.asarray(rows["observations"], dtype=np.float32),
        "actions": np.asarray(rows["actions"], dtype=np.float32),
        "terminals": terminals,
        "qpos": np.asarray(rows["qpos"], dtype=np.float32),
        "qvel": np.asarray(rows["qvel"], dtype=np.float32),
    }
    if has_buttons:
        arrays["button_states"] = np.asarray(rows["button_states"], dtype=np.int64)
    return _Episode(arrays, 0, started, completed)


# Each worker process builds its env and oracles once; episodes then run back to back.
_WORKER: dict = {}


def _worker_init(config: GenerationConfig) -> None:
    # Physics and the oracles are single-threaded; extra BLAS threads only fight for the cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import ogbench

    parsed = config.parsed
    env = ogbench.make_env_and_datasets(
        parsed.dataset_name,
        env_only=True,
        terminate_at_goal=False,
        mode="data_collection",
        max_episode_steps=config.max_episode_steps,
    )
    env = finite_actions(env)
    _WORKER.update(env=env, oracles=_make_oracles(env, config), config=config)


def _worker_episode(job: tuple[str, int]) -> _Episode:
    split, index = job
    env, oracles, config = _WORKER["env"], _WORKER["oracles"], _WORKER["config"]
    attempt = 0
    while True:
        episode = _run_episode(
            env, oracles, config, _episode_seed(config.seed, split, index, attempt)
        )
        if "scene" not in config.parsed.family or _scene_episode_healthy(episode.arrays["qpos"]):
            episode.retries = attempt
            return episode
        attempt += 1


def _iter_episodes(
    config: GenerationConfig, jobs: Sequence[tuple[str, int]], workers: int
) -> Iterator[_Episode]:
    """Episodes in ``jobs`` order; the same for any ``workers`` since each is seeded alone."""
    if workers <= 1:
        _worker_init(config)
        try:
            yield from map(_worker_episode, jobs)
        finally:
            _WORKER["env"].close()
            _WORKER.clear()
        return
    # spawn: a fresh interpreter per worker, so no GL context or torch thread pool is inherited.
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_worker_init, initargs=(config,)) as pool:
        yield from pool.imap(_worker_episode, jobs, chunksize=1)


def _concat(episodes: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([e[k] for e in episodes]) for k in episodes[0]}


def save_npz_atomic(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` with ``np.savez_compressed`` to ``path`` atomically.

    The data goes to a temporary file in the same directory, is flushed to disk, then renamed
    over ``path``: a crash leaves either the old file or the new one, never half of one.
    """

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            # Named explicitly, so an array called "allow_pickle" is an error, not the flag;
            # and an object array, which np.load would refuse to read back, fails here.
            np.savez_compressed(f, allow_pickle=False, **arrays)

    atomic_write(path, write)


def dataset_paths(out: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """``(train, val)`` paths for dataset ``name`` in directory ``out`` (or at file ``out``)."""
    out = Path(out).expanduser()
    if out.suffix == ".npz":
        return out, out.with_name(out.name[: -len(".npz")] + "-val.npz")
    stem = parse_name(name).dataset_name
    return out / f"{stem}.npz", out / f"{stem}-val.npz"


def generate_dataset(
    config: GenerationConfig,
    out: str | os.PathLike,
    workers: int = 1,
    progress: bool = True,
    on_episode: Callable[[int], None] | None = None,
) -> GenerationStats:
    """Generate a dataset and its validation split with OGBench's oracles.

    Args:
        config: what to generate.
        out: a directory (files are named after the dataset, e.g. ``cube-single-play-v0.npz``)
            or a ``.npz`` path (the validation file gets ``-val`` before the suffix).
        workers: worker processes; the arrays do not depend on it.
        progress: show a tqdm bar over episodes.
        on_episode: called with the number of episodes done after each one (tests use it).

    Returns:
        GenerationStats with paths, transition counts and timing. Both files are written only
        after every episode is done, each atomically, the validation file first.
    """
    from tqdm import tqdm

    train_path, val_path = dataset_paths(out, config.name)
    check_output_dir(train_path.parent)  # a read-only or full disk fails before any episode
    jobs = [("train", i) for i in range(config.episodes)]
    jobs += [("val", i) for i in range(config.val_episodes)]
    start = time.perf_counter()
    done: dict[str, list[dict[str, np.ndarray]]] = {"train": [], "val": []}
    retries = started = completed = 0
    bar = tqdm(total=len(jobs), desc=config.parsed.dataset_name, unit="ep", disable=not progress)
    with bar:
        for n, ((split, _), episode) in enumerate(
            zip(jobs, _iter_episodes(config, jobs, workers), strict=True), start=1
        ):
            done[split].append(episode.arrays)
            retries += episode.retries
            started += episode.subtasks_started
            completed += episode.subtasks_completed
            bar.update(1)
            bar.set_postfix(subtasks=f"{completed}/{started}", retries=retries)
            if on_episode is not None:
                on_episode(n)
    train = _concat(done["train"])
    val = _concat(done["val"]) if done["val"] else {k: v[:0] for k, v in train.items()}
    save_npz_atomic(val_path, val)
    save_npz_atomic(train_path, train)
    return GenerationStats(
        train_path=str(train_path),
        val_path=str(val_path),
        train_transitions=len(train["actions"]),
        val_transitions=len(val["actions"]),
        seconds=time.perf_counter() - start,
        retried_episodes=retries,
        subtasks_started=started,
        subtasks_completed=completed,
        config=asdict(config),
    )


# ----------------------------------------------------------------------------- loading


@dataclass
class Dataset:
    """A single-task transition dataset, relabelled by OGBench (one row per transition).

    Attributes:
        observations: ``[N, O]`` float32, state ``s_t``.
        actions: ``[N, A]`` float32, action ``a_t`` in [-1, 1].
        next_observations: ``[N, O]`` float32, state ``s_{t+1}``.
        rewards: ``[N]`` float32, OGBench's single-task reward at ``s_t``: (sub-goals met) -
            (sub-goals), so 0 exactly where the task is solved.
        masks: ``[N]`` float32, 0 where ``s_t`` solves the task (no bootstrapping), else 1.
        terminals: ``[N]`` float32, 1 at the last transition of each trajectory.
        name: the single-task name it was loaded as, e.g. ``cube-single-play-singletask-task2-v0``.
        sources: the files it came from.
    """

    observations: np.ndarray
    actions: np.ndarray
    next_observations: np.ndarray
    rewards: np.ndarray
    masks: np.ndarray
    terminals: np.ndarray
    name: str
    sources: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def action_dim(self) -> int:
        return self.actions.shape[1]

    def as_dict(self) -> dict[str, np.ndarray]:
        """The arrays under OGBench's key names."""
        keys = ("observations", "actions", "next_observations", "rewards", "masks", "terminals")
        return {k: getattr(self, k) for k in keys}


class DatasetError(ValueError):
    """A dataset file is missing, unreadable, or does not match its environment."""


# Deflate expands at most ~1032-fold; a member declaring more is damaged or a zip bomb.
_DEFLATE_MAX_RATIO = 1032
# What reading a damaged or hostile .npz can raise, from zipfile, zlib and numpy's header
# parser (which tokenizes and evaluates the header as a Python literal).
_NPZ_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    ValueError,
    OSError,
    EOFError,
    SyntaxError,
    tokenize.TokenError,
    RecursionError,
    NotImplementedError,
)


def _check_member(path: Path, info: zipfile.ZipInfo) -> None:
    """Refuse a member whose declared size its compressed bytes cannot hold, before any
    of it is read (np.load allocates the declared size up front)."""
    stored, deflated = zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED
    if info.compress_type not in (stored, deflated):
        raise DatasetError(
            f"{path}: member {info.filename!r} uses zip compression method "
            f"{info.compress_type}; .npz files are stored or deflated"
        )
    most = info.compress_size * (1 if info.compress_type == stored else _DEFLATE_MAX_RATIO)
    if info.file_size > most + 64:
        raise DatasetError(
            f"{path}: member {info.filename!r} declares {info.file_size} bytes, more than its "
            f"{info.compress_size} stored bytes can hold (damaged, or a zip bomb)"
        )


def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array in an ``.npz`` without decompressing the data.

    The size each header declares must be what its zip member holds, so that neither a
    damaged header nor a damaged zip entry makes a reader allocate more than the file has.
    """
    headers = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                member = info.filename
                if not member.endswith(".npy"):
                    continue
                _check_member(path, info)
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                    offset = f.tell()
                key = member[: -len(".npy")]
                if dtype.hasobject:
                    raise DatasetError(
                        f"{path}: key {key!r} holds Python objects (pickle); refused"
                    )
                if any(n < 0 for n in shape):
                    raise DatasetError(f"{path}: key {key!r} declares a negative shape {shape}")
                size = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if offset + size != info.file_size:
                    raise DatasetError(
                        f"{path}: key {key!r} declares shape {shape} of {dtype} ({size} bytes), "
                        f"its zip member holds {info.file_size - offset}"
                    )
                headers[key] = (shape, dtype)
    except _NPZ_ERRORS as e:
        raise DatasetError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from e
    return headers


@dataclass(frozen=True)
class _EnvFacts:
    obs_dim: int
    action_dim: int
    nq: int
    nv: int
    num_buttons: int | None


def _env_facts(env) -> _EnvFacts:
    u = env.unwrapped
    ob, _ = env.reset(seed=0)
    buttons = getattr(u, "_num_buttons", None) if hasattr(u, "_cur_button_states") else None
    return _EnvFacts(len(ob), 5, u._model.nq, u._model.nv, buttons)


def validate_file(path: str | os.PathLike, facts: _EnvFacts, env_name: str) -> int:
    """Check an OGBench dataset file's keys, dtypes and shapes against the env; returns N.

    Raises:
        DatasetError naming the file and the key whose presence, dtype or shape is wrong.
    """
    path = Path(path)
    headers = _npz_headers(path)
    expected: dict[str, tuple[int, ...]] = {
        "observations": (facts.obs_dim,),
        "actions": (facts.action_dim,),
        "terminals": (),
        "qpos": (facts.nq,),
        "qvel": (facts.nv,),
    }
    if facts.num_buttons is not None:
        expected["button_states"] = (facts.num_buttons,)
    for key in REQUIRED_KEYS + ("qpos",) + (("button_states",) if facts.num_buttons else ()):
        if key not in headers:
            raise DatasetError(
                f"{path}: missing key {key!r} (has {sorted(headers)}); OGBench's single-task "
                f"relabelling for {env_name} needs {sorted(expected)}"
            )
    n = headers["observations"][0][0] if headers["observations"][0] else 0
    for key, tail in expected.items():
        if key not in headers:
            continue
        shape, dtype = headers[key]
        if dtype.kind not in "biuf":
            raise DatasetError(f"{path}: key {key!r} has dtype {dtype}, expected numbers")
        if tuple(shape) != (n, *tail):
            want = "[" + ", ".join(["N", *map(str, tail)]) + "]"
            raise DatasetError(
                f"{path}: key {key!r} has shape {tuple(shape)}, expected {want} with N={n} "
                f"(the length of 'observations') for {env_name}"
            )
    if n == 0:
        raise DatasetError(f"{path}: no transitions")
    return n


def _dataset_files(parsed: EnvName, path: str | os.PathLike | None, dataset_dir: str) -> list[Path]:
    """The training files of a dataset: one ``.npz`` or a directory of ``.npz`` slices."""
    stem = parsed.dataset_name
    if path is None:
        root = Path(dataset_dir).expanduser()
        candidates = [root / f"{stem}.npz", root / stem]
    else:
        candidates = [Path(path).expanduser()]
    for cand in candidates:
        if cand.is_file():
            return [cand]
        if cand.is_dir():
            if (cand / f"{stem}.npz").is_file():
                return [cand / f"{stem}.npz"]
            # A directory of slices (OGBench's 100M-transition datasets): every .npz but the
            # validation files, in name order.
            slices = sorted(p for p in cand.glob("*.npz") if not p.name.endswith("-val.npz"))
            if slices:
                return slices
            raise DatasetError(f"{cand}: no .npz files for {stem}")
    looked = ", ".join(str(c) for c in candidates)
    raise DatasetError(
        f"dataset {stem} not found (looked at {looked}). OGBench datasets cannot be downloaded "
        f"here; generate one with `qgf datagen --env {stem} --out DIR`, then pass DIR "
        "(`qgf train --data DIR`, or path=DIR from Python)."
    )


def _val_file(train: Path) -> Path:
    return train.with_name(train.name[: -len(".npz")] + "-val.npz")


def load_dataset(
    name: str,
    path: str | os.PathLike | None = None,
    split: str = "train",
    dataset_dir: str = DEFAULT_DATASET_DIR,
    max_files: int | None = None,
    env=None,
) -> Dataset:
    """Load an OGBench dataset (official or generated) with single-task rewards and masks.

    Files are read by OGBench's own ``load_dataset`` and relabelled by OGBench's own
    ``relabel_dataset`` after their keys and shapes are checked against the env.

    Args:
        name: single-task name, e.g. ``cube-single-play-singletask-task2-v0`` (a name without
            ``-singletask`` gets the family's default task).
        path: a ``.npz`` file, a directory holding ``<dataset>.npz``, or a directory of
            ``.npz`` slices (OGBench's 100M-transition datasets). ``None``: ``dataset_dir``.
        split: ``train`` or ``val`` (``<file>-val.npz`` next to each training file).
        dataset_dir: where OGBench keeps downloaded datasets.
        max_files: for a directory of slices, read only the first this many.
        env: an env of the same name to relabel with (made if ``None``).

    Returns:
        A :class:`Dataset`.

    Raises:
        DatasetError: a file is missing, has a missing key or a wrong shape, or holds pickles.
    """
    import ogbench
    from ogbench.relabel_utils import relabel_dataset

    from core.envs import make_env

    parsed = parse_name(name)
    if not parsed.singletask:
        parsed = parse_name(f"{parsed.family}-{parsed.dataset_type}-singletask-v0")
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    files = _dataset_files(parsed, path, dataset_dir)[:max_files]
    if split == "val":
        files = [_val_file(f) for f in files]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DatasetError(f"validation file(s) missing: {', '.join(missing)}")
    if env is None:
        env = make_env(parsed.name)
    facts = _env_facts(env)
    for f in files:
        validate_file(f, facts, parsed.name)

    parts = []
    for f in files:
        try:
            part = ogbench.load_dataset(str(f), compact_dataset=False, add_info=True)
        except _NPZ_ERRORS as e:  # data past its checked headers: a bad CRC, bad deflate data
            raise DatasetError(f"{f}: its arrays cannot be read ({type(e).__name__}: {e})") from e
        relabel_dataset(parsed.env_id, env, part)
        parts.append(part)
    keys = ("observations", "actions", "next_observations", "rewards", "masks", "terminals")
    arrays = {
        k: np.concatenate([p[k] for p in parts]) if len(parts) > 1 else parts[0][k] for k in keys
    }
    return Dataset(**arrays, name=parsed.name, sources=tuple(str(f) for f in files))


# ----------------------------------------------------------------------------- samples


def compact_sample(dataset: Dataset, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A uniform random subset of a dataset's states and actions, for nearest-neighbour queries.

    Args:
        dataset: the dataset.
        n: rows to keep (all of them if the dataset is smaller).
        seed: which rows.

    Returns:
        ``{"observations": [n, O] float32, "actions": [n, A] float32, "indices": [n] int64}``,
        rows in dataset order; ``indices`` are their rows in ``dataset``.
    """
    rng = np.random.default_rng(seed)
    size = len(dataset)
    idx = np.sort(rng.choice(size, size=min(n, size), replace=False)).astype(np.int64)
    return {
        "observations": np.ascontiguousarray(dataset.observations[idx], dtype=np.float32),
        "actions": np.ascontiguousarray(dataset.actions[idx], dtype=np.float32),
        "indices": idx,
    }
