"""The live demo's model: two to four panes of one env, in lockstep, for a talk.

Every pane plays the same episode start (the same env seed) with the same per-step noise
(``core.step.step_noise`` of the seed and the step index), so the only difference between
two panes is what the preset says: the weight, the estimator, best-of-N, or the checkpoint.
One pane may be *live*: the presenter's weight slider and estimator keys change it, and
only it.

A step of the demo::

    every pane not done:  env.step(its executed action)          (same step index k)
    panes that need a new chunk, grouped by networks:
        one guided_sample(obs [P, O], weight [P], noise [P*N, A]) per group,
        noise = step_noise(seed, k, N, A) repeated for each pane of the group
    all panes done:       hold the last frame a moment, then reset every pane from the
                          next seed of the seed list (auto-loop)

A group is the panes that share networks and estimator: ``guided_sample`` takes one
estimator per call. Panes at w = 0 join any group of their networks, since at w = 0 every
estimator gives exactly the unguided actions; so the default demo (w = 0 beside the live
weight) is one call per step, and four estimators side by side are four.

Like ``viewer.session.Session``, it imports no GUI: ``DemoSession`` is driven by
``viewer.worker.Worker`` (it has the ``step``/``done`` it needs) and publishes an immutable
``DemoFrame`` after every change, which the render thread and the window read.

Presets (``load_preset``) are TOML files; ``presets/`` holds one per shipped checkpoint.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import mujoco
import numpy as np
import torch

from core import envs
from core.defaults import DEFAULT_ENV, default_checkpoint, random_networks
from core.guidance import ESTIMATORS, DenoiseTrace, guided_sample
from core.render import CAMERA_PRESETS, Overlay
from core.step import MAX_CANDIDATES, MAX_STEPS, effector_paths, executed_candidate, step_noise
from viewer.session import FrameSpec, Session

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

MAX_PANES = 4
WEIGHT_GRID = (0.0, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
"""The weights the presenter's wheel, arrow and +/- keys step through (1-2-3-5 per decade)."""
DEFAULT_SEEDS = tuple(range(20))
DEFAULT_TARGET_FPS = 15.0
DEFAULT_HOLD = 1.5
DEFAULT_SPEED = 20.0
# Model fields that OGBench changes during an episode and that show (colours, targets): each
# pane's are drawn with its own, on the renderer's private copy of the model.
_SHOWN_MODEL_FIELDS = ("geom_rgba", "mat_rgba", "site_pos")
_STATE = mujoco.mjtState.mjSTATE_INTEGRATION


class PresetError(ValueError):
    """A demo preset that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class PaneSpec:
    """What one pane plays.

    Attributes:
        weight: guidance weight w (the live pane's starting weight).
        estimator: a name in ``core.guidance.ESTIMATORS``.
        pick_best: execute the best of the N candidates (best-of-N), else candidate 0.
        live: the presenter's slider and estimator keys drive this pane.
        checkpoint: another checkpoint of the same env (None: the demo's).
        label: caption override ("" makes one from the estimator and weight).
    """

    weight: float = 0.0
    estimator: str = "qgf"
    pick_best: bool = False
    live: bool = False
    checkpoint: Path | None = None
    label: str = ""

    def caption(self) -> str:
        """The pane's large caption: estimator and weight."""
        if self.label:
            return self.label
        text = f"{self.estimator}  w = {self.weight:g}" if self.weight else "unguided  w = 0"
        return text + ("  best-of-N" if self.pick_best else "")


@dataclass(frozen=True)
class DemoPreset:
    """A reproducible demo: the panes, the sampler, the camera, the speed and the seeds.

    Attributes:
        checkpoint: the demo's checkpoint (None: random weights for ``DEFAULT_ENV``).
        panes: one to four ``PaneSpec``; at most one is live.
        seeds: episode seeds, played in order and looped.
        steps, candidates: Euler steps T and candidates N of every pane.
        speed: env steps per second (0: as fast as possible).
        camera: camera preset (front, side, top, follow).
        target_fps: below this, while playing, the render scale drops.
        hold: seconds the last frame stays when every pane is done, before the next seed.
        source: the file it was read from, or None.
    """

    checkpoint: Path | None
    panes: tuple[PaneSpec, ...]
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    steps: int = 10
    candidates: int = 8
    speed: float = DEFAULT_SPEED
    camera: str = "front"
    target_fps: float = DEFAULT_TARGET_FPS
    hold: float = DEFAULT_HOLD
    source: Path | None = None

    @property
    def live(self) -> int | None:
        """Index of the live pane, or None."""
        return next((i for i, p in enumerate(self.panes) if p.live), None)


def default_preset(checkpoint: str | Path | None = None, weight: float = 0.03) -> DemoPreset:
    """Two panes: unguided (w = 0) on the left, the live slider's weight on the right."""
    if checkpoint is None:
        checkpoint = default_checkpoint()
    return DemoPreset(
        checkpoint=None if checkpoint is None else Path(checkpoint),
        panes=(PaneSpec(weight=0.0), PaneSpec(weight=weight, live=True)),
    )


# --- presets ----------------------------------------------------------------------------
_TOP_FIELDS = {
    "checkpoint",
    "seeds",
    "steps",
    "candidates",
    "speed",
    "camera",
    "target_fps",
    "hold",
    "pane",
}
_PANE_FIELDS = {"weight", "estimator", "best_of", "live", "checkpoint", "label"}


def load_preset(path: str | Path, checkpoint: str | Path | None = None) -> DemoPreset:
    """Read and check a TOML preset; raises ``PresetError`` naming the file and the field.

    Relative checkpoint paths are relative to the preset file. ``checkpoint``, when given,
    replaces the file's top-level one (``qgf view --demo CHECKPOINT --demo-preset FILE``).

    The format (every field optional but ``pane``)::

        checkpoint = "../checkpoints/cube-single-task2"
        seeds = [0, 1, 2]          # played in order, looped
        steps = 10                 # Euler steps T
        candidates = 8             # N
        speed = 20                 # env steps per second (0: as fast as possible)
        camera = "front"           # front, side, top, follow
        target_fps = 15            # below it the render scale drops while playing
        hold = 1.5                 # seconds the last frame stays before the next seed

        [[pane]]                   # one to four
        weight = 0.0
        [[pane]]
        weight = 0.03
        estimator = "qgf"          # any registered estimator
        best_of = false            # execute the best of the N candidates
        live = true                # the slider and the number keys drive it (one at most)
        checkpoint = "..."         # another checkpoint of the same env
        label = "QGF"              # caption (default: estimator and weight)
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise PresetError(f"cannot read demo preset {path}: {e.strerror or e}") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PresetError(f"demo preset {path} is not valid TOML: {e}") from e
    return parse_preset(data, base=path.parent, source=path, checkpoint=checkpoint)


def parse_preset(
    data: dict[str, Any],
    base: Path = Path("."),
    source: Path | None = None,
    checkpoint: str | Path | None = None,
) -> DemoPreset:
    """A ``DemoPreset`` from a parsed TOML document (``load_preset``'s checks)."""
    where = f"demo preset {source}" if source else "demo preset"

    def fail(name: str, why: str) -> PresetError:
        return PresetError(f"{where}: field '{name}': {why}")

    unknown = sorted(set(data) - _TOP_FIELDS)
    if unknown:
        raise fail(unknown[0], f"unknown field; known: {', '.join(sorted(_TOP_FIELDS))}")

    def number(table: dict, key: str, name: str, default: float, low: float = 0.0) -> float:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise fail(name, f"must be a number, got {value!r}")
        if not math.isfinite(value) or value < low:
            raise fail(name, f"must be a finite number >= {low:g}, got {value!r}")
        return float(value)

    def integer(key: str, low: int, high: int, default: int) -> int:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise fail(key, f"must be an integer in {low}..{high}, got {value!r}")
        return value

    def ckpt(value: Any, name: str) -> Path:
        if not isinstance(value, str) or not value:
            raise fail(name, f"must be a checkpoint directory path, got {value!r}")
        p = Path(value).expanduser()
        p = p if p.is_absolute() else base / p
        if not (p / "config.json").is_file():
            raise fail(name, f"{p} is not a checkpoint directory (no config.json)")
        return p.resolve()

    if checkpoint is not None:
        main = Path(checkpoint)
    elif "checkpoint" in data:
        main = ckpt(data["checkpoint"], "checkpoint")
    else:
        main = default_checkpoint()
    seeds = data.get("seeds", list(DEFAULT_SEEDS))
    if (
        not isinstance(seeds, list)
        or not seeds
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)
    ):
        raise fail("seeds", f"must be a non-empty list of integers >= 0, got {seeds!r}")
    camera = data.get("camera", "front")
    if camera not in CAMERA_PRESETS:
        raise fail("camera", f"must be one of {', '.join(CAMERA_PRESETS)}, got {camera!r}")
    panes_data = data.get("pane")
    if not isinstance(panes_data, list) or not 1 <= len(panes_data) <= MAX_PANES:
        got = len(panes_data) if isinstance(panes_data, list) else panes_data
        raise fail("pane", f"needs 1 to {MAX_PANES} [[pane]] tables, got {got!r}")
    panes = []
    for i, p in enumerate(panes_data):
        name = f"pane[{i}]"
        if not isinstance(p, dict):
            raise fail(name, "must be a table ([[pane]])")
        unknown = sorted(set(p) - _PANE_FIELDS)
        if unknown:
            raise fail(f"{name}.{unknown[0]}", f"unknown; known: {', '.join(sorted(_PANE_FIELDS))}")
        estimator = p.get("estimator", "qgf")
        if estimator not in ESTIMATORS:
            raise fail(
                f"{name}.estimator",
                f"unknown estimator {estimator!r}; registered: {', '.join(ESTIMATORS)}",
            )
        flags = {}
        for key in ("best_of", "live"):
            if not isinstance(p.get(key, False), bool):
                raise fail(f"{name}.{key}", f"must be true or false, got {p[key]!r}")
            flags[key] = p.get(key, False)
        label = p.get("label", "")
        if not isinstance(label, str):
            raise fail(f"{name}.label", f"must be a string, got {label!r}")
        panes.append(
            PaneSpec(
                weight=number(p, "weight", f"{name}.weight", 0.0),
                estimator=estimator,
                pick_best=flags["best_of"],
                live=flags["live"],
                checkpoint=ckpt(p["checkpoint"], f"{name}.checkpoint")
                if "checkpoint" in p
                else None,
                label=label,
            )
        )
    if sum(p.live for p in panes) > 1:
        raise fail("pane", "at most one pane can be live")
    preset = DemoPreset(
        checkpoint=main,
        panes=tuple(panes),
        seeds=tuple(seeds),
        steps=integer("steps", 1, MAX_STEPS, 10),
        candidates=integer("candidates", 1, MAX_CANDIDATES, 8),
        speed=number(data, "speed", "speed", DEFAULT_SPEED),
        camera=camera,
        target_fps=number(data, "target_fps", "target_fps", DEFAULT_TARGET_FPS, low=1.0),
        hold=number(data, "hold", "hold", DEFAULT_HOLD),
        source=source,
    )
    _check_envs(preset, fail)
    return preset


def _check_envs(preset: DemoPreset, fail) -> None:
    """Every pane's checkpoint must be of the demo's env (panes share the episode)."""
    from core.checkpoints import read_config

    def env_of(path: Path, name: str) -> str:
        try:
            return read_config(path, verify=False).env
        except Exception as e:
            raise fail(name, f"cannot read the checkpoint {path}: {e}") from e

    main = env_of(preset.checkpoint, "checkpoint") if preset.checkpoint else DEFAULT_ENV
    for i, p in enumerate(preset.panes):
        if p.checkpoint is not None:
            env = env_of(p.checkpoint, f"pane[{i}].checkpoint")
            if env != main:
                raise fail(
                    f"pane[{i}].checkpoint",
                    f"{p.checkpoint.name} is for {env}; the demo plays {main} (panes share "
                    f"the episode, so every checkpoint must be of the same env)",
                )


def step_weight(weight: float, steps: int) -> float:
    """The weight ``steps`` places up (> 0) or down the log grid ``WEIGHT_GRID`` from
    ``weight`` (a weight between grid points first snaps to its neighbour that way)."""
    grid = np.asarray(WEIGHT_GRID)
    if steps > 0:
        i = int(np.searchsorted(grid, weight, side="right")) - 1 + steps
    elif steps < 0:
        i = int(np.searchsorted(grid, weight, side="left")) + steps
    else:
        return weight
    return float(grid[min(max(i, 0), len(grid) - 1)])


# --- the session ------------------------------------------------------------------------
@dataclass
class _Agent:
    """Networks of one checkpoint (shared by the panes that use it)."""

    label: str
    policy: torch.nn.Module
    critic: torch.nn.Module
    horizon: int
    checkpoint: Path | None = None


@dataclass
class Tally:
    """Episodes a pane finished in this demo and how many it solved."""

    wins: int = 0
    episodes: int = 0


@dataclass
class Pane:
    """One pane's live state (changed on the demo's worker thread only)."""

    spec: PaneSpec
    agent: _Agent
    env: Any
    obs: np.ndarray
    index: int = 0
    done: bool = False
    success: bool = False
    episode_return: float = 0.0
    tally: Tally = field(default_factory=Tally)
    trace: DenoiseTrace | None = None
    noise: torch.Tensor | None = None
    executed: int = 0
    chunk: np.ndarray | None = None
    chunk_step: int = 0
    overlay: Overlay | None = None
    q: float = float("nan")
    # The settings the episode started with, and the presenter's changes: (step, changes).
    start_spec: PaneSpec | None = None
    changes: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


@dataclass(frozen=True)
class PaneView:
    """What the window shows of one pane (immutable).

    Attributes:
        caption: estimator and weight (``PaneSpec.caption``); ``spec``: the settings.
        agent: the checkpoint's name.
        step: the env step shown; ``q``: Q(s, executed action) there.
        success, done: of this episode; ``wins``/``episodes``: the tally of the demo.
        physics: MuJoCo state ``[S]``; ``fields``: the shown model fields of its env.
        overlay: its candidates' paths.
    """

    caption: str
    spec: PaneSpec
    agent: str
    step: int
    q: float
    success: bool
    done: bool
    episode_return: float
    wins: int
    episodes: int
    physics: np.ndarray
    fields: dict[str, np.ndarray]
    overlay: Overlay | None


@dataclass
class DemoFrame(FrameSpec):
    """One published state of the demo (a ``FrameSpec`` whose ``model`` is the renderer's
    private copy and whose ``physics`` is pane 0's, so a plain ``FrameStream`` works too).

    Attributes:
        panes: every pane's ``PaneView``, left to right.
        seed: the episode's seed; ``episode``: episodes started in this demo.
        live: index of the live pane, or None.
    """

    panes: tuple[PaneView, ...] = ()
    seed: int = 0
    episode: int = 0
    live: int | None = None


class DemoSession:
    """The panes of a demo and the episode they share.

    Args:
        preset: what to play (``default_preset``, ``load_preset``).
        device: torch device of the networks.
    """

    def __init__(self, preset: DemoPreset, device: str = "cpu") -> None:
        self.preset = preset
        self.device = torch.device(device)
        self.version = 0
        self.episode = 0
        self.seed_index = 0
        self.steps_taken = 0
        self.sample_calls = 0  # guided_sample calls made (one per group per step)
        self.sample_ms = 0.0
        self.env_ms = 0.0
        self._hold_ticks = 0
        agents: dict[Path | None, _Agent] = {}
        self.panes: list[Pane] = []
        env_name = DEFAULT_ENV
        for spec in preset.panes:
            key = spec.checkpoint or preset.checkpoint
            if key not in agents:
                agents[key] = self._agent(key)
                if key is not None and key == preset.checkpoint:
                    from core.checkpoints import read_config

                    env_name = read_config(key, verify=False).env
            env = envs.make_env(env_name, seed=preset.seeds[0])
            self.panes.append(Pane(spec=spec, agent=agents[key], env=env, obs=np.zeros(0)))
        self.env_name = env_name
        for pane in self.panes:
            obs_dim = int(pane.env.observation_space.shape[0])
            if getattr(pane.agent.policy, "obs_dim", obs_dim) != obs_dim:
                raise ValueError(f"{pane.agent.label} does not fit {env_name}")
        # The renderer draws every pane with this copy, each with its own shown fields.
        self.render_model = copy.deepcopy(self.panes[0].env.unwrapped.model)
        self.reset()

    def _agent(self, path: Path | None) -> _Agent:
        if path is None:
            env = envs.make_env(DEFAULT_ENV)
            obs, act = int(env.observation_space.shape[0]), int(env.action_space.shape[0])
            env.close()
            policy, critic = random_networks(obs, act)
            label = "random weights"
        else:
            from core.checkpoints import load_agent

            agent = load_agent(path, str(self.device))
            policy, critic, label = agent.policy, agent.critic, Path(path).name
        for net in (policy, critic):
            net.to(self.device).eval().requires_grad_(False)
        return _Agent(label, policy, critic, int(policy.horizon), path)

    # --- reads --------------------------------------------------------------------------
    @property
    def seed(self) -> int:
        return self.preset.seeds[self.seed_index % len(self.preset.seeds)]

    @property
    def live(self) -> Pane | None:
        i = self.preset.live
        return None if i is None else self.panes[i]

    @property
    def all_done(self) -> bool:
        return all(p.done for p in self.panes)

    @property
    def done(self) -> bool:
        """Never: the demo loops (what ``viewer.worker.Worker`` asks before a play step)."""
        return False

    @property
    def hold_ticks(self) -> int:
        """Play ticks the last frame stays once every pane is done."""
        return round(self.preset.hold * (self.preset.speed or DEFAULT_SPEED))

    def frame(self) -> DemoFrame:
        """The newest published state (made whole by the thread that changed it)."""
        return self._frame

    # --- commands -----------------------------------------------------------------------
    def reset(self, seed_index: int | None = None) -> None:
        """Every pane from the start of the episode of seed ``seeds[seed_index]`` (default:
        the current one), sampled."""
        if seed_index is not None:
            self.seed_index = int(seed_index) % len(self.preset.seeds)
        self.episode += 1
        self._hold_ticks = 0
        for pane in self.panes:
            obs, _ = envs.reset(pane.env, self.seed)
            pane.obs = np.asarray(obs)
            pane.index, pane.done, pane.success, pane.episode_return = 0, False, False, 0.0
            pane.start_spec, pane.changes = pane.spec, []
        self._sample(self.panes)
        self._publish()

    def next_episode(self) -> None:
        """All panes reset together from the next seed of the list (looping)."""
        self.reset(self.seed_index + 1)

    def step(self) -> None:
        """One env step of every pane not done, in lockstep; once all are done, hold for
        ``hold_ticks`` steps, then the next seed (auto-loop)."""
        if self.all_done:
            self._hold_ticks += 1
            if self._hold_ticks > self.hold_ticks:
                self.next_episode()
            return
        t0 = time.perf_counter()
        resample = []
        for pane in self.panes:
            if pane.done:
                continue
            action = pane.chunk[pane.chunk_step].astype(np.float64)
            obs, reward, terminated, truncated, info = pane.env.step(action)
            pane.obs = np.asarray(obs)
            pane.index += 1
            pane.episode_return += float(reward)
            pane.success = pane.success or bool(info.get("success", False))
            if terminated or truncated:
                pane.done = True
                pane.tally.episodes += 1
                pane.tally.wins += int(pane.success)
                continue
            pane.chunk_step += 1
            if pane.chunk_step < len(pane.chunk):
                self._follow_chunk(pane)
            else:
                resample.append(pane)
        self.steps_taken += 1
        self.env_ms = 1000 * (time.perf_counter() - t0)
        self._sample(resample)
        self._publish()

    def set_weight(self, weight: float) -> None:
        """The live pane's weight (its current state re-sampled, same noise); the others
        do not change."""
        weight = float(weight)
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight must be a finite number >= 0, got {weight}")
        self._change_live(weight=weight)

    def set_estimator(self, name: str) -> None:
        """The live pane's estimator (its current state re-sampled, same noise)."""
        if name not in ESTIMATORS:
            raise ValueError(f"unknown estimator {name!r}; registered: {', '.join(ESTIMATORS)}")
        self._change_live(estimator=name)

    def _change_live(self, **changes: Any) -> None:
        pane = self.live
        if pane is None:
            raise ValueError("this demo has no live pane (mark one `live = true` in the preset)")
        spec = replace(pane.spec, **changes)
        if spec == pane.spec:
            return
        pane.spec = spec
        if not pane.done:
            pane.changes.append((pane.index, changes))
            self._sample([pane])
        self._publish()

    def debugger_session(self, index: int | None = None) -> Session:
        """A debugger ``Session`` (``qgf view``'s model) at pane ``index``'s state (default:
        the live pane, else the first), for ``Tab`` in the demo window.

        Its episode is this one replayed by the debugger's step rule: the same seed, the
        pane's settings, the presenter's changes at the steps they were made; then the
        pane's exact state is taken over at the current step (``Session.take_state``), as
        the replay matches the demo only to float rounding (about 1e-7 after 40 steps: the
        two batch their rows differently). Call it on the thread that steps the demo.
        """
        from viewer.session import Settings

        pane = self.panes[index if index is not None else (self.preset.live or 0)]
        start = pane.start_spec
        settings = Settings(
            weight=start.weight,
            estimator=start.estimator,
            steps=self.preset.steps,
            candidates=self.preset.candidates,
            pick_best=start.pick_best,
            seed=self.seed,
            env_name=self.env_name,
            device=str(self.device),
        )
        session = Session(pane.agent.checkpoint, settings=settings, env_name=self.env_name)
        try:
            for k in range(pane.index + 1):
                for at, change in pane.changes:
                    if at == k:
                        session.update(**change)
                if k < pane.index:
                    session.step()
            if not pane.done:
                session.take_state(envs.snapshot(pane.env, observation=pane.obs))
        except Exception:
            session.close()
            raise
        return session

    def close(self) -> None:
        for pane in self.panes:
            pane.env.close()

    # --- internals ----------------------------------------------------------------------
    def _groups(self, panes: list[Pane]) -> list[tuple[str, list[Pane]]]:
        """Panes that can share one ``guided_sample`` call: same networks, same estimator,
        w = 0 panes with any (every estimator is the unguided flow at w = 0)."""
        groups: dict[tuple[int, str], list[Pane]] = {}
        unguided: list[Pane] = []
        for pane in panes:
            if pane.spec.weight == 0:
                unguided.append(pane)
            else:
                groups.setdefault((id(pane.agent), pane.spec.estimator), []).append(pane)
        for pane in unguided:
            key = next((k for k in groups if k[0] == id(pane.agent)), None)
            groups.setdefault(key or (id(pane.agent), pane.spec.estimator), []).append(pane)
        return [(key[1], members) for key, members in groups.items()]

    def _sample(self, panes: list[Pane]) -> None:
        if not panes:
            return
        t0 = time.perf_counter()
        n, steps = self.preset.candidates, self.preset.steps
        for estimator, members in self._groups(panes):
            agent = members[0].agent
            a_dim = agent.policy.action_dim
            noises = [step_noise(self.seed, p.index, n, a_dim) for p in members]
            obs = torch.as_tensor(
                np.stack([p.obs for p in members]), dtype=torch.float32, device=self.device
            )
            weight = torch.tensor([p.spec.weight for p in members], device=self.device)
            trace = guided_sample(
                agent.policy,
                agent.critic,
                obs,
                estimator=estimator,
                weight=weight,
                steps=steps,
                noise=torch.cat(noises).to(self.device),
                best_of=n,
            )
            self.sample_calls += 1
            trace = trace.to("cpu")
            for i, (pane, noise) in enumerate(zip(members, noises, strict=True)):
                row = trace.row(i)
                pane.trace, pane.noise = row, noise
                pane.executed = executed_candidate(row, pane.spec.pick_best)
                pane.chunk = row.final[pane.executed].numpy().reshape(agent.horizon, -1)
                pane.chunk_step = 0
                pane.q = float(row.q_final[pane.executed])
                paths = effector_paths(pane.env, row.a_hat.numpy(), row.final.numpy())
                pane.overlay = paths.overlay(pane.executed, nonfinite=row.nonfinite.numpy())
        self.sample_ms = 1000 * (time.perf_counter() - t0)

    def _follow_chunk(self, pane: Pane) -> None:
        """Inside a chunk: the remaining actions of the chunk, from the effector's pose."""
        row = pane.trace
        h = pane.agent.horizon
        rest = row.final.numpy().reshape(row.final.shape[0], h, -1)[:, pane.chunk_step :]
        a_hat = row.a_hat.numpy()
        a_hat = a_hat.reshape(*a_hat.shape[:2], h, -1)[:, :, pane.chunk_step :]
        paths = effector_paths(
            pane.env,
            a_hat.reshape(*a_hat.shape[:2], -1),
            rest.reshape(rest.shape[0], -1),
        )
        pane.overlay = paths.overlay(pane.executed, nonfinite=row.nonfinite.numpy())

    def _publish(self) -> None:
        self.version += 1
        views = []
        for pane in self.panes:
            model, data = pane.env.unwrapped._model, pane.env.unwrapped._data
            physics = np.empty(mujoco.mj_stateSize(model, _STATE))
            mujoco.mj_getState(model, data, physics, _STATE)
            views.append(
                PaneView(
                    caption=pane.spec.caption(),
                    spec=pane.spec,
                    agent=pane.agent.label,
                    step=pane.index,
                    q=pane.q,
                    success=pane.success,
                    done=pane.done,
                    episode_return=pane.episode_return,
                    wins=pane.tally.wins,
                    episodes=pane.tally.episodes,
                    physics=physics,
                    fields={f: getattr(model, f).copy() for f in _SHOWN_MODEL_FIELDS},
                    overlay=pane.overlay,
                )
            )
        self._frame = DemoFrame(
            version=self.version,
            model=self.render_model,
            physics=views[0].physics,
            overlay=None,
            record=None,
            made_at=time.perf_counter(),
            panes=tuple(views),
            seed=self.seed,
            episode=self.episode,
            live=self.preset.live,
        )
