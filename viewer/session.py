"""The viewer's model: one OGBench episode driven by a guided flow policy, step by step.

A ``Session`` owns the env, the checkpoint (policy, critic, config), the settings and the
history, and does all the work: sampling the current step (N guided candidates and, from the
same noise, N unguided ones at weight 0 as a ghost), stepping, resetting, switching estimator,
task or checkpoint. It imports no GUI: the Dear PyGui app only reads it and sends it commands
(through ``viewer.worker`` so that a slow sample never blocks a frame), and tests drive it
directly.

Time line of an episode::

    history[0]   history[1]   ...   history[t-1]   current
    s_0, a_0 ->  s_1, a_1 ->  ...   s_{t-1}, a ->  s_t (sampled, not yet acted on)

Every ``StepRecord`` keeps the state it was taken in (an exact ``EnvSnapshot``), the
observation, the settings, the denoising (``StepSample``) and the critic's values; once
executed it also holds the action, reward and success. With action chunks (horizon H > 1),
one sample serves H consecutive steps (executed open loop), so those records share it.

Timeline: ``view_step(i)`` shows the record of step i (its recorded physics state, its
overlay, its traces) instead of the current one, reading only ``history``: nothing is
sampled and the env is not stepped. ``viewed`` is the record to show, ``viewing`` its index
(None when live); ``live()``, ``view_step`` of the current step or any command that changes
the current state (step, reset, resample) returns to live.

Branches: ``branch_from(i, **changes)`` continues from step i's exact recorded state with
other settings in a new ``Branch`` (changing a sampling setting while step i is shown does
the same); every branch is kept, shares the records before its fork with its parent, and
``switch_branch`` returns to any of them where it was. ``replay`` re-executes a branch's
recorded actions from a restored snapshot and compares observations bit for bit.

Save and open: ``viewer.timeline_file.save_timeline(session, path)`` writes all of it (every
branch, record and trace, the settings, the checkpoint's identity and the networks' weights)
to one file, and ``viewer.timeline_file.open_timeline`` / ``open_session`` restore it exactly
(through ``Session.open_timeline``,
``docs/TIMELINE_FORMAT.md``).

Memory (``timeline_nbytes``, measured over 100 steps with default settings: cube-single,
T=10, N=8, H=1): about 19 KB of arrays per step, so a 1,000-step episode costs about 19 MB.
Per step: the sample (guided and unguided traces, effector paths, Q) 12.8 KB, the exact
snapshot 6.1 KB (physics state plus the model, derived and env arrays that make a restore
exact), the observation 0.2 KB. Python object headers are not counted. The sample grows
as T * N (T=100, N=64 would be about 100x); tests/test_viewer_session.py bounds the
default at 32 KB per step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import mujoco
import numpy as np
import torch

from core import envs
from core.defaults import DEFAULT_ENV, random_networks
from core.guidance import DenoiseTrace
from core.models import Critic, OneStepPolicy, VelocityField
from core.render import Overlay, Polyline, scene_rgba
from core.step import (
    RESAMPLE_FIELDS,
    StepSettings,
    effector_paths,
    sample_step,
    step_noise,
)

RANDOM_LABEL = "random weights"
CUSTOM_LABEL = "custom networks"


@dataclass(frozen=True)
class Settings(StepSettings):
    """Everything that decides what the policy does at a step (one frozen value per record).

    The sampling settings (weight, estimator, Euler steps T, candidates N, ``pick_best``,
    seed) are ``core.step.StepSettings``'s; the seed also fixes the episode's start state,
    and the noise of step t is a fixed function of (seed, t), so changing the weight keeps
    the noise. Besides those:

    Attributes:
        env_name: OGBench dataset-style name, e.g. ``cube-single-play-singletask-task2-v0``.
        device: torch device of the networks.
    """

    env_name: str = DEFAULT_ENV
    device: str = "cpu"


@dataclass
class CandidateDistances:
    """Distance to the data of one sample's candidates (``core.manifold`` definition), set by
    ``viewer.manifold_view.ManifoldAnalysis``.

    Attributes:
        distance: ``[N]`` distance of each guided candidate's final action.
        off_manifold: ``[N]`` bool, ``distance > threshold``.
        ghost_distance: ``[N]`` the same for the unguided (w = 0) candidates.
        ghost_off_manifold: ``[N]`` bool.
        threshold: the manifold's calibrated threshold.
        seconds: wall time of the hook for this sample.
    """

    distance: np.ndarray
    off_manifold: np.ndarray
    ghost_distance: np.ndarray
    ghost_off_manifold: np.ndarray
    threshold: float
    seconds: float = 0.0


@dataclass
class StepSample:
    """The denoising of one state: N guided candidates and N unguided (w = 0) ones.

    Both come from the same initial noise, so the difference between them is the guidance.

    Attributes:
        guided: ``DenoiseTrace`` of one row with ``best_of = N`` (``B* = N``), on the CPU.
        unguided: the same at weight 0 (the ghost).
        noise: ``[N, A]`` the shared initial noise a_0 (``A = H * action_dim``).
        executed: candidate index in 0..N-1 whose action is executed.
        settings: the settings that produced it.
        origin: ``[3]`` effector position when sampled (start of every path).
        ee_denoise: ``[T, N, H, 3]`` effector targets of the guided a_hat at each step.
        ee_final: ``[N, H, 3]`` effector targets of the guided final actions.
        ee_ghost: ``[N, H, 3]`` effector targets of the unguided final actions.
        gripper: ``[N, H]`` gripper targets (0 open .. 1 closed) of the guided finals.
        q_denoise: ``[T+1, N]`` Q(s, a_hat) at each denoising step, then Q(s, final action).
        q_denoise_ghost: the same for the unguided candidates.
        off_manifold: ``[N]`` bool flags from a distance-to-data check, or None.
        distances: distance to the data of the guided and ghost candidates
            (``CandidateDistances``, set by ``viewer.manifold_view``), or None when not measured.
        seconds: wall time of sampling and mapping.
    """

    guided: DenoiseTrace
    unguided: DenoiseTrace
    noise: torch.Tensor
    executed: int
    settings: Settings
    origin: np.ndarray
    ee_denoise: np.ndarray
    ee_final: np.ndarray
    ee_ghost: np.ndarray
    gripper: np.ndarray
    q_denoise: np.ndarray
    q_denoise_ghost: np.ndarray
    off_manifold: np.ndarray | None = None
    distances: CandidateDistances | None = None
    seconds: float = 0.0

    @property
    def horizon(self) -> int:
        return self.ee_final.shape[1]

    @property
    def chunk(self) -> np.ndarray:
        """``[H, action_dim]`` the executed candidate's final action, as a chunk."""
        a = self.guided.final[self.executed].numpy()
        return a.reshape(self.horizon, -1)

    @property
    def q_executed(self) -> float:
        """Q(s, executed action) (the critic's aggregated value)."""
        return float(self.guided.q_final[self.executed])

    def overlay(self) -> Overlay:
        """The scene overlay of this sample (``core.render.Overlay``)."""
        return Overlay(
            origin=self.origin,
            denoise=self.ee_denoise,
            final=self.ee_final,
            executed=self.executed,
            ghost=self.ee_ghost,
            gripper=self.gripper[self.executed],
            off_manifold=self.off_manifold,
            nonfinite=self.guided.nonfinite.numpy(),
        )


@dataclass
class StepRecord:
    """One step of the episode: the state, what the policy made of it, and what happened.

    Attributes:
        index: env step t within the episode.
        snapshot: exact env state before the action (``core.envs.EnvSnapshot``).
        obs: ``[O]`` observation at that state.
        settings: settings in force when the action was chosen.
        sample: the denoising that produced the action (shared by the H steps of a chunk).
        chunk_step: which action of the sample's chunk this step executes (0..H-1).
        v: V(s).
        action: ``[action_dim]`` executed env action (None until executed).
        reward, success, terminated, truncated: outcome of the step (None until executed).
        effector: ``[3]`` end-effector position at that state (for branch paths).
    """

    index: int
    snapshot: envs.EnvSnapshot
    obs: np.ndarray
    settings: Settings
    sample: StepSample
    chunk_step: int
    v: float
    action: np.ndarray | None = None
    reward: float | None = None
    success: bool | None = None
    terminated: bool | None = None
    truncated: bool | None = None
    effector: np.ndarray | None = None

    @property
    def q(self) -> float:
        """Q of the executed action (of the whole chunk for chunked policies)."""
        return self.sample.q_executed

    @property
    def executed(self) -> bool:
        return self.action is not None


# One colour per branch, by branch id (cycled), for its effector path in the scene and its
# curves in the plots (drawn in the scene through ``core.render.scene_rgba``, so both show
# the same hue). Chosen apart from the overlay's own colours: white executed, grey
# ghost, red off-manifold, magenta non-finite, and the denoising-time ramp, which runs
# through dark blue, purple, pink and orange to yellow.
BRANCH_RGBA = (
    (0.20, 0.90, 0.95, 1.0),  # cyan
    (0.30, 0.95, 0.30, 1.0),  # green
    (0.50, 0.65, 1.00, 1.0),  # cornflower
    (0.65, 0.45, 0.25, 1.0),  # brown
    (0.25, 0.70, 0.55, 1.0),  # teal
    (0.70, 0.70, 0.30, 1.0),  # olive
)
_BRANCH_PATH_WIDTH = 0.004
_BRANCH_PATH_POINTS = 400  # longer paths are thinned for drawing (every k-th step)


def branch_rgba(branch_id: int) -> tuple[float, float, float, float]:
    return BRANCH_RGBA[branch_id % len(BRANCH_RGBA)]


@dataclass
class Branch:
    """One line of play through the episode: the first one (``id`` 0) from the reset state,
    each later one continuing from a past step of another with other settings.

    A branch shares its parent's records before the fork (the same objects, not copies), so
    a branch costs only the steps it took itself.

    Attributes:
        id: 0, 1, 2, ... in order of creation; also picks its colour (``branch_rgba``).
        parent: id of the branch it left (None for the first).
        fork: the step it left its parent at: ``history[:fork]`` are the parent's records.
        history: executed records from step 0.
        current: record of the state reached (sampled, not yet acted on).
    """

    id: int
    parent: int | None
    fork: int
    history: list[StepRecord]
    current: StepRecord

    @property
    def own(self) -> list[StepRecord]:
        """The records this branch took itself (from the fork on), current included."""
        return [*self.history[self.fork :], self.current]

    @property
    def settings(self) -> Settings:
        """The settings it was started with (those of its first own record)."""
        return self.own[0].settings

    @property
    def label(self) -> str:
        if self.parent is None:
            return "main"
        s = self.settings
        return (
            f"#{self.id} from {self.parent} at step {self.fork}: "
            f"{s.estimator} w={s.weight:g} seed {s.seed}" + (" best-of-N" if s.pick_best else "")
        )

    def effector_path(self) -> np.ndarray:
        """``[K, 3]`` end-effector positions of every state of the branch, in order."""
        points = [r.effector for r in [*self.history, self.current] if r.effector is not None]
        return np.asarray(points, dtype=np.float64).reshape(-1, 3)


@dataclass(frozen=True)
class ReplayCheck:
    """Result of replaying a branch's recorded actions from a restored snapshot.

    Attributes:
        start, stop: the steps replayed: from the state of ``start`` through the action of
            step ``stop - 1`` (``stop - start`` actions).
        max_obs_error: largest absolute difference between a replayed and a recorded
            observation (0.0 when exact).
        mismatched: steps whose replayed observation or reward differs from the record.
    """

    start: int
    stop: int
    max_obs_error: float
    mismatched: tuple[int, ...]

    @property
    def exact(self) -> bool:
        return not self.mismatched


@dataclass(frozen=True)
class BranchView:
    """One branch as the GUI shows it: its id, label and ``Session.episode_curves``."""

    id: int
    label: str
    curves: dict[str, np.ndarray]


@dataclass(frozen=True)
class SessionView:
    """What the GUI shows of the session, made once per change by the thread that changed it
    (``Session._bump``): the GUI draws this and never reads the live session, which the
    worker thread changes while the GUI draws.

    Attributes:
        version: the session's version when it was made.
        label: what the policy is (``Session.label``); ``random``: it is random weights.
        settings: the session's settings (those of the next sample).
        sampled: the settings the live step's candidates were sampled with (inside a chunk,
            the chunk's).
        episode: episode counter.
        live_step: the current (live) step's index, ``Session.step_index``.
        scrubbing: a recorded step is shown instead of the live one.
        max_steps: the env's time limit, or None.
        episode_return, success, done: of the active branch.
        curves: ``Session.episode_curves()`` of the active branch.
        branches: every branch, in id order; ``active``: the active branch's id.
        checkpoint: the checkpoint directory, as a string ("" without one).
        networks: changes whenever other networks are installed (a checkpoint, random or
            custom weights, a timeline's).
        has_value: the critic has a V network (FQL agents have none: V is unavailable).
    """

    version: int
    label: str
    random: bool
    settings: Settings
    sampled: Settings
    episode: int
    live_step: int
    scrubbing: bool
    max_steps: int | None
    episode_return: float
    success: bool
    done: bool
    curves: dict[str, np.ndarray]
    branches: tuple[BranchView, ...]
    active: int
    checkpoint: str
    networks: int
    has_value: bool = True


@dataclass
class FrameSpec:
    """What the renderer and the GUI need for one frame of the current state (immutable once
    made).

    Attributes:
        version: the session's version when it was made (changes on every state change).
        model: the env's MjModel (a new one after an env switch).
        physics: MuJoCo state vector ``[S]`` (``mjSTATE_INTEGRATION``) to render.
        overlay: overlay of the current sample, or None.
        record: the step record shown (for captions).
        view: the rest of the session the GUI shows, or None.
        made_at: ``time.perf_counter()`` when it was made (for latency figures).
    """

    version: int
    model: mujoco.MjModel
    physics: np.ndarray
    overlay: Overlay | None
    record: StepRecord | None
    view: SessionView | None = None
    made_at: float = 0.0


@dataclass
class Timings:
    """Milliseconds spent by the last call of each part."""

    policy: float = 0.0
    env: float = 0.0
    values: dict[str, float] = field(default_factory=dict)


class Session:
    """One env, one policy and critic, the settings and the history of the episode.

    Args:
        checkpoint: checkpoint directory; None opens random weights for ``settings.env_name``
            (``core.defaults.default_checkpoint()`` is the shipped one).
        settings: initial settings (``env_name`` is taken from the checkpoint when given and
            the settings do not name one explicitly).
        env_name: overrides ``settings.env_name``.
        device: overrides ``settings.device``.
    """

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        settings: Settings | None = None,
        env_name: str | None = None,
        device: str | None = None,
    ) -> None:
        settings = settings or Settings()
        if device is not None:
            settings = replace(settings, device=device)
        self.settings = settings
        self.env = None
        self.policy: VelocityField | None = None
        self.critic: Critic | None = None
        # An imported FQL agent's one-step policy (a row of the comparison), or None.
        self.onestep: OneStepPolicy | None = None
        self.config = None
        self.checkpoint_path: Path | None = None
        # The episode's lines of play; the active one is the one played, shown and plotted.
        self.branches: list[Branch] = []
        self.active = 0
        # Index into history of the step shown instead of the current one (None: live).
        self.viewing: int | None = None
        self.episode = 0
        self.steps_taken = 0  # env steps over every episode of this session
        self.version = 0
        self.timings = Timings()
        # Called as fn(session, sample, obs) after every new sample, before it is shown:
        # the place to attach per-candidate analyses (e.g. off-manifold flags).
        self.sample_hooks: list[Callable[[Session, StepSample, np.ndarray], None]] = []
        self._label = RANDOM_LABEL
        self._curve_cache: dict[int, tuple] = {}
        self._networks = 0  # counts the networks installed
        if checkpoint is not None:
            self._load(Path(checkpoint), env_name)
        else:
            self._random(env_name or settings.env_name)
        self.reset()

    # --- reads --------------------------------------------------------------------------
    @property
    def branch(self) -> Branch:
        """The active branch."""
        return self.branches[self.active]

    @property
    def history(self) -> list[StepRecord]:
        """The active branch's executed records, from step 0."""
        return self.branch.history

    @property
    def current(self) -> StepRecord | None:
        """The active branch's current record (the state reached, sampled)."""
        return self.branch.current if self.branches else None

    @current.setter
    def current(self, record: StepRecord) -> None:
        self.branch.current = record

    @property
    def label(self) -> str:
        """What the policy is: the checkpoint's directory name, "random weights" or
        "custom networks"."""
        return self.checkpoint_path.name if self.checkpoint_path else self._label

    @property
    def horizon(self) -> int:
        return self.policy.horizon

    @property
    def done(self) -> bool:
        """The episode has ended (success with termination, or the time limit)."""
        last = self.history[-1] if self.history else None
        return bool(last is not None and (last.terminated or last.truncated))

    @property
    def episode_return(self) -> float:
        return float(sum(r.reward for r in self.history if r.reward is not None))

    @property
    def success(self) -> bool:
        """Whether any executed step reported success."""
        return any(bool(r.success) for r in self.history)

    @property
    def step_index(self) -> int:
        return len(self.history)

    @property
    def viewed(self) -> StepRecord | None:
        """The record to show: ``history[viewing]`` while scrubbing, else the current one."""
        if self.viewing is None:
            return self.current
        return self.history[self.viewing]

    def frame(self) -> FrameSpec:
        """The current state and overlay, for the renderer.

        Made once per change by the thread that changed the session, so a reader on another
        thread always gets a consistent (model, state, overlay) triple, never a half-switched env.
        """
        return self._frame

    def episode_curves(self, branch: int | None = None) -> dict[str, np.ndarray]:
        """Per executed step ``[t]`` of a branch (default: the active one): ``step``, ``q``,
        ``v``, ``reward``, ``return`` (reward summed up to and including the step) and
        ``success`` (0/1)."""
        b = self.branch if branch is None else self.branches[branch]
        done = [r for r in b.history if r.executed]
        reward = np.array([r.reward for r in done], dtype=np.float64)
        return {
            "step": np.array([r.index for r in done], dtype=np.float64),
            "q": np.array([r.q for r in done], dtype=np.float64),
            "v": np.array([r.v for r in done], dtype=np.float64),
            "reward": reward,
            "return": np.cumsum(reward),
            "success": np.array([bool(r.success) for r in done], dtype=np.float64),
        }

    # --- commands -----------------------------------------------------------------------
    def view_step(self, index: int | None) -> StepRecord:
        """Show the recorded step ``index`` (clamped to 0..step_index); the current step
        (``step_index``) or None is live. Reads the history only: no sampling, no env step."""
        if index is not None:
            index = min(max(int(index), 0), len(self.history))
        self.viewing = None if index is None or index == len(self.history) else index
        self._bump()
        return self.viewed

    def live(self) -> StepRecord:
        """Back to the current step."""
        return self.view_step(None)

    def reset(self, seed: int | None = None) -> StepRecord:
        """Start a new episode (from ``seed``, or the settings' seed) and sample its first step."""
        if seed is not None:
            self.settings = replace(self.settings, seed=int(seed))
        obs, _ = envs.reset(self.env, self.settings.seed)
        self.viewing = None
        self.episode += 1
        first = self._arrive(np.asarray(obs), index=0, chunk_from=None)
        self.branches = [Branch(id=0, parent=None, fork=0, history=[], current=first)]
        self.active = 0
        self._curve_cache.clear()  # it would keep the last episode's other branches alive
        self._bump()
        return self.current

    def branch_from(self, index: int | None = None, **changes) -> StepRecord:
        """Continue from step ``index`` of the active branch (default: the step shown) in a
        new branch, with the current settings changed by ``changes`` (e.g. ``weight=0.1``).

        The env is restored to that step's exact recorded state and the step is sampled
        afresh with the new settings; the old line of play is kept as it was. The new
        branch becomes the active one. Returns its first record.
        """
        if index is None:
            index = self.viewing if self.viewing is not None else len(self.history)
        if not 0 <= index <= len(self.history):
            raise ValueError(f"no step {index} to branch from: steps are 0..{len(self.history)}")
        unknown = set(changes) - RESAMPLE_FIELDS
        if unknown:
            raise ValueError(
                f"a branch changes only {', '.join(sorted(RESAMPLE_FIELDS))}; "
                f"not {', '.join(sorted(unknown))}"
            )
        settings = replace(self.settings, **changes)
        settings.validate()
        parent = self.branch
        at = parent.history[index] if index < len(parent.history) else parent.current
        envs.restore(self.env, at.snapshot)
        old, self.settings = self.settings, settings
        try:
            first = self._arrive(at.obs, index=index, chunk_from=None, snap=at.snapshot)
        except Exception:
            self.settings = old
            envs.restore(self.env, parent.current.snapshot)
            raise
        branch = Branch(
            id=len(self.branches),
            parent=parent.id,
            fork=index,
            history=parent.history[:index],
            current=first,
        )
        self.branches.append(branch)
        self.active = len(self.branches) - 1
        self.viewing = None
        self._bump()
        return self.current

    def take_state(self, snap: envs.EnvSnapshot) -> StepRecord:
        """Continue from ``snap``, a state of this env reached elsewhere at the current step
        (e.g. ``qgf view --demo``'s pane, whose episode this session replayed): it becomes
        the current state, sampled afresh with the current settings; the history stays."""
        obs = np.asarray(envs.restore(self.env, snap))
        self.current = self._arrive(obs, index=len(self.history), chunk_from=None, snap=snap)
        self.viewing = None
        self._bump()
        return self.current

    def switch_branch(self, branch_id: int) -> StepRecord:
        """Make branch ``branch_id`` the active one: the env goes to its current state (exact
        restore) and the settings become those it was last sampled with."""
        if not 0 <= branch_id < len(self.branches):
            raise ValueError(f"no branch {branch_id}: branches are 0..{len(self.branches) - 1}")
        target = self.branches[branch_id]
        envs.restore(self.env, target.current.snapshot)
        self.active = branch_id
        self.settings = target.current.settings
        self.viewing = None
        self._bump()
        return self.current

    def replay(self, branch: int | None = None, start: int = 0) -> ReplayCheck:
        """Check that the recorded state is exact: restore the snapshot of step ``start`` of
        a branch (default: the active one), execute the recorded actions from there, and
        compare each observation and reward with the recorded ones. The env is put back at
        the active branch's current state afterwards; nothing recorded changes."""
        b = self.branch if branch is None else self.branches[branch]
        records = [*b.history, b.current]
        if not 0 <= start < len(records):
            raise ValueError(f"no step {start} to replay from: steps are 0..{len(b.history)}")
        worst, mismatched = 0.0, []
        try:
            envs.restore(self.env, records[start].snapshot)
            for rec, nxt in zip(records[start:-1], records[start + 1 :], strict=True):
                obs, reward, *_ = self.env.step(rec.action)
                obs = np.asarray(obs)
                if obs.shape != nxt.obs.shape:
                    mismatched.append(rec.index)
                    worst = float("inf")
                    continue
                error = float(np.max(np.abs(obs - nxt.obs), initial=0.0))
                worst = max(worst, error)
                if not np.array_equal(obs, nxt.obs) or float(reward) != rec.reward:
                    mismatched.append(rec.index)
        finally:
            envs.restore(self.env, self.current.snapshot)
        return ReplayCheck(start, len(records) - 1, worst, tuple(mismatched))

    def update(self, **changes) -> StepRecord | None:
        """Change settings. Sampling settings re-sample the current step at once (same
        noise unless the seed changed); ``env_name`` switches env and resets; ``device``
        moves the networks.

        While a past step is shown, sampling settings apply there: the change starts a new
        branch from that step (``branch_from``) and the old line of play is kept.
        """
        unknown = set(changes) - {f.name for f in fields(Settings)}
        if unknown:
            raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
        new = replace(self.settings, **changes)
        new.validate()
        if new == self.settings:
            return self.current
        resampled = {k: v for k, v in changes.items() if k in RESAMPLE_FIELDS}
        at_past_step = self.viewing is not None and set(changes) <= RESAMPLE_FIELDS
        if at_past_step and any(getattr(new, k) != getattr(self.settings, k) for k in resampled):
            return self.branch_from(self.viewing, **resampled)
        old, self.settings = self.settings, new
        try:
            if new.env_name != old.env_name:
                self._switch_env(new.env_name)
                return self.reset()
            if new.device != old.device:
                self._to_device(new.device)
            if any(getattr(new, k) != getattr(old, k) for k in RESAMPLE_FIELDS):
                return self.resample()
        except Exception:
            self.settings = old
            raise
        self._bump()
        return self.current

    def resample(self) -> StepRecord:
        """Sample the current state again with the current settings (a new chunk from here)."""
        rec = self.current
        # Inside a chunk the sample was made at an earlier state: nothing of it holds here.
        reuse = rec.sample if rec.chunk_step == 0 else None
        sample, v = self._sample(rec.obs, rec.index, reuse=reuse)
        self.current = replace(
            rec, settings=self.settings, sample=sample, chunk_step=0, v=v, action=None
        )
        self.viewing = None
        self._bump()
        return self.current

    def step(self) -> StepRecord:
        """Execute the current step's action; returns its (completed) record.

        The next state is sampled at once (or, inside a chunk, takes the chunk's next action).
        """
        if self.done:
            raise RuntimeError("the episode has ended: reset to start a new one")
        rec = self.current
        action = rec.sample.chunk[rec.chunk_step].astype(np.float64)
        t0 = time.perf_counter()
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.timings.env = 1000 * (time.perf_counter() - t0)
        self.steps_taken += 1
        rec = replace(
            rec,
            action=action,
            reward=float(reward),
            success=bool(info.get("success", False)),
            terminated=bool(terminated),
            truncated=bool(truncated),
        )
        self.history.append(rec)
        follow = rec.chunk_step + 1 < rec.sample.horizon
        self.current = self._arrive(
            np.asarray(obs), index=len(self.history), chunk_from=rec if follow else None
        )
        self.viewing = None
        self._bump()
        return rec

    def set_env(self, name: str) -> StepRecord:
        """Switch env or task (resets). With random weights, networks are rebuilt to fit."""
        return self.update(env_name=name)

    def load_checkpoint(self, path: str | Path) -> StepRecord:
        """Open a checkpoint (its env comes with it) and reset. On error nothing changes."""
        previous = (
            self.env,
            self.policy,
            self.critic,
            self.onestep,
            self.config,
            self.checkpoint_path,
            self.settings,
        )
        try:
            self._load(Path(path), None)
        except Exception:
            (
                self.env,
                self.policy,
                self.critic,
                self.onestep,
                self.config,
                self.checkpoint_path,
                self.settings,
            ) = previous
            raise
        return self.reset()

    def use_networks(self, policy: VelocityField, critic: Critic) -> StepRecord:
        """Drive the episode with these networks instead of a checkpoint (e.g. from a
        notebook); their dims must fit the env. Resets."""
        obs_dim, act_dim = self._env_dims(self.env)
        if (policy.obs_dim, policy.env_action_dim) != (obs_dim, act_dim):
            raise ValueError(
                f"networks take obs/action dims ({policy.obs_dim}, {policy.env_action_dim}); "
                f"{self.settings.env_name} has ({obs_dim}, {act_dim})"
            )
        if critic.action_dim != policy.action_dim:
            raise ValueError(
                f"critic takes {critic.action_dim} action dims, the policy samples "
                f"{policy.action_dim}"
            )
        self.config = None
        self.checkpoint_path = None
        self._install(policy, critic)
        self._label = CUSTOM_LABEL
        return self.reset()

    def use_random_weights(self) -> StepRecord:
        """Drop the checkpoint: random networks for the current env (clearly labelled)."""
        self._random(self.settings.env_name)
        return self.reset()

    def open_timeline(self, timeline) -> None:
        """Replace the episode, networks and settings with a timeline read from a file
        (a ``viewer.timeline_file.Timeline``; ``viewer.timeline_file.open_timeline`` reads
        and opens in one call), as they were saved: every branch (shared records still
        shared), the active branch, the step shown, the episode counter, and the env, made by
        name, in the active branch's current state, so play continues as it would have. On
        error nothing changes.
        """
        snap = timeline.branches[timeline.active].current.snapshot
        policy = timeline.policy
        # An env of the same id (same task) takes the snapshot as a new one would.
        same = (
            self.env is not None and self.env.spec is not None and self.env.spec.id == snap.env_id
        )
        env = (
            self.env
            if same
            else envs.make_env(timeline.settings.env_name, seed=timeline.settings.seed)
        )
        try:
            dims = self._env_dims(env)
            if (policy.obs_dim, policy.env_action_dim) != dims:
                raise ValueError(
                    f"the timeline's networks take obs/action dims ({policy.obs_dim}, "
                    f"{policy.env_action_dim}); {timeline.settings.env_name} has {dims}"
                )
            envs.restore(env, snap)
        except Exception:
            if same and self.current is not None:
                envs.restore(env, self.current.snapshot)
            else:
                env.close()
            raise
        if not same and self.env is not None:
            self.env.close()
        self.env = env
        self.settings = timeline.settings
        self.config, self.checkpoint_path = timeline.config, timeline.checkpoint_path
        self._install(policy, timeline.critic, self._onestep_of(timeline.checkpoint_path))
        self._label = timeline.installed_label
        self.branches = timeline.branches
        self._curve_cache.clear()
        self.active, self.viewing = timeline.active, timeline.viewing
        self.episode, self.steps_taken = timeline.episode, timeline.steps_taken
        self._bump()

    # --- internals ----------------------------------------------------------------------
    def _bump(self) -> None:
        self.version += 1
        rec = self.viewed
        overlay = rec.sample.overlay()
        overlay.polylines = self.branch_paths()
        self._frame = FrameSpec(
            version=self.version,
            model=self.env.unwrapped.model,
            physics=rec.snapshot.physics,
            overlay=overlay,
            record=rec,
            view=self._view(),
            made_at=time.perf_counter(),
        )

    def _view(self) -> SessionView:
        spec = getattr(self.env, "spec", None)
        return SessionView(
            version=self.version,
            label=self.label,
            random=self.label == RANDOM_LABEL,
            settings=self.settings,
            sampled=self.current.sample.settings,
            episode=self.episode,
            live_step=self.step_index,
            scrubbing=self.viewing is not None,
            max_steps=getattr(spec, "max_episode_steps", None),
            episode_return=self.episode_return,
            success=self.success,
            done=self.done,
            curves=self._curves(self.branch),
            branches=tuple(BranchView(b.id, b.label, self._curves(b)) for b in self.branches),
            active=self.branch.id,
            checkpoint=str(self.checkpoint_path or ""),
            networks=self._networks,
            has_value=self.critic is None or self.critic.has_value,
        )

    def _curves(self, branch: Branch) -> dict[str, np.ndarray]:
        """``episode_curves`` of ``branch``, remembered while its history is unchanged (a
        branch not played on is not recomputed at every step of another)."""
        key = (len(branch.history), id(branch.history[-1]) if branch.history else None)
        cached = self._curve_cache.get(branch.id)
        if cached is not None and cached[0] is branch and cached[1] == key:
            return cached[2]
        curves = self.episode_curves(branch.id)
        self._curve_cache[branch.id] = (branch, key, curves)
        return curves

    def branch_paths(self) -> list[Polyline]:
        """The effector path of every branch in its colour, once there is more than one
        (each from the step before its fork, so shared steps are drawn once)."""
        if len(self.branches) < 2:
            return []
        lines = []
        for b in self.branches:
            path = b.effector_path()[max(b.fork - 1, 0) :]
            if len(path) < 2:
                continue
            thin = -(-len(path) // _BRANCH_PATH_POINTS)
            if thin > 1:
                path = np.concatenate([path[:-1:thin], path[-1:]])
            width = _BRANCH_PATH_WIDTH * (1.5 if b.id == self.branch.id else 1.0)
            rgba = scene_rgba(branch_rgba(b.id))
            lines.append(Polyline(path, rgba, width, layer="branches"))
        return lines

    def _arrive(
        self,
        obs: np.ndarray,
        index: int,
        chunk_from: StepRecord | None,
        snap: envs.EnvSnapshot | None = None,
    ) -> StepRecord:
        """A record for the state just reached (step ``index``; ``snap`` when it is already
        known): sampled, or continuing ``chunk_from``."""
        if snap is None:
            snap = envs.snapshot(self.env, observation=obs)
        effector, _ = envs.effector_state(self.env)
        if chunk_from is not None:
            return StepRecord(
                index=index,
                snapshot=snap,
                obs=obs,
                settings=chunk_from.settings,
                sample=chunk_from.sample,
                chunk_step=chunk_from.chunk_step + 1,
                v=self._value(obs),
                effector=effector,
            )
        sample, v = self._sample(obs, index)
        return StepRecord(
            index=index,
            snapshot=snap,
            obs=obs,
            settings=self.settings,
            sample=sample,
            chunk_step=0,
            v=v,
            effector=effector,
        )

    def _value(self, obs: np.ndarray) -> float:
        """V(s), or NaN for a critic without a V network (shown as unavailable)."""
        if not self.critic.has_value:
            return float("nan")
        with torch.no_grad():
            o = torch.as_tensor(obs, dtype=torch.float32, device=self._device())[None]
            return float(self.critic.v(o)[0])

    def _device(self) -> torch.device:
        return next(self.policy.parameters()).device

    def _sample(
        self, obs: np.ndarray, index: int, reuse: StepSample | None = None
    ) -> tuple[StepSample, float]:
        """Guided and unguided candidates for ``obs``, mapped to the world.

        Both rows come from one batched call (row 0 guided at the settings' weight, row 1 the
        same noise at weight 0), except when ``reuse`` is a sample of this same state whose
        unguided part still holds (same seed, T and N): then only the guided row is sampled,
        which halves the work behind a weight or estimator change.
        """
        s = self.settings
        t0 = time.perf_counter()
        device = self._device()
        n, a_dim, t = s.candidates, self.policy.action_dim, s.steps
        keep = (
            reuse is not None
            and (reuse.settings.seed, reuse.settings.steps, reuse.settings.candidates)
            == (s.seed, t, n)
            and reuse.unguided.a_t.shape[-1] == a_dim
        )
        noise = reuse.noise if keep else step_noise(s.seed, index, n, a_dim)
        o = torch.as_tensor(obs, dtype=torch.float32, device=device)
        draw = sample_step(self.policy, self.critic, o, s, noise, ghost=not keep, q_path=True)
        v = self._value(obs)
        guided = draw.guided.to("cpu")
        q_guided = draw.q_guided.cpu().numpy().astype(np.float32)
        if keep:
            unguided, q_ghost = reuse.unguided, reuse.q_denoise_ghost
        else:
            unguided = draw.ghost.to("cpu")
            q_ghost = draw.q_ghost.cpu().numpy().astype(np.float32)
        paths = effector_paths(
            self.env,
            guided.a_hat.numpy(),
            guided.final.numpy(),
            None if keep else unguided.final.numpy(),
        )
        sample = StepSample(
            guided=guided,
            unguided=unguided,
            noise=noise,
            executed=draw.executed,
            settings=s,
            origin=paths.origin,
            ee_denoise=paths.denoise.astype(np.float32),
            ee_final=paths.final.astype(np.float32),
            ee_ghost=reuse.ee_ghost if keep else paths.ghost.astype(np.float32),
            gripper=paths.gripper.astype(np.float32),
            q_denoise=q_guided,
            q_denoise_ghost=q_ghost,
        )
        for hook in list(self.sample_hooks):
            hook(self, sample, obs)
        sample.seconds = time.perf_counter() - t0
        self.timings.policy = 1000 * sample.seconds
        return sample, v

    def _env_dims(self, env) -> tuple[int, int]:
        return int(env.observation_space.shape[0]), int(env.action_space.shape[0])

    def _switch_env(self, name: str) -> None:
        env = envs.make_env(name, seed=self.settings.seed)
        obs_dim, act_dim = self._env_dims(env)
        if self.config is not None:
            from core.checkpoints import check_env_dims

            try:
                check_env_dims(self.config, obs_dim, act_dim, name)
            except Exception:
                env.close()
                raise
        old, self.env = self.env, env
        if old is not None:
            old.close()
        if self.config is None:
            self._random_networks(obs_dim, act_dim)

    def _random(self, env_name: str) -> None:
        self._label = RANDOM_LABEL
        self.config = None
        self.checkpoint_path = None
        self.settings = replace(self.settings, env_name=env_name)
        self.policy, self.onestep = None, None
        self._switch_env(env_name)

    def _random_networks(self, obs_dim: int, act_dim: int) -> None:
        same = (
            self.policy is not None
            and self.policy.obs_dim == obs_dim
            and self.policy.env_action_dim == act_dim
        )
        if same:
            return
        self._install(*random_networks(obs_dim, act_dim))
        self._label = RANDOM_LABEL

    def _install(
        self, policy: VelocityField, critic: Critic, onestep: OneStepPolicy | None = None
    ) -> None:
        device = torch.device(self.settings.device)
        for net in (policy, critic, onestep):
            if net is not None:
                net.to(device).eval().requires_grad_(False)
        self.policy, self.critic, self.onestep = policy, critic, onestep
        self._networks += 1

    def _onestep_of(self, checkpoint: Path | None) -> OneStepPolicy | None:
        """The one-step policy of a local checkpoint that has one (a timeline embeds the
        policy and the critic only)."""
        if checkpoint is None or self.config is None or not self.config.onestep_policy:
            return None
        from core.checkpoints import load_agent

        return load_agent(checkpoint, self.settings.device).onestep

    def _to_device(self, device: str) -> None:
        for net in (self.policy, self.critic, self.onestep):
            if net is not None:
                net.to(torch.device(device))

    def _load(self, path: Path, env_name: str | None) -> None:
        from core.checkpoints import check_env_dims, load_agent

        agent = load_agent(path, self.settings.device)
        policy, critic, config = agent.policy, agent.critic, agent.config
        name = env_name or config.env
        env = envs.make_env(name, seed=self.settings.seed)
        try:
            obs_dim, act_dim = self._env_dims(env)
            check_env_dims(config, obs_dim, act_dim, name)
        except Exception:
            env.close()
            raise
        if self.env is not None:
            self.env.close()
        self.env = env
        self.config = config
        self.checkpoint_path = path.resolve()
        self.settings = replace(self.settings, env_name=name)
        self.policy, self.critic, self.onestep = policy, critic, agent.onestep
        self._networks += 1

    def timeline_nbytes(self) -> int:
        """Bytes of the arrays and tensors held by the episode's records (every branch's
        history and current), each counted once (the records of a chunk share their sample,
        branches share the records before their fork)."""
        return _nbytes([[*b.history, b.current] for b in self.branches], set())

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None


def _nbytes(value, seen: set[int]) -> int:
    """Bytes of the numpy arrays and torch tensors reachable from ``value`` through
    dataclasses, dicts, lists and tuples; an object reached twice counts once."""
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, torch.Tensor):
        # Rows of one trace are views of one storage: count the storage once.
        storage = value.untyped_storage()
        key = -storage.data_ptr() - 1
        if key in seen:
            return 0
        seen.add(key)
        return storage.nbytes()
    if isinstance(value, dict):
        return sum(_nbytes(v, seen) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_nbytes(v, seen) for v in value)
    if hasattr(value, "__dataclass_fields__"):
        return sum(_nbytes(getattr(value, f.name), seen) for f in fields(value))
    return 0
