"""Offline training of the two parts QGF composes at test time.

- A flow-matching BC policy: velocity ``v(s, a_t, t)`` on the linear path
  ``a_t = (1 - t) a_0 + t a_1`` (``a_0 ~ N(0, I)``, ``a_1`` the dataset action or chunk),
  regressed on ``a_1 - a_0`` with ``t`` drawn from the grid ``{0, 1/T, .., 1}``.
- An IQL critic: a Q ensemble regressed on ``R + discount * V(s')``, V fitted to the target
  Q (min over heads) by expectile regression, and a Polyak-averaged target critic (the one
  guidance uses).

The two are independent (the critic never sees the policy), so one optimiser steps the sum
of the three losses; Adam is per-parameter, which makes that identical to three optimisers.

Action chunking (``horizon = H``): the policy samples, and Q scores, ``H`` consecutive env
actions flattened to ``H * 5`` dims. A chunk starts at any row ``i`` whose next ``H - 1``
rows are in the same trajectory. With OGBench's singletask relabelling, row ``j`` carries
``r_j`` and ``m_j`` (``m_j = 0`` once the task is solved in ``s_j``). The chunk's target is::

    R_i  = sum_{j<H} discount^j * r_{i+j} * prod_{l<j} m_{i+l}   # rewards until solved
    M_i  = discount^H * prod_{j<H} m_{i+j}                       # bootstrap factor
    Q(s_i, a_{i:i+H}) <- R_i + M_i * V(s_{i+H})

so ``H = 1`` is plain one-step IQL, and ``discount`` stays a per-env-step discount.

Hyperparameters live in ``TrainConfig``; ``qgf train`` exposes every field as a flag.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.checkpoints import (
    CheckpointConfig,
    DatasetSample,
    load_state,
    optimizer_from_tensors,
    optimizer_to_tensors,
    recover_checkpoint,
    save_checkpoint,
    sha256_arrays,
)
from core.defaults import DEFAULT_ENV
from core.files import atomic_write, check_output_dir
from core.models import Critic, VelocityField


@dataclass
class TrainConfig:
    """Every training hyperparameter (reference values: docs/ALGORITHM.md, "Reference
    settings").

    hidden: 4 x 256 rather than the reference 4 x 512 / 4 x 1024 keeps CPU training to
    ~25 steps/s and shipped checkpoints small, and was enough for guidance to matter on
    cube-single. discount 0.99 is FQL's value, the one measured there.
    """

    env: str = DEFAULT_ENV
    steps: int = 30_000
    batch_size: int = 256
    hidden: tuple[int, ...] = (256, 256, 256, 256)
    layer_norm: bool = True
    time_dim: int = 16
    horizon: int = 1  # action chunk length H (QGF's main runs use 5)
    flow_steps: int = 10  # T: Euler steps, and the grid flow times are drawn from
    lr: float = 3e-4
    discount: float = 0.99  # per env step, also inside a chunk
    expectile: float = 0.9
    tau: float = 0.005  # target critic Polyak rate
    q_ensemble: int = 2
    action_clip: float = 1 - 1e-5  # dataset actions clipped to +-this
    seed: int = 0
    log_every: int = 100
    save_every: int = 5_000
    eval_every: int = 10_000  # 0: no periodic evaluation
    eval_episodes: int = 10
    eval_weights: tuple[float, ...] = (0.0, 0.03)
    sample_size: int = 20_000  # rows of the compact dataset sample stored in checkpoints

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(unknown)}")
        values = dict(data)
        for key in ("hidden", "eval_weights"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


def env_task(env: str) -> tuple[str, int | None]:
    """``cube-single-play-singletask-task2-v0 -> ("cube-single-play-v0", 2)``."""
    parts = env.split("-")
    if "singletask" not in parts:
        return env, None
    pos = parts.index("singletask")
    task = None
    for p in parts[pos + 1 :]:
        if p.startswith("task") and p[4:].isdigit():
            task = int(p[4:])
    return "-".join(parts[:pos] + parts[-1:]), task


def checkpoint_config(
    config: TrainConfig, obs_dim: int, action_dim: int, step: int, **extra: Any
) -> CheckpointConfig:
    """The checkpoint config of a policy and critic trained with ``config`` for ``step`` steps.

    Args:
        obs_dim, action_dim: observation size and one env action's size.
        extra: further ``CheckpointConfig`` fields (data fingerprint, hyperparameters, time).
    """
    dataset, task = env_task(config.env)
    extra.setdefault("data_fingerprint", {})
    return CheckpointConfig(
        env=config.env,
        dataset=dataset,
        task=task,
        obs_dim=obs_dim,
        action_dim=action_dim,
        horizon=config.horizon,
        hidden=list(config.hidden),
        layer_norm=config.layer_norm,
        time_dim=config.time_dim,
        q_ensemble=config.q_ensemble,
        flow_steps=config.flow_steps,
        training_steps=step,
        **extra,
    )


@dataclass
class ChunkedData:
    """Training transitions, one per valid chunk start, as tensors on the training device.

    Attributes:
        observations: ``[N, O]`` s_i.
        actions: ``[N, H*A]`` a_i .. a_{i+H-1}, clipped, flattened.
        next_observations: ``[N, O]`` s_{i+H}.
        rewards: ``[N]`` R_i (module docstring).
        bootstrap: ``[N]`` M_i, discount^H times the product of masks.
    """

    observations: Tensor
    actions: Tensor
    next_observations: Tensor
    rewards: Tensor
    bootstrap: Tensor

    def __len__(self) -> int:
        return self.observations.shape[0]

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        idx = torch.randint(len(self), (batch_size,), generator=generator)
        idx = idx.to(self.observations.device)
        return {
            "observations": self.observations[idx],
            "actions": self.actions[idx],
            "next_observations": self.next_observations[idx],
            "rewards": self.rewards[idx],
            "bootstrap": self.bootstrap[idx],
        }


def chunk_transitions(
    dataset: Mapping[str, np.ndarray],
    horizon: int,
    discount: float,
    action_clip: float,
    device: str | torch.device = "cpu",
) -> ChunkedData:
    """Build H-step chunk transitions from an OGBench singletask dataset.

    Args:
        dataset: ``observations [N,O]``, ``actions [N,A]``, ``next_observations [N,O]``,
            ``rewards [N]``, ``masks [N]``, ``terminals [N]`` (1 on each trajectory's last
            row), as OGBench's regular (non-compact) loader returns them.
        horizon: H >= 1.
        discount: per-step discount.
        action_clip: clip dataset actions to +-this.
        device: where the tensors live (the whole dataset is kept there).

    Returns:
        ``ChunkedData`` with one row per start ``i`` such that rows ``i .. i+H-1`` belong
        to one trajectory.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    obs = np.asarray(dataset["observations"], np.float32)
    act = np.clip(np.asarray(dataset["actions"], np.float32), -action_clip, action_clip)
    n = obs.shape[0]
    terminals = np.asarray(dataset["terminals"], bool)
    rewards = np.asarray(dataset["rewards"], np.float32)
    masks = np.asarray(dataset["masks"], np.float32)
    # A start i is valid when none of rows i .. i+H-2 ends a trajectory (row i+H-1 may).
    ends = np.concatenate([[0], np.cumsum(terminals)])
    starts = np.arange(n - horizon + 1)
    valid = starts[ends[starts + horizon - 1] - ends[starts] == 0]
    rows = valid[:, None] + np.arange(horizon)[None, :]  # [N', H]
    alive = np.cumprod(np.concatenate([np.ones((len(valid), 1)), masks[rows]], 1), 1)
    powers = discount ** np.arange(horizon)
    chunk_rewards = (powers * rewards[rows] * alive[:, :-1]).sum(1)
    bootstrap = discount**horizon * alive[:, -1]

    def put(a: np.ndarray) -> Tensor:
        return torch.as_tensor(np.ascontiguousarray(a, np.float32)).to(device)

    return ChunkedData(
        observations=put(obs[valid]),
        actions=put(act[rows].reshape(len(valid), -1)),
        next_observations=put(np.asarray(dataset["next_observations"])[valid + horizon - 1]),
        rewards=put(chunk_rewards),
        bootstrap=put(bootstrap),
    )


def data_fingerprint(dataset: Mapping[str, np.ndarray], file_sha256: str | None) -> dict:
    """What identifies the training data: array hash, sizes, and the file's hash if known."""
    keys = ("observations", "actions", "rewards", "masks", "terminals")
    return {
        "arrays_sha256": sha256_arrays({k: np.asarray(dataset[k]) for k in keys}),
        "file_sha256": file_sha256,
        "transitions": int(np.asarray(dataset["observations"]).shape[0]),
        "trajectories": int(np.asarray(dataset["terminals"]).sum()),
    }


def expectile_loss(diff: Tensor, expectile: float) -> Tensor:
    """Asymmetric L2: ``|expectile - 1(diff < 0)| * diff^2``, elementwise."""
    weight = torch.where(diff > 0, expectile, 1.0 - expectile)
    return weight * diff.square()


class Learner(nn.Module):
    """Flow BC policy + IQL critic + target critic, and their one optimiser."""

    def __init__(self, config: TrainConfig, obs_dim: int, action_dim: int) -> None:
        super().__init__()
        self.config = config
        self.policy = VelocityField(
            obs_dim,
            action_dim,
            hidden=config.hidden,
            horizon=config.horizon,
            layer_norm=config.layer_norm,
            time_dim=config.time_dim,
        )
        self.critic = Critic(
            obs_dim,
            config.horizon * action_dim,
            hidden=config.hidden,
            ensemble=config.q_ensemble,
            layer_norm=config.layer_norm,
        )
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        params = list(self.policy.parameters()) + list(self.critic.parameters())
        self.optimizer = torch.optim.Adam(params, lr=config.lr)

    def flow_loss(self, batch: Mapping[str, Tensor], generator: torch.Generator) -> tuple:
        """Flow matching: ``|| v(s, a_t, t) - (a_1 - a_0) ||^2`` with t on the grid."""
        a_1 = batch["actions"]
        steps = self.config.flow_steps
        a_0 = torch.randn(a_1.shape, generator=generator).to(a_1)
        t = torch.randint(0, steps + 1, (a_1.shape[0],), generator=generator).to(a_1) / steps
        a_t = (1.0 - t[:, None]) * a_0 + t[:, None] * a_1
        v = self.policy(batch["observations"], a_t, t)
        loss = F.mse_loss(v, a_1 - a_0)
        return loss, {"flow/loss": loss}

    def value_loss(self, batch: Mapping[str, Tensor]) -> tuple:
        """IQL V: expectile regression of V(s) on min over heads of the target Q(s, a)."""
        with torch.no_grad():
            q = self.target_critic(batch["observations"], batch["actions"])
        v = self.critic.v(batch["observations"])
        loss = expectile_loss(q - v, self.config.expectile).mean()
        return loss, {"value/loss": loss, "value/v_mean": v.mean()}

    def critic_loss(self, batch: Mapping[str, Tensor]) -> tuple:
        """IQL Q: every head regressed on ``R + M * V(s')`` (module docstring)."""
        with torch.no_grad():
            next_v = self.critic.v(batch["next_observations"])
            target = batch["rewards"] + batch["bootstrap"] * next_v
        qs = self.critic.q_all(batch["observations"], batch["actions"])  # [E, B]
        loss = (qs - target[None]).square().mean(dim=1).sum()
        return loss, {"critic/loss": loss, "critic/q_mean": qs.mean(), "critic/q_min": qs.min()}

    def update(self, batch: Mapping[str, Tensor], generator: torch.Generator) -> dict:
        """One gradient step on all three losses, then the target update."""
        flow, info = self.flow_loss(batch, generator)
        value, value_info = self.value_loss(batch)
        critic, critic_info = self.critic_loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        (flow + value + critic).backward()
        self.optimizer.step()
        with torch.no_grad():
            tau = self.config.tau
            for p, tp in zip(
                self.critic.parameters(), self.target_critic.parameters(), strict=True
            ):
                tp.lerp_(p, tau)
        info.update(value_info)
        info.update(critic_info)
        return {k: float(v.detach()) for k, v in info.items()}


EvalFn = Callable[[VelocityField, Critic, int], dict[str, float]]
"""``(policy, target critic, step) -> {name: number}``: a periodic evaluation."""


@dataclass
class TrainResult:
    """Where training ended: the checkpoint, its step, wall time and the last logged row."""

    checkpoint: Path
    steps: int
    wall_time_s: float
    steps_per_s: float
    last_log: dict[str, float]


def _csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    if not rows:
        return b""
    names: list[str] = []
    for row in rows:
        names += [k for k in row if k not in names]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=names)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def _read_csv(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def train(
    config: TrainConfig,
    dataset: Mapping[str, np.ndarray],
    out: str | os.PathLike,
    device: str | torch.device = "cpu",
    data_sha256: str | None = None,
    sample: DatasetSample | None = None,
    evaluate: EvalFn | None = None,
    resume: bool = True,
    log_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train (or resume training) a policy and critic into the checkpoint ``out``.

    Args:
        config: hyperparameters; ``config.steps`` is the total, counting resumed steps.
        dataset: singletask arrays (``chunk_transitions`` lists the keys).
        out: checkpoint directory, rewritten atomically every ``save_every`` steps and at
            the end; its ``train_log.csv`` holds every logged row.
        device: torch device for the networks and the dataset tensors.
        data_sha256: sha256 of the dataset file, recorded in the fingerprint.
        sample: compact dataset sample to store (default: random rows of ``dataset``).
        evaluate: optional periodic evaluation, called every ``eval_every`` steps.
        resume: continue from ``out`` when it holds a checkpoint of the same data.
        log_dir: where ``log.csv`` (and TensorBoard events, if installed) are written while
            training runs; default ``runs/<name of out>``.
        progress: show a tqdm bar with the losses.

    Returns:
        A ``TrainResult``.
    """
    from tqdm import tqdm

    out = Path(out)
    log_dir = Path(log_dir) if log_dir is not None else Path("runs") / out.name
    # A read-only or full output disk fails here, before any step is trained.
    check_output_dir(out.parent)
    check_output_dir(log_dir)
    device = torch.device(device)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)

    fingerprint = data_fingerprint(dataset, data_sha256)
    data = chunk_transitions(
        dataset, config.horizon, config.discount, config.action_clip, device=device
    )
    obs_dim = data.observations.shape[1]
    action_dim = np.asarray(dataset["actions"]).shape[1]
    if sample is None:
        rng = np.random.default_rng(config.seed)
        n = np.asarray(dataset["observations"]).shape[0]
        picked = np.sort(rng.choice(n, size=min(config.sample_size, n), replace=False))
        sample = DatasetSample(
            np.asarray(dataset["observations"])[picked], np.asarray(dataset["actions"])[picked]
        )

    learner = Learner(config, obs_dim, action_dim).to(device)
    evals: list[dict[str, Any]] = []
    step, wall_before, rows = 0, 0.0, []
    if resume and recover_checkpoint(out):
        print(f"qgf train: put back {out}, which a killed save had left under a temporary name")
    if resume and (out / "config.json").exists():
        state = load_state(out, expect_env=config.env)
        if state.config.data_fingerprint.get("arrays_sha256") != fingerprint["arrays_sha256"]:
            raise ValueError(f"{out} was trained on other data; pass another --out to start anew")
        if not state.optimizer_meta:
            raise ValueError(f"{out} has no optimizer state to resume from")
        learner.policy.load_state_dict(state.weights["policy"])
        learner.critic.load_state_dict(state.weights["critic"])
        learner.target_critic.load_state_dict(state.weights["target_critic"])
        learner.optimizer.load_state_dict(
            optimizer_from_tensors(state.optimizer, state.optimizer_meta)
        )
        step, wall_before = state.config.training_steps, state.config.wall_time_s
        rows = _read_csv(out / "train_log.csv")
        if (out / "train_eval.json").is_file():
            evals[:] = json.loads((out / "train_eval.json").read_text())
        if "rng.batches" in state.optimizer:
            generator.set_state(state.optimizer["rng.batches"].to(torch.uint8))
    learner.to(device)
    # The live log restarts from the checkpoint's rows: the steps after its last save are
    # trained again, and logged once.
    _write_log(log_dir / "log.csv", rows)

    def save(wall: float) -> None:
        tensors, meta = optimizer_to_tensors(learner.optimizer)
        tensors["rng.batches"] = generator.get_state()
        extras = {"train_log.csv": _csv_bytes(rows)}
        if evals:
            extras["train_eval.json"] = (json.dumps(evals, indent=2) + "\n").encode()
        save_checkpoint(
            out,
            checkpoint_config(
                config,
                obs_dim,
                action_dim,
                step,
                data_fingerprint=fingerprint,
                train=asdict(config),
                wall_time_s=round(wall, 1),
            ),
            learner.policy,
            learner.critic,
            learner.target_critic,
            sample,
            optimizer=(tensors, meta),
            extras=extras,
        )

    writer = _tensorboard(log_dir)
    start = time.perf_counter()
    first_step = step
    last: dict[str, float] = {}
    bar = tqdm(total=config.steps, initial=step, disable=not progress, dynamic_ncols=True)
    learner.train()
    while step < config.steps:
        batch = data.sample(config.batch_size, generator)
        info = learner.update(batch, generator)
        step += 1
        bar.update(1)
        if step % config.log_every == 0 or step == config.steps:
            if not all(math.isfinite(v) for v in info.values()):
                raise FloatingPointError(f"non-finite loss at step {step}: {info}")
            wall = wall_before + time.perf_counter() - start
            last = {"step": step, "wall_time_s": round(wall, 2), **info}
            rows.append(last)
            _append_csv(log_dir / "log.csv", last)
            if writer is not None:
                for k, v in info.items():
                    writer.add_scalar(k, v, step)
            bar.set_postfix(
                flow=f"{info['flow/loss']:.3f}",
                q=f"{info['critic/q_mean']:.1f}",
                v=f"{info['value/loss']:.3f}",
            )
        if evaluate is not None and config.eval_every and step % config.eval_every == 0:
            learner.eval()
            try:
                scores = evaluate(learner.policy, learner.target_critic, step)
            except Exception as e:
                # The periodic evaluation is a diagnostic: a failure in it (an env, a plugin
                # estimator) is recorded, and must not throw away the training since the
                # last save.
                scores = {}
                evals.append({"step": step, "error": f"{type(e).__name__}: {e}"})
                bar.write(f"step {step}: periodic evaluation failed: {type(e).__name__}: {e}")
            learner.train()
            if scores:
                evals.append({"step": step, **scores})
                bar.write(f"step {step}: " + ", ".join(f"{k}={v:.3g}" for k, v in scores.items()))
            if writer is not None:
                for k, v in scores.items():
                    writer.add_scalar(f"eval/{k}", v, step)
        if step % config.save_every == 0 or step == config.steps:
            save(wall_before + time.perf_counter() - start)
    bar.close()
    if writer is not None:
        writer.close()
    elapsed = time.perf_counter() - start
    if step == first_step:  # nothing to do (already trained this far): keep the checkpoint
        return TrainResult(out, step, wall_before, 0.0, last)
    return TrainResult(
        out, step, wall_before + elapsed, (step - first_step) / max(elapsed, 1e-9), last
    )


def _write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    if rows:
        atomic_write(path, lambda tmp: tmp.write_bytes(_csv_bytes(rows)))
    else:
        path.unlink(missing_ok=True)


def _append_csv(path: Path, row: Mapping[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _tensorboard(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(log_dir))
