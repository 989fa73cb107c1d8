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
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from core.envs import EnvName, parse_name

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
    np.random.seed(seed)
    family = config.parsed.family
    noisy = config.parsed.dataset_type == "noisy"
    p_random = config.random_action_prob
    ob, info = env.reset(seed=seed)
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    jobs = [("train", i) for i in range(config.episodes)]
    jobs += [("val", i) for i in range(config.val_episodes)]
    start = time.perf_counter()
    done: dict[str, list[dict[str, np.ndarray]]] = {"train": [], "val": []}
    retries = started = completed = 0
    bar = tqdm(total=len(jobs), desc=config.parsed.dataset_name, unit="ep", disable=not progress)
    with bar:
        for n, ((split, _), episode) in enumerate(
            zip(jobs, _iter_episodes(config, jobs, workers)), start=1
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
