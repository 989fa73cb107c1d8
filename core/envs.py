"""OGBench manipulation environments: names, construction, seeding, snapshots, rendering.

OGBench names datasets, not environments: ``cube-single-play-singletask-task2-v0`` is the
``cube-single`` family, the ``play`` dataset, single-task reward for task 2. OGBench's own
``make_env_and_datasets(name, env_only=True)`` turns such a name into a gymnasium env; this
module checks the name first so a typo gets a list of valid names instead of a registry error.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any, NamedTuple

import numpy as np

# OGBench's manipulation envs build a float64 Box at every ``action_space`` access (each
# reset, each step's checks), and gymnasium warns each time, with raw terminal escape codes,
# that it is cast to float32: harmless, and noise in every command's output.
warnings.filterwarnings("ignore", message=".*precision lowered by casting")

DATASET_TYPES = ("play", "noisy")
_NAME = re.compile(
    r"^(?P<family>(?:visual-)?[a-z]+(?:-[a-z0-9]+)?)-(?P<dtype>(?!singletask-)[a-z]+)"
    r"(?:-singletask(?:-task(?P<task>\d+))?)?-v0$"
)


@dataclass(frozen=True)
class EnvName:
    """A parsed dataset-style OGBench name.

    ``family`` is the env family (``cube-single``, ``scene``, ``puzzle-3x3``); ``dataset_type``
    is ``play`` or ``noisy``; ``singletask`` says whether the name asks for the reward-based
    single-task env; ``task_id`` is its task (``None`` for a goal-conditioned name, 0 for the
    family's default task, as OGBench's ``...-singletask-v0`` means).
    """

    family: str
    dataset_type: str
    singletask: bool
    task_id: int | None

    @property
    def dataset_name(self) -> str:
        """The file stem OGBench stores this dataset under, e.g. ``cube-single-play-v0``."""
        return f"{self.family}-{self.dataset_type}-v0"

    @property
    def env_id(self) -> str:
        """The gymnasium id of the environment, e.g. ``cube-single-singletask-task2-v0``."""
        if not self.singletask:
            return f"{self.family}-v0"
        suffix = "" if not self.task_id else f"-task{self.task_id}"
        return f"{self.family}-singletask{suffix}-v0"

    @property
    def name(self) -> str:
        """The full dataset-style name this was parsed from (normalised)."""
        if not self.singletask:
            return self.dataset_name
        suffix = "" if not self.task_id else f"-task{self.task_id}"
        return f"{self.family}-{self.dataset_type}-singletask{suffix}-v0"


@lru_cache(maxsize=1)
def env_families() -> tuple[str, ...]:
    """Manipulation env families OGBench registers (``cube-single``, ``scene``, ...), sorted."""
    import gymnasium
    import ogbench  # noqa: F401  (registers the envs)

    families = set()
    for env_id, spec in gymnasium.registry.items():
        if "manipspace" in str(spec.entry_point) and "singletask" not in env_id:
            families.add(env_id[: -len("-v0")])
    return tuple(sorted(families))


@lru_cache(maxsize=1)
def _task_counts() -> dict[str, int]:
    import gymnasium
    import ogbench  # noqa: F401

    counts: dict[str, int] = {}
    for env_id in gymnasium.registry:
        m = re.match(r"^(.*)-singletask-task(\d+)-v0$", env_id)
        if m:
            counts[m.group(1)] = max(counts.get(m.group(1), 0), int(m.group(2)))
    return counts


def valid_names(singletask: bool = True, visual: bool = False) -> list[str]:
    """Dataset-style names this module accepts, sorted.

    Args:
        singletask: include the ``-singletask-taskN`` variants (and the default-task
            ``-singletask`` one); goal-conditioned names are always included.
        visual: include the pixel-observation ``visual-*`` families.
    """
    names = []
    counts = _task_counts()
    for family in env_families():
        if family.startswith("visual-") and not visual:
            continue
        for dtype in DATASET_TYPES:
            names.append(f"{family}-{dtype}-v0")
            if singletask and family in counts:
                names.append(f"{family}-{dtype}-singletask-v0")
                names += [
                    f"{family}-{dtype}-singletask-task{t}-v0" for t in range(1, counts[family] + 1)
                ]
    return sorted(names)


def _name_error(name: str, why: str) -> ValueError:
    families = ", ".join(f for f in env_families() if not f.startswith("visual-"))
    return ValueError(
        f"{why}: {name!r}. A name is FAMILY-DATASET[-singletask[-taskN]]-v0 with FAMILY one of "
        f"{families} (or visual-FAMILY), DATASET one of {', '.join(DATASET_TYPES)}, e.g. "
        "cube-single-play-singletask-task2-v0, scene-play-singletask-task2-v0, "
        "puzzle-3x3-play-singletask-task4-v0. All valid names: core.envs.valid_names()."
    )


def parse_name(name: str) -> EnvName:
    """Parse a dataset-style OGBench name; a wrong one raises ``ValueError`` listing valid forms."""
    m = _NAME.match(name)
    if name.removesuffix("-v0") in env_families():
        raise _name_error(name, "an env id, not a dataset name (add the dataset type)")
    if m is None:
        raise _name_error(name, "not an OGBench manipulation dataset name")
    family, dtype, task = m.group("family"), m.group("dtype"), m.group("task")
    if family not in env_families():
        raise _name_error(name, f"unknown env family {family!r}")
    if dtype not in DATASET_TYPES:
        raise _name_error(name, f"unknown dataset type {dtype!r}")
    singletask = "-singletask" in name
    task_id = None
    if singletask:
        task_id = 0 if task is None else int(task)
        n_tasks = _task_counts().get(family, 0)
        if not 0 <= task_id <= n_tasks:
            raise _name_error(name, f"{family} has tasks 1..{n_tasks}, not {task_id}")
    return EnvName(family, dtype, singletask, task_id)


# ----------------------------------------------------------------------------- construction


def make_env(name: str, seed: int | None = None, width: int = 200, height: int = 200, **kwargs):
    """Make an OGBench manipulation env from its dataset-style name, through OGBench's own API.

    Args:
        name: e.g. ``cube-single-play-singletask-task2-v0``; a wrong name raises ``ValueError``
            listing the valid forms.
        seed: if given, the env is reset with :func:`reset` (global numpy RNG and env seeded), so
            it is ready to step and to render.
        width, height: the env's own render size (OGBench's default 200x200); larger renderers
            come from :func:`make_renderer`.
        **kwargs: passed to the env (``terminate_at_goal``, ``mode``, ``max_episode_steps``, ...).

    Returns:
        The gymnasium env, in OGBench's usual TimeLimit/OrderEnforcing wrappers and, outside
        them, :class:`FiniteActions`.
    """
    import ogbench

    from core.gl import import_physics

    parsed = parse_name(name)
    import_physics()
    env = ogbench.make_env_and_datasets(
        parsed.name, env_only=True, width=width, height=height, **kwargs
    )
    env = finite_actions(env)
    if seed is not None:
        reset(env, seed)
    return env


class NonFiniteActionError(ValueError):
    """An action with a NaN or an infinity reached an env's ``step``."""


def finite_actions(env):
    """``env`` behind the boundary no NaN or infinity crosses (``FiniteActions``)."""
    return _finite_actions_class()(env)


@cache
def _finite_actions_class() -> type:
    # Built on first use: gymnasium comes with the simulator, not with every import of core.
    import gymnasium

    class FiniteActions(gymnasium.Wrapper):
        """Refuses a non-finite action before the simulator sees it.

        Guidance never executes a non-finite action (a row that goes NaN is flagged and
        kept where it was; ``core.guidance``), so this raising means a bug upstream; MuJoCo
        itself would take the NaN and return a silently corrupt state. The check is one
        ``isfinite`` over a handful of numbers per step. The wrapper keeps no state, so
        snapshots skip it (``_wrappers``).
        """

        def step(self, action):
            a = np.asarray(action)
            if not np.isfinite(a).all():
                raise NonFiniteActionError(
                    f"refused a non-finite action before env.step: {np.array2string(a)}"
                )
            return self.env.step(action)

    return FiniteActions


def reset(env, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
    """Reset ``env`` reproducibly: the same seed gives the same start state and task.

    OGBench draws a goal-conditioned env's task from the *global* ``np.random`` and the start
    state from the env's own generator, so both are seeded. ``seed=None`` seeds neither. The
    start state and every step after it repeat exactly; only the arm part of a goal-conditioned
    env's ``info['goal']`` does not, since OGBench settles the goal scene with two random actions
    from an unseeded action space.

    Returns:
        ``(observation [O], info)`` as ``env.reset`` returns them.
    """
    if seed is None:
        return env.reset(options=options)
    np.random.seed(seed)
    return env.reset(seed=seed, options=options)


# ----------------------------------------------------------------------------- snapshots

# MuJoCo state: everything mj_step reads (qpos, qvel, act, warm start, time, ctrl, applied
# forces, mocap poses, equality activations, user data).
_PHYSICS_SPEC = "mjSTATE_INTEGRATION"
# Model fields OGBench changes while an episode runs: colours of cubes, targets and buttons,
# target-site positions, and the drawer/window locks, which are joint damping (physics!).
_MODEL_FIELDS = ("geom_rgba", "mat_rgba", "site_pos", "dof_damping")
# Derived data the env reads between steps (effector pose, gripper contact). After mj_step they
# hold the values of the last substep's forward pass, not those of the final state, so a fresh
# mj_forward would change them and the next action's IK target: they are kept as they were.
_DERIVED_FIELDS = ("site_xpos", "site_xmat", "cfrc_ext")
# Env attributes that change during an episode (task, sub-task targets, button states, step
# bookkeeping). Each env class has a subset; absent ones are skipped.
_ENV_ATTRS = (
    "_success",
    "_reset_next_step",
    "_prev_qpos",
    "_prev_qvel",
    "cur_task_id",
    "_cur_goal_ob",
    "_render_goal",
    "_target_task",
    "_target_block",
    "_target_button",
    "_target_button_states",
    "_target_drawer_pos",
    "_target_window_pos",
    "_cur_button_states",
    "_prev_button_states",
)
# Wrapper attributes: the TimeLimit step counter and OrderEnforcing's "has been reset" flag.
_WRAPPER_ATTRS = ("_elapsed_steps", "_has_reset")


@dataclass
class EnvSnapshot:
    """The complete state of a running OGBench manipulation episode.

    Restoring it (:func:`restore`) and replaying the same actions reproduces the same
    observations, rewards and infos bit for bit. Everything is plain numpy arrays plus
    JSON-able scalars, so :meth:`to_flat` / :meth:`from_flat` store it without pickle.

    Attributes:
        env_id: gymnasium id of the env the snapshot came from.
        physics: MuJoCo state vector ``[S]`` (``mjSTATE_INTEGRATION``).
        arrays: model fields, derived data and array-valued env attributes, by name
            (``model/geom_rgba``, ``derived/site_xpos``, ``env/_cur_button_states``, ...).
        meta: JSON-able scalars: env attributes, wrapper counters, the env's RNG state, and
            the current task (``cur_task_info``) when it is not one of the env's numbered tasks.
        observation: the observation at the snapshot ``[O]``.
    """

    env_id: str
    physics: np.ndarray
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    observation: np.ndarray | None = None

    def to_flat(self, prefix: str = "") -> dict[str, np.ndarray]:
        """All of it as ``{key: array}`` (non-object dtypes only; JSON goes in a string array).

        ``prefix`` is prepended to every key so that many snapshots can share one ``.npz``.
        """
        head = {"env_id": self.env_id, "meta": self.meta}
        flat = {
            f"{prefix}header": np.array(json.dumps(head)),
            f"{prefix}physics": self.physics,
        }
        if self.observation is not None:
            flat[f"{prefix}observation"] = self.observation
        for key, value in self.arrays.items():
            flat[f"{prefix}arrays/{key}"] = value
        return flat

    @classmethod
    def from_flat(cls, flat: dict[str, np.ndarray], prefix: str = "") -> EnvSnapshot:
        """Inverse of :meth:`to_flat` (``flat`` may be an open ``np.load`` file)."""
        key = f"{prefix}header"
        if key not in flat:
            raise ValueError(f"no snapshot under prefix {prefix!r}: missing {key!r}")
        head = json.loads(str(flat[key][()]))
        arrays_prefix = f"{prefix}arrays/"
        arrays = {
            k[len(arrays_prefix) :]: np.asarray(flat[k])
            for k in flat
            if k.startswith(arrays_prefix)
        }
        obs_key = f"{prefix}observation"
        return cls(
            env_id=head["env_id"],
            physics=np.asarray(flat[f"{prefix}physics"]),
            arrays=arrays,
            meta=head["meta"],
            observation=np.asarray(flat[obs_key]) if obs_key in flat else None,
        )


def _spec() -> int:
    import mujoco

    return int(getattr(mujoco.mjtState, _PHYSICS_SPEC))


def _wrappers(env):
    """The env's stateful wrappers, outermost first: the stateless ``FiniteActions`` is
    skipped, so snapshots index the same wrappers with or without it."""
    while True:
        if not isinstance(env, _finite_actions_class()):
            yield env
        if not hasattr(env, "env"):
            return
        env = env.env


def _to_json_scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"not a JSON scalar: {type(value).__name__}")


def snapshot(env, observation: np.ndarray | None = None) -> EnvSnapshot:
    """Capture the state of a running episode of ``env`` (see :class:`EnvSnapshot`).

    ``observation``, if given, is stored with the snapshot (the viewer shows it without a step).
    """
    import mujoco

    u = env.unwrapped
    model, data = u._model, u._data
    if model is None:
        raise ValueError("the env has not been reset yet: nothing to snapshot")
    physics = np.empty(mujoco.mj_stateSize(model, _spec()))
    mujoco.mj_getState(model, data, physics, _spec())
    arrays = {f"model/{f}": getattr(model, f).copy() for f in _MODEL_FIELDS}
    arrays |= {f"derived/{f}": getattr(data, f).copy() for f in _DERIVED_FIELDS}
    meta: dict[str, Any] = {"env": {}, "wrappers": {}}
    for name in _ENV_ATTRS:
        if not hasattr(u, name):
            continue
        value = getattr(u, name)
        if isinstance(value, np.ndarray):
            arrays[f"env/{name}"] = value.copy()
        else:
            meta["env"][name] = _to_json_scalar(value)
    if getattr(u, "cur_task_id", 0) is None and getattr(u, "cur_task_info", None) is not None:
        meta["cur_task_info"] = {k: np.asarray(v).tolist() for k, v in u.cur_task_info.items()}
    pose = getattr(u, "_target_effector_pose", None)
    if pose is not None:
        arrays["env/_target_effector_pose"] = np.asarray(pose.wxyz_xyz).copy()
    for i, w in enumerate(_wrappers(env)):
        for name in _WRAPPER_ATTRS:
            if name in vars(w):
                meta["wrappers"][f"{i}/{name}"] = _to_json_scalar(vars(w)[name])
    meta["np_random"] = u.np_random.bit_generator.state
    obs = None if observation is None else np.array(observation, copy=True)
    return EnvSnapshot(env.spec.id if env.spec else type(u).__name__, physics, arrays, meta, obs)


def restore(env, snap: EnvSnapshot) -> np.ndarray:
    """Put ``env`` in the state of ``snap``; returns the observation there ``[O]``.

    ``env`` may be another instance than the one snapshotted, made from the same env id and
    reset at least once (any seed). Stepping it with the actions that followed the snapshot
    reproduces the original observations exactly.
    """
    import mujoco
    from ogbench.manipspace import lie

    u = env.unwrapped
    env_id = env.spec.id if env.spec else type(u).__name__
    if u._model is None:
        raise ValueError("reset the env once before restoring a snapshot into it")
    if env_id != snap.env_id:
        raise ValueError(f"snapshot is of {snap.env_id!r}, the env is {env_id!r}")
    model, data = u._model, u._data
    size = mujoco.mj_stateSize(model, _spec())
    if snap.physics.shape != (size,):
        raise ValueError(f"physics state has shape {snap.physics.shape}, this env needs ({size},)")

    for f in _MODEL_FIELDS:
        getattr(model, f)[...] = snap.arrays[f"model/{f}"]
    for name, value in snap.meta["env"].items():
        setattr(u, name, value)
    for key, value in snap.arrays.items():
        if key.startswith("env/") and key != "env/_target_effector_pose":
            setattr(u, key[len("env/") :], value.copy())
    if "env/_target_effector_pose" in snap.arrays:
        u._target_effector_pose = lie.SE3(wxyz_xyz=snap.arrays["env/_target_effector_pose"].copy())
    if "cur_task_info" in snap.meta:
        u.cur_task_info = {k: np.asarray(v) for k, v in snap.meta["cur_task_info"].items()}
    elif getattr(u, "cur_task_id", None) is not None:
        u.cur_task_info = u.task_infos[u.cur_task_id - 1]
    for i, w in enumerate(_wrappers(env)):
        for name in _WRAPPER_ATTRS:
            key = f"{i}/{name}"
            if key in snap.meta["wrappers"]:
                setattr(w, name, snap.meta["wrappers"][key])
    u.np_random.bit_generator.state = snap.meta["np_random"]

    # Fill every derived quantity (for rendering), then put back the state (a forward pass may
    # touch the warm start) and the derived values the env itself reads.
    mujoco.mj_setState(model, data, snap.physics, _spec())
    mujoco.mj_forward(model, data)
    mujoco.mj_setState(model, data, snap.physics, _spec())
    for f in _DERIVED_FIELDS:
        getattr(data, f)[...] = snap.arrays[f"derived/{f}"]
    return u.compute_observation()


# ----------------------------------------------------------------------------- rendering


def ensure_offscreen_buffer(model, width: int, height: int) -> None:
    """Grow the model's offscreen framebuffer to at least ``width`` x ``height``.

    OGBench sizes it to the env's render size; ``mujoco.Renderer`` refuses anything larger.
    Call before creating the renderer.
    """
    vis = model.vis.global_
    vis.offwidth = max(int(vis.offwidth), int(width))
    vis.offheight = max(int(vis.offheight), int(height))


def make_renderer(env, width: int, height: int, fast: bool = False):
    """A ``mujoco.Renderer`` of any size for ``env`` (the caller closes it).

    Args:
        fast: turn off multisampling, shadows and reflections for the model (about 5x faster on
            software GL). This changes the env's own renders too.
    """
    import mujoco

    u = env.unwrapped
    if u._model is None:
        raise ValueError("reset the env before rendering")
    ensure_offscreen_buffer(u._model, width, height)
    if fast:
        u._model.vis.quality.offsamples = 0
    renderer = mujoco.Renderer(u._model, height=height, width=width)
    if fast:
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = False
    return renderer


def render(env, renderer, camera: str | int = "front", out: np.ndarray | None = None) -> np.ndarray:
    """Render the env's current state with ``renderer``; ``[H, W, 3]`` uint8 (into ``out``)."""
    u = env.unwrapped
    renderer.update_scene(u._data, camera=camera, scene_option=u._scene_option)
    return renderer.render(out=out)


# ----------------------------------------------------------------------------- actions


class EETargets(NamedTuple):
    """End-effector targets of a chunk of actions.

    ``xyz [..., H, 3]``: world-frame pinch-point targets after each action; ``gripper [..., H]``:
    target gripper opening in [0, 1] (0 open, 1 closed) after each action.
    """

    xyz: np.ndarray
    gripper: np.ndarray


def action_scale(env) -> np.ndarray:
    """Per-dimension action scale ``[5]``: (dx, dy, dz) metres, dyaw radians, gripper."""
    return np.asarray(env.unwrapped.action_high, dtype=np.float64).copy()


def workspace_bounds(env) -> np.ndarray:
    """``[[x, y, z]_min, [x, y, z]_max]`` ``[2, 3]`` that effector targets are clipped to."""
    return np.asarray(env.unwrapped._workspace_bounds, dtype=np.float64).copy()


def effector_state(env) -> tuple[np.ndarray, float]:
    """The effector (pinch site) position ``[3]`` and gripper opening, as the env reads them."""
    u = env.unwrapped
    pos = u._data.site_xpos[u._pinch_site_id].copy()
    opening = float(np.clip(u._data.qpos[u._gripper_opening_joint_id] / 0.8, 0.0, 1.0))
    return pos, opening


def effector_state_at(env, snap: EnvSnapshot) -> tuple[np.ndarray, float]:
    """``effector_state`` at a snapshot's state (e.g. a past step), leaving ``env`` as it is."""
    import mujoco

    u = env.unwrapped
    data = mujoco.MjData(u._model)
    mujoco.mj_setState(u._model, data, snap.physics, _spec())
    # The env reads the effector from the derived site positions the snapshot keeps.
    pos = snap.arrays["derived/site_xpos"][u._pinch_site_id].copy()
    opening = float(np.clip(data.qpos[u._gripper_opening_joint_id] / 0.8, 0.0, 1.0))
    return pos, opening


def action_to_ee_targets(
    env,
    actions: np.ndarray,
    tracking: float = 1.0,
    start: tuple[np.ndarray, float] | None = None,
) -> EETargets:
    """Where a chunk of actions sends the end effector, in world coordinates.

    Each action sets the effector target to the current effector position plus
    ``action[:3] * scale``, clipped to the workspace, and the gripper target to the current
    opening plus ``action[4] * scale``, clipped to [0, 1], exactly as the env's ``set_control``
    does (scale and workspace are read from the env). A chunk is chained from the current state:
    action ``k+1`` starts from where the effector is after action ``k``, taken as
    ``p_k + tracking * (target_k - p_k)``.

    ``tracking=1`` (default) assumes the arm reaches each target, so ``xyz[..., 0, :]`` is
    the env's own target for the first action and the path is the commanded one. The arm's PD
    control covers about 45% of a commanded step within one 50 ms control step (measured on
    cube-single for action magnitudes 0.1 to 1), so ``tracking=0.45`` predicts where an open-loop
    chunk actually leaves the effector. The gripper is chained with full tracking.

    Args:
        env: a reset OGBench manipulation env (its current effector state is the start).
        actions: ``[H, 5]`` or ``[N, H, 5]`` normalised actions (in [-1, 1] for valid ones;
            larger ones are applied unclipped, as the env does).
        tracking: fraction of each commanded displacement the effector is taken to cover.
        start: ``(position [3], gripper opening)`` to chain from instead of the env's current
            effector state (e.g. ``effector_state_at`` of a past step).

    Returns:
        EETargets with ``xyz [H, 3]`` / ``[N, H, 3]`` and ``gripper [H]`` / ``[N, H]``.
    """
    actions = np.asarray(actions, dtype=np.float64)
    if actions.ndim not in (2, 3) or actions.shape[-1] != 5:
        raise ValueError(f"actions must be [H, 5] or [N, H, 5], got {actions.shape}")
    scale = action_scale(env)
    low, high = workspace_bounds(env)
    pos0, grip0 = effector_state(env) if start is None else start
    steps = actions * scale
    xyz = np.empty(actions.shape[:-1] + (3,))
    grip = np.empty(actions.shape[:-1])
    pos = np.broadcast_to(pos0, actions.shape[:-2] + (3,)).copy()
    g = np.full(actions.shape[:-2], grip0)
    for h in range(actions.shape[-2]):
        target = np.clip(pos + steps[..., h, :3], low, high)
        g = np.clip(g + steps[..., h, 4], 0.0, 1.0)
        xyz[..., h, :] = target
        grip[..., h] = g
        pos = pos + tracking * (target - pos)
    return EETargets(xyz, grip)
