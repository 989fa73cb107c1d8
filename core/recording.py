"""Headless rollout videos: one panel per (weight, estimator), all from the same start and noise.

``record`` runs one episode per panel at a time, side by side, and writes a tiled video::

    +-------------------+-------------------+
    | qgf  w = 0        | qgf  w = 0.02     |     panel = scene render with the step's
    |   (scene render)  |   (scene render)  |     overlays (core.render, the viewer's own
    |-------------------|-------------------|     drawing) + caption strip
    | caption strip     | caption strip     |
    +-------------------+-------------------+

Fair comparison is the point, so every panel of an episode

- starts from the same state: each panel has its own env, reset with the same seed (which
  fixes OGBench's task and start state), and the starts are checked to be identical;
- denoises from the same noise: at env step ``k`` of episode ``e`` every panel's initial
  noise ``a_0 [N, A]`` comes from a generator seeded by ``noise_seed(seed + e, k)``;

so panels differ only through the weight and estimator (and the states those lead to). Each
panel is sampled in a call of its own, the viewer's ``[guided, ghost]`` call: a panel's
numbers do not depend on the other panels of the grid, two panels with the same settings
give identical pixels, and a panel replays exactly what ``qgf view`` shows with the same
seed, weight, estimator, T and N.

Frames: frame ``k`` of an episode shows state ``s_k`` with the candidates sampled there (for
chunked policies the chunk sampled at its first step stays drawn while it executes). A panel
whose episode has ended (success, the env's time limit or ``max_steps``) holds its final state,
framed green (success) or amber (ended without success). An episode has ``L + 1`` frames,
``L`` the longest panel episode, then ``hold_s`` seconds of its final frame.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import mujoco
import numpy as np
import torch
from torch import Tensor

from core.captions import (
    DONE_COLOR,
    SUCCESS_COLOR,
    CaptionFields,
    caption_height,
    caption_strip,
    draw_border,
    tile,
)
from core.envs import (
    make_env,
    parse_name,
    reset,
)
from core.guidance import ESTIMATORS, DenoiseTrace
from core.render import (
    CAMERA_PRESETS,
    Overlay,
    OverlayLayers,
    RenderSettings,
    SceneRenderer,
)
from core.step import StepSettings, effector_paths, sample_step, step_noise
from core.video import DEFAULT_CRF, DEFAULT_PRESET, VideoWriter

OffManifoldFn = Callable[[Tensor, Tensor], Tensor]
"""``(obs [B, O], actions [B, A]) -> [B]`` bool, e.g. ``DataManifold.off_manifold``."""

LAYER_NAMES = tuple(f.name for f in fields(OverlayLayers))
_BORDER = 3
# OGBench envs come with a time limit; this only bounds an env registered without one.
_FALLBACK_MAX_STEPS = 1000


@dataclass(frozen=True)
class Panel:
    """One tile of the grid: a guidance weight and an estimator."""

    weight: float
    estimator: str


@dataclass
class RecordSettings:
    """What to record and how.

    Attributes:
        weights, estimators: the grid; one panel per (weight, estimator), estimator-major
            (with ``cols = len(weights)`` each row is one estimator).
        episodes: episodes recorded one after another.
        seed: episode ``e`` starts from ``reset(seed + e)``; its step ``k`` draws noise from
            ``noise_seed(seed + e, k)`` (as the viewer with seed ``seed + e``).
        steps: Euler steps T of the sampler.
        candidates: N candidates sampled (and drawn) per step.
        pick_best: execute the candidate of highest Q (best-of-N); otherwise candidate 0,
            which is what a single-sample policy with this seed does (``core.step``).
        max_steps: cap on env steps per episode (None: the env's own time limit).
        width, height: size of one panel's scene render in pixels.
        fps: playback frame rate.
        camera: camera preset (``core.render.CAMERA_PRESETS``).
        layers: overlay layers drawn.
        quality: ``"fast"`` (software GL's settings everywhere: no anti-aliasing or shadows,
            coarse spheres and capsules) or ``"auto"`` (as the viewer: those on software GL,
            MuJoCo's quality on a GPU); see ``core.render.RenderSettings.for_gl``.
        path_scale: magnify candidate paths about the effector (a display aid, as in the
            viewer; captions say so when it is not 1).
        caption: draw the caption strip under each panel.
        cols: panels per row (default ``len(weights)``).
        hold_s: seconds the final frame of each episode is held.
        crf, preset: x264 encoding (MP4 only).
    """

    weights: Sequence[float]
    estimators: Sequence[str] = ("qgf",)
    episodes: int = 1
    seed: int = 0
    steps: int = 10
    candidates: int = 8
    pick_best: bool = False
    max_steps: int | None = None
    width: int = 320
    height: int = 240
    fps: float = 20.0
    camera: str = "front"
    layers: OverlayLayers = field(default_factory=OverlayLayers)
    quality: str = "fast"
    path_scale: float = 1.0
    caption: bool = True
    cols: int | None = None
    hold_s: float = 1.0
    crf: int = DEFAULT_CRF
    preset: str = DEFAULT_PRESET

    def check(self) -> None:
        """Raise ``ValueError`` naming the first bad setting (nothing is built)."""
        if not self.weights:
            raise ValueError("need at least one weight")
        for w in self.weights:
            if not np.isfinite(w):
                raise ValueError(f"weights must be finite, got {w}")
        if not self.estimators:
            raise ValueError("need at least one estimator")
        for name in self.estimators:
            if name not in ESTIMATORS:
                raise ValueError(
                    f"unknown estimator {name!r}; registered: {', '.join(sorted(ESTIMATORS))}"
                )
        for name in ("episodes", "steps", "candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if not (16 <= self.width <= 4096 and 16 <= self.height <= 4096):
            raise ValueError(f"panel size must be 16..4096 pixels, got {self.width}x{self.height}")
        if self.camera not in CAMERA_PRESETS:
            raise ValueError(
                f"unknown camera {self.camera!r}; choose from {', '.join(CAMERA_PRESETS)}"
            )
        if self.quality not in ("fast", "auto"):
            raise ValueError(f"quality must be 'fast' or 'auto', got {self.quality!r}")
        if not (np.isfinite(self.path_scale) and self.path_scale > 0):
            raise ValueError(f"path_scale must be > 0, got {self.path_scale}")
        if self.cols is not None and self.cols < 1:
            raise ValueError(f"cols must be >= 1, got {self.cols}")
        if self.hold_s < 0:
            raise ValueError(f"hold_s must be >= 0, got {self.hold_s}")

    @property
    def panels(self) -> list[Panel]:
        return [Panel(float(w), e) for e in self.estimators for w in self.weights]

    @property
    def grid_cols(self) -> int:
        return self.cols or len(self.weights)

    def step_settings(self, panel: Panel, episode: int = 0) -> StepSettings:
        """The sampling settings of ``panel`` in episode ``episode`` (``core.step``)."""
        return StepSettings(
            weight=panel.weight,
            estimator=panel.estimator,
            steps=self.steps,
            candidates=self.candidates,
            pick_best=self.pick_best,
            seed=self.seed + episode,
        )


def parse_layers(spec: str) -> OverlayLayers:
    """``"denoise,executed"`` -> only those layers; ``"all"`` or ``"none"``.

    Raises:
        ValueError: an unknown layer name (the message lists the valid ones).
    """
    spec = spec.strip()
    if spec == "all":
        return OverlayLayers()
    chosen = set() if spec == "none" else {s.strip() for s in spec.split(",") if s.strip()}
    unknown = sorted(chosen - set(LAYER_NAMES))
    if unknown:
        raise ValueError(
            f"unknown overlay layer(s) {', '.join(unknown)}; choose from "
            f"{', '.join(LAYER_NAMES)} (or all, none)"
        )
    return OverlayLayers(**{name: name in chosen for name in LAYER_NAMES})


def env_label(env_name: str) -> str:
    """Caption name: ``cube-single-play-singletask-task2-v0`` -> ``cube-single task2``."""
    parsed = parse_name(env_name)
    return parsed.family + (f" task{parsed.task_id}" if parsed.task_id else "")


@dataclass
class PanelEpisode:
    """How one panel's episode went.

    Attributes:
        panel: its weight and estimator.
        episode: episode index.
        env_steps: env steps taken.
        success: the env reported success.
        ret: undiscounted return.
        q: ``[env_steps]`` Q of the executed action (chunk) at each step.
        actions: ``[env_steps, action_dim]`` the env actions executed.
    """

    panel: Panel
    episode: int
    env_steps: int
    success: bool
    ret: float
    q: list[float]
    actions: np.ndarray


@dataclass
class RecordResult:
    """What ``record`` wrote.

    Attributes:
        path: the video file.
        frames: frames written.
        size: ``(width, height)`` of the video.
        episodes: one ``PanelEpisode`` per panel per episode, episode-major.
        wall_s: seconds from the first env reset to the closed file.
        seconds: main-thread time per part, summed over the recording: ``policy`` (waiting
            for the worker thread's env steps and sampling), ``overlay``, ``env`` (resets,
            state copies, step bookkeeping), ``render``, ``caption``, ``encode`` (tiling and
            writing).
    """

    path: Path
    frames: int
    size: tuple[int, int]
    episodes: list[PanelEpisode]
    wall_s: float
    seconds: dict[str, float]

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0


class _Clock:
    """Seconds spent per part of the loop."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, part: str) -> None:
        now = time.perf_counter()
        self.seconds[part] = self.seconds.get(part, 0.0) + now - self._t
        self._t = now


@dataclass(eq=False)
class _PanelRun:
    """One panel's live state during an episode (compared by identity)."""

    panel: Panel
    env: Any
    renderer: SceneRenderer
    shown: mujoco.MjData  # the state frame k shows, copied before the env steps on
    image: np.ndarray  # [height + caption, width, 3]: the panel as last drawn
    obs: np.ndarray = field(default_factory=lambda: np.empty(0))  # set by Recording._reset
    done: bool = False
    success: bool = False
    final_drawn: bool = False
    step: int = 0
    ret: float = 0.0
    q: float | None = None
    qs: list[float] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    chunk: np.ndarray | None = None  # [H, 5] the executing chunk
    overlay: Overlay | None = None
    caption: np.ndarray | None = None  # the caption strip of the panel's next frame


@dataclass
class _Sampled:
    """One panel's candidates at one state, on the CPU (from ``core.step.sample_step``), with
    the executed candidate, its Q and the overlay, made on the worker while the env is at
    that state."""

    guided: DenoiseTrace
    executed: int
    q: float
    overlay: Overlay


class Recording:
    """The panels' envs and renderers, reusable for several ``run`` calls (benchmarks do).

    Create, use and close it on one thread: the renderers' GL contexts belong to it. A
    worker thread runs one step ahead: while frame ``k`` is rendered, it steps every panel's
    env to ``s_{k+1}`` and samples the candidates there (each panel's shown state is a copy,
    so the env can step on). Software GL is geometry-bound on one core and the main thread's
    chain (render, caption, encode) sets the pace, so with a core to spare the env steps and
    the sampler's time hide behind it; on cores saturated by other work they cannot, and
    recording runs at the pace of the total CPU work (``benchmarks/record.py`` shows both).

    Args:
        policy: velocity field ``(obs [B,O], a_t [B,A], t [B]) -> [B,A]`` with ``.action_dim``.
        critic: aggregated Q ``(obs [B,O], a [B,A]) -> [B]``.
        env_name: dataset-style OGBench name, e.g. ``cube-single-play-singletask-task2-v0``.
        settings: what to record (checked here, before any env is made).
        device: where the networks run; observations are moved there.
        off_manifold: optional flagger for the off-manifold overlay layer.
        label: the env text of captions (default: ``env_label(env_name)``).
    """

    def __init__(
        self,
        policy: torch.nn.Module,
        critic: Callable[[Tensor, Tensor], Tensor],
        env_name: str,
        settings: RecordSettings,
        device: torch.device | str = "cpu",
        off_manifold: OffManifoldFn | None = None,
        label: str | None = None,
    ) -> None:
        settings.check()
        self.policy, self.critic = policy, critic
        self.settings = settings
        self.device = torch.device(device)
        self.off_manifold = off_manifold
        self.env_name = env_name
        self.label = label or env_label(env_name)
        action_dim = policy.action_dim
        if not isinstance(action_dim, int):
            raise TypeError(f"the policy's action_dim must be an int, got {action_dim!r}")
        self.action_dim = action_dim
        self.runs: list[_PanelRun] = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qgf-sampler")
        self.sampler_s = 0.0  # sampling time on the worker thread (env steps not included)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        s = self.settings
        strip = caption_height(s.width) if s.caption else 0
        for panel in s.panels:
            env = make_env(self.env_name)
            reset(env, s.seed)
            obs_dim = env.observation_space.shape[0]
            env_action_dim = env.action_space.shape[0]
            policy_obs = getattr(self.policy, "obs_dim", obs_dim)
            if obs_dim != policy_obs or self.action_dim % env_action_dim:
                raise ValueError(
                    f"{self.env_name} has obs/action dims ({obs_dim}, {env_action_dim}); the "
                    f"policy takes obs {policy_obs} and actions {self.action_dim}"
                )
            u = env.unwrapped
            if s.quality == "fast":
                # Software GL's settings everywhere: no MSAA or shadows, coarse spheres.
                settings = RenderSettings.for_gl(True, s.width, s.height)
                renderer = SceneRenderer(u._model, settings)
            else:
                # What the viewer picks: probe the GL, then its own defaults for it.
                renderer = SceneRenderer(u._model, size=(s.width, s.height))
            renderer.path_scale = s.path_scale
            renderer.set_preset(s.camera, u._data)
            image = np.zeros((s.height + strip, s.width, 3), np.uint8)
            self.runs.append(_PanelRun(panel, env, renderer, mujoco.MjData(u._model), image))
        first = self.runs[0].env
        self.horizon = self.action_dim // first.action_space.shape[0]
        limit = getattr(first.spec, "max_episode_steps", None)
        caps = [x for x in (s.max_steps, limit) if x]
        self.max_steps = min(caps) if caps else _FALLBACK_MAX_STEPS
        self._tiled: np.ndarray | None = None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for run in self.runs:
            run.renderer.close()
            run.env.close()
        self.runs = []

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ sampling

    def _submit(self, runs: list[_PanelRun], episode: int, step: int) -> Future[list[_Sampled]]:
        """Start sampling the candidates of ``runs`` at their current states."""
        obs = np.stack([r.obs for r in runs])
        return self._pool.submit(self._sample, runs, obs, episode, step)

    def _sample(
        self, runs: list[_PanelRun], obs_np: np.ndarray, episode: int, step: int
    ) -> list[_Sampled]:
        """Worker thread: every panel from the same noise, each in a call of its own, and
        each panel's overlay (its env must be at the sampled state).

        One call per panel, rather than one batch for all, keeps a panel's numbers
        independent of the rest of the grid (a batched matmul may round a row differently
        depending on the batch), so equal panels stay bit-identical for a whole episode.
        """
        start = time.perf_counter()
        s = self.settings
        noise = step_noise(s.seed + episode, step, s.candidates, self.action_dim)
        obs = torch.as_tensor(obs_np, dtype=torch.float32, device=self.device)
        out = []
        for o, run in zip(obs, runs, strict=True):
            draw = sample_step(self.policy, self.critic, o, s.step_settings(run.panel), noise)
            flags = None
            if s.layers.off_manifold and self.off_manifold is not None:
                flags = self.off_manifold(o.expand(s.candidates, -1), draw.guided.final).cpu()
            guided = draw.guided.to("cpu")
            ghost = None
            if s.layers.ghost and draw.ghost is not None:
                ghost = draw.ghost.to("cpu").final.numpy()
            paths = effector_paths(run.env, guided.a_hat.numpy(), guided.final.numpy(), ghost)
            overlay = paths.overlay(
                draw.executed,
                None if flags is None else flags.numpy(),
                guided.nonfinite.numpy(),
            )
            q = float(guided.q_final[draw.executed])
            out.append(_Sampled(guided, draw.executed, q, overlay))
        self.sampler_s += time.perf_counter() - start
        return out

    def _advance(
        self, runs: list[_PanelRun], actions: list[np.ndarray], episode: int, step: int
    ) -> tuple[list[tuple], list[_Sampled] | None, list[np.ndarray | None]]:
        """Worker thread: everything frame ``step`` needs but the rendering. Step each run's
        env with its action (to state ``step``), sample there the runs still going when a
        chunk starts there, and make each run's caption strip for frame ``step``. Returns the
        ``env.step`` results, the samples (None between chunk starts) and the captions; the
        main thread applies them."""
        outcomes = [run.env.step(a) for run, a in zip(runs, actions, strict=True)]
        ends = [self._ends(run, out) for run, out in zip(runs, outcomes, strict=True)]
        going = [run for run, end in zip(runs, ends, strict=True) if not end]
        sampled = None
        if going and step % self.horizon == 0:
            obs = np.stack([out[0] for out, end in zip(outcomes, ends, strict=True) if not end])
            sampled = self._sample(going, obs, episode, step)
        q = {id(r): part.q for r, part in zip(going, sampled, strict=True)} if sampled else {}
        captions = [
            self._caption(run, step, q.get(id(run), run.q), end, end and _success(out), episode)
            for run, out, end in zip(runs, outcomes, ends, strict=True)
        ]
        return outcomes, sampled, captions

    def _ends(self, run: _PanelRun, outcome: tuple) -> bool:
        """Whether ``run``'s episode ends with this ``env.step`` result (``run.step`` not yet
        counting it)."""
        _, _, terminated, truncated, _ = outcome
        return bool(terminated or truncated or run.step + 1 >= self.max_steps)

    def _apply(self, runs: list[_PanelRun], sampled: list[_Sampled]) -> None:
        """Main thread: take the new chunks and their overlays."""
        for run, part in zip(runs, sampled, strict=True):
            run.chunk = part.guided.final[part.executed].numpy().reshape(self.horizon, -1)
            run.q = part.q
            run.overlay = part.overlay

    def _caption(
        self, run: _PanelRun, step: int, q: float | None, final: bool, success: bool, episode: int
    ) -> np.ndarray | None:
        """The caption strip of ``run``'s frame at ``step`` (None without captions)."""
        s = self.settings
        if not s.caption:
            return None
        fields = CaptionFields(
            env=self.label,
            estimator=run.panel.estimator,
            weight=run.panel.weight,
            step=step,
            q=q,
            success=success,
            done=final,
            episode=episode if s.episodes > 1 else None,
            path_scale=s.path_scale,
        )
        return caption_strip(fields, s.width)

    # ------------------------------------------------------------------ one episode

    def _reset(self, episode: int) -> None:
        seed = self.settings.seed + episode
        first = None
        for run in self.runs:
            obs, _ = reset(run.env, seed)
            if first is None:
                first = obs
            elif not np.array_equal(obs, first):
                raise RuntimeError(
                    f"panels' envs reset with seed {seed} gave different start states; "
                    "the comparison would not be fair"
                )
            run.obs, run.done, run.success, run.final_drawn = obs, False, False, False
            run.step, run.ret, run.q, run.qs, run.actions = 0, 0.0, None, [], []
            run.chunk = run.overlay = None
            if self.settings.camera == "follow":
                run.renderer.set_preset("follow", run.env.unwrapped._data)

    def _draw(
        self,
        run: _PanelRun,
        data: mujoco.MjData,
        overlay: Overlay | None,
        final: bool,
        clock: _Clock,
    ) -> None:
        """Render ``data`` into ``run.image`` with the overlay and ``run.caption``; ``final``
        marks the episode's last state (border)."""
        s = self.settings
        scene = run.image[: s.height]
        run.renderer.render(data, overlay, s.layers, out=scene)
        if final:
            draw_border(scene, SUCCESS_COLOR if run.success else DONE_COLOR, _BORDER)
        clock.lap("render")
        if run.caption is not None:
            run.image[s.height :] = run.caption
            clock.lap("caption")

    def run_episode(
        self, video: VideoWriter, episode: int, clock: _Clock, progress: Any = None
    ) -> list[PanelEpisode]:
        """Record one episode of every panel into ``video``.

        Iteration ``k``: take the candidates sampled at ``s_k``, copy each state for display,
        hand the worker the env steps to ``s_{k+1}`` (and the sampling there), draw and write
        frame ``k`` while it works, then take its results.
        """
        s = self.settings
        self._reset(episode)
        clock.lap("env")
        first = self._submit(self.runs, episode, 0).result()
        clock.lap("policy")
        for run, part in zip(self.runs, first, strict=True):
            run.caption = self._caption(run, 0, part.q, False, False, episode)
        clock.lap("caption")
        sampled: list[_Sampled] | None = first  # None between chunk starts
        k = 0
        while True:
            active = [r for r in self.runs if not r.done]
            if active and k % self.horizon == 0:
                assert sampled is not None  # _advance samples the runs going at a chunk start
                self._apply(active, sampled)
                clock.lap("overlay")
            actions = []
            for run in active:
                u = run.env.unwrapped
                mujoco.mj_copyData(run.shown, u._model, u._data)
                assert run.chunk is not None  # taken by _apply at the chunk's first step
                actions.append(run.chunk[k % self.horizon].astype(np.float64))
            pending = self._pool.submit(self._advance, active, actions, episode, k + 1)
            clock.lap("env")
            for run in self.runs:
                if run in active:
                    self._draw(run, run.shown, run.overlay, False, clock)
                elif not run.final_drawn:
                    # The final state, without candidates: nothing more is sampled there.
                    # Its env is not among those the worker is stepping.
                    self._draw(run, run.env.unwrapped._data, None, True, clock)
                    run.final_drawn = True
            video.write(self._frame())
            clock.lap("encode")
            outcomes, sampled, captions = pending.result()
            clock.lap("policy")
            for run, action, outcome, caption in zip(
                active, actions, outcomes, captions, strict=True
            ):
                _, reward, _, _, _ = outcome
                run.done = self._ends(run, outcome)
                run.obs = outcome[0]
                run.actions.append(action)
                run.step += 1
                run.ret += float(reward)
                assert run.q is not None  # as run.chunk
                run.qs.append(run.q)
                run.success = _success(outcome)
                run.caption = caption
            clock.lap("env")
            if not active:
                break
            if progress is not None:
                progress.update(1)
            k += 1
        if progress is not None:
            progress.update(self.max_steps - k)
        frame = self._frame()
        for _ in range(round(s.hold_s * s.fps)):
            video.write(frame)
        clock.lap("encode")
        return [
            PanelEpisode(
                r.panel, episode, r.step, r.success, r.ret, list(r.qs), np.array(r.actions)
            )
            for r in self.runs
        ]

    def _frame(self) -> np.ndarray:
        self._tiled = tile([r.image for r in self.runs], self.settings.grid_cols, out=self._tiled)
        return self._tiled

    def run(self, video: VideoWriter, progress: bool = True) -> RecordResult:
        """Record every episode into ``video`` and close it (see ``record``)."""
        from tqdm import tqdm

        s = self.settings
        start = time.perf_counter()
        clock = _Clock()
        bar = tqdm(
            total=s.episodes * self.max_steps,
            unit="step",
            desc=f"recording {len(self.runs)} panels",
            disable=not progress,
            leave=False,
        )
        episodes: list[PanelEpisode] = []
        with bar, video:
            for e in range(s.episodes):
                episodes += self.run_episode(video, e, clock, bar)
        clock.lap("encode")
        assert video.size is not None
        return RecordResult(
            video.path, video.frames, video.size, episodes, time.perf_counter() - start,
            clock.seconds,
        )  # fmt: skip


def _success(outcome: tuple) -> bool:
    """Whether an ``env.step`` result reports success."""
    return bool(outcome[4].get("success", False))


def record(
    policy: torch.nn.Module,
    critic: Callable[[Tensor, Tensor], Tensor],
    env_name: str,
    out: str | Path,
    settings: RecordSettings,
    device: torch.device | str = "cpu",
    off_manifold: OffManifoldFn | None = None,
    progress: bool = True,
) -> RecordResult:
    """Record rollouts of every (weight, estimator) panel to a tiled video at ``out``.

    The settings and the output path (extension, directory, permissions) are checked first, so
    a mistake fails before any env is made or frame rendered. The file appears under ``out``
    only when complete; an interrupted recording follows ``core.video``'s policy (the frames
    so far kept as ``<stem>.partial<ext>``).

    Returns:
        A ``RecordResult``: file, frame count, size, per-panel episode outcomes, timings.
    """
    settings.check()
    video = VideoWriter(out, settings.fps, crf=settings.crf, preset=settings.preset)
    try:
        recording = Recording(policy, critic, env_name, settings, device, off_manifold)
    except BaseException:
        video.abort()
        raise
    with recording:
        return recording.run(video, progress)
