"""Distance of candidate actions to the data the policy was trained on.

Definition
----------
For a state ``s`` and a candidate action ``a`` (one env action, or a chunk of ``H`` env
actions flattened to ``H * action_dim`` dims), the distance to the data is::

    d(s, a) = min_{j in N_k(s)} ||a - a_j||_2 / sqrt(H)

``N_k(s)`` are the ``k`` dataset rows whose states are nearest to ``s`` in standardised
observation space, ``z = (s - mean) / std`` with the mean and std of the dataset sample
(dims that are constant in the data get std 1: they shift every state distance equally and
so never change which rows are nearest). ``a_j`` is the action, or action chunk, the data
took at row ``j``. In words: how far, in action units, the candidate is from the closest
thing the data did in similar states. Dividing by ``sqrt(H)`` makes a chunk's distance the
root-mean-square distance per env action, so numbers read the same for any horizon.

Two stages (states first, then actions) rather than one joint state-action metric, because
the question a researcher asks is "did the data ever do this *here*", and a joint metric
needs a state-vs-action exchange rate that has no natural value; a candidate far from the
data in a familiar state is exactly what guidance produces when it over-steers.

Chunks
------
With action chunking the candidate is a whole chunk, and the policy was trained on chunks of
consecutive dataset actions, so that is what it is compared with: the reference row ``j``
holds ``a_j .. a_{j+H-1}`` from one trajectory (rows whose chunk would cross a trajectory end
are dropped), and its state is ``s_j``. Guidance that bends only the later actions of a
chunk away from the data is therefore seen, which a first-action-only distance would miss.

Building chunks needs trajectory boundaries. A checkpoint's compact dataset sample is a
random subset of single rows without them; from such a sample the reference holds single
actions (``horizon`` 1) and a candidate chunk is compared on its first action, the one that
is executed first. ``DataManifold.horizon`` says which comparison is in force.

Threshold
---------
A candidate is off-manifold when ``d(s, a)`` exceeds the ``quantile`` (default 0.95) of the
same distance for dataset pairs ``(s_i, a_i)`` held out of the reference set. Whole
trajectories are held out when trajectory ids are known: a held-out row's own neighbours in
time are then not in the reference set, so the calibration measures the distance between
*different* demonstrations in similar states, which is the situation of a policy visiting a
state of its own. Holding out single rows leaves the adjacent steps of the same trajectory
in the reference and makes the threshold too strict, the more so the denser the sample.
The held-out rows are not used as reference afterwards, so the threshold describes exactly
the quantity that queries compute.

Measured on cube-single-play (330 generated trajectories, k = 32, 3 seeds): the fraction of
pairs from the 10 *validation* trajectories flagged at the 95% threshold, which should be 5%:

=================  ======================  ======================
sample of rows      trajectories held out   single rows held out
=================  ======================  ======================
20,000 (ckpt size)  4.3 / 4.5 / 5.2 %       6.4 / 4.6 / 6.7 %
100,000             3.8 / 5.0 / 5.1 %       10.2 / 9.5 / 9.7 %
=================  ======================  ======================

(thresholds 0.42-0.48 with trajectories; 0.43-0.45 and 0.34-0.35 with single rows.)

Speed: brute force in torch, not an index
-----------------------------------------
Medians on this project's 2-core CPU under the team's usual load (~7 on 2 cores), torch
2.13, float32, k = 32, reference of 100,000 rows of cube-single-play (28-dim states),
``benchmarks/manifold_knn.py``:

=======================================  ===========  ====================
                                          torch brute  scipy cKDTree
=======================================  ===========  ====================
state search, 1 state                     0.8-1.0 ms   30-35 ms
query, 1 state x 64 candidates (viewer)   1.05-1.14 ms (search alone 30 ms)
query, 256 states x 6 (diagnose)          0.86-1.05 s  6.4 s (search alone)
build                                     none         0.43-0.50 s
=======================================  ===========  ====================

The k-d tree loses by 30x on the real states: standardised joint velocities and cube poses
fill the 28 dims, and a tree only prunes on low-dimensional data (on synthetic states lying
on an 8-dim latent it searched one state in 0.1 ms, against 0.7 ms brute). The brute force
is one ``[S, O+1] @ [O+1, N]`` matmul (with ``|x|^2`` folded in as an extra column) and a
``topk`` per block of query states, costs the same on any data, needs no new dependency,
runs on CUDA unchanged, and is exact. At about 1 ms per viewer step it is far inside the
frame budget. Fitting on a 20,000-row checkpoint sample (2,000 calibration queries) takes
about 0.5 s.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from core.guidance import QFn, VelocityFn, guided_sample

DEFAULT_K = 32
DEFAULT_QUANTILE = 0.95
# Query states are processed in blocks so the [S, N] score matrix stays near this size
# (4M floats = 16 MB in float32), whatever the number of query states.
_SCORE_ELEMENTS = 1 << 22


ArrayLike = np.ndarray | Tensor


def _take(x: Tensor, idx: Tensor) -> Tensor:
    """``x[idx]`` for an integer index of any shape, via ``index_select``.

    Advanced indexing (``x[idx]``) and ``min(dim=...)`` open a parallel region even for a few
    hundred elements; on a busy 2-core CPU each such op waited ~20 ms for a descheduled
    worker thread (measured under load 8; ``index_select``, ``argmin`` and ``amin`` took
    microseconds). Keeping the per-candidate arithmetic to ops of the second kind is what
    keeps a query near 1 ms there.
    """
    return x.index_select(0, idx.reshape(-1)).reshape(*idx.shape, *x.shape[1:])


def _as_tensor(x: ArrayLike, dtype: torch.dtype | None = None) -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
    return t.to(dtype) if dtype is not None else t


def episode_index(terminals: ArrayLike) -> np.ndarray:
    """Trajectory index of every row from OGBench-style terminals.

    Args:
        terminals: ``[N]`` true at each trajectory's last row.

    Returns:
        ``[N]`` int64: 0 for the rows of the first trajectory, 1 for the next, ...
    """
    term = np.asarray(terminals).astype(bool)
    ends_before = np.concatenate([[0], np.cumsum(term)[:-1]])
    return ends_before.astype(np.int64)


def chunk_actions(
    actions: ArrayLike, episodes: ArrayLike, horizon: int
) -> tuple[np.ndarray, np.ndarray]:
    """Chunks of ``horizon`` consecutive actions that stay inside one trajectory.

    Args:
        actions: ``[N, a]`` per-step actions, rows in time order within each trajectory.
        episodes: ``[N]`` trajectory index of each row (``episode_index``).
        horizon: chunk length ``H``.

    Returns:
        ``(chunks [M, H * a], rows [M])``: the flattened chunk ``a_j .. a_{j+H-1}`` for every
        row ``j`` whose chunk lies in one trajectory, and those rows ``j``.
    """
    actions = np.asarray(actions)
    episodes = np.asarray(episodes)
    n = len(actions)
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    last = n - horizon
    if last < 0:
        return np.empty((0, horizon * actions.shape[1]), actions.dtype), np.empty(0, np.int64)
    rows = np.arange(last + 1)
    rows = rows[episodes[rows] == episodes[rows + horizon - 1]]
    chunks = np.stack([actions[rows + h] for h in range(horizon)], axis=1)
    return chunks.reshape(len(rows), -1), rows


@dataclass
class ManifoldQuery:
    """Distance to the data of a batch of candidates.

    Attributes:
        distance: ``[B]`` d(s, a), see the module docstring.
        nearest: ``[B]`` reference row whose action is closest (``manifold.actions[nearest]``).
        state_distance: ``[B]`` standardised Euclidean distance from s to its nearest data
            state; large values say the state itself is unlike the data, so the action
            distance is measured against far-away behaviour.
        off_manifold: ``[B]`` ``distance > threshold``.
    """

    distance: Tensor
    nearest: Tensor
    state_distance: Tensor
    off_manifold: Tensor


@dataclass
class DataManifold:
    """A reference set of (state, action-or-chunk) pairs with a calibrated threshold.

    Build it with ``DataManifold.fit`` (arrays) or ``DataManifold.from_sample``.

    Attributes:
        states: ``[N, O]`` standardised reference states.
        actions: ``[N, A]`` reference actions, ``A = horizon * action_dim``.
        obs_mean, obs_std: ``[O]`` the standardisation.
        horizon: env actions per reference chunk ``H``. Candidates may be longer chunks of
            the same env action (a multiple of ``action_dim / horizon`` wide); they are then
            compared on their first ``horizon`` env actions.
        k: nearest states searched per query.
        threshold: distances above it are off-manifold.
        quantile: the quantile of ``calibration`` that set ``threshold``.
        calibration: ``[M]`` distances of held-out dataset pairs (sorted ascending).
        source_rows: ``[N]`` for each reference row, its row in the arrays given to ``fit``
            (to look up anything else the dataset recorded there); -1 when unknown (all -1
            when not given).
        calibration_rows: ``[M]`` the rows of the held-out pairs, in the same sense.
    """

    states: Tensor
    actions: Tensor
    obs_mean: Tensor
    obs_std: Tensor
    horizon: int = 1
    k: int = DEFAULT_K
    threshold: float = math.inf
    quantile: float = DEFAULT_QUANTILE
    calibration: Tensor = field(default_factory=lambda: torch.empty(0))
    source_rows: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    calibration_rows: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    env_action_dim: int = field(init=False)
    _keys_t: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.states.ndim != 2 or self.actions.ndim != 2:
            raise ValueError("states must be [N, O] and actions [N, A]")
        if self.states.shape[0] != self.actions.shape[0]:
            raise ValueError(
                f"states and actions differ in rows: {self.states.shape[0]} vs "
                f"{self.actions.shape[0]}"
            )
        if self.states.shape[0] == 0:
            raise ValueError("the reference set is empty")
        if self.source_rows.numel() == 0:
            self.source_rows = torch.full(
                (self.states.shape[0],), -1, dtype=torch.long, device=self.states.device
            )
        if self.actions.shape[1] % self.horizon:
            raise ValueError(
                f"action width {self.actions.shape[1]} is not a multiple of horizon {self.horizon}"
            )
        self.env_action_dim = self.actions.shape[1] // self.horizon
        # Ranking keys for one GEMM per query block: [-2z, 1] @ [x, |x|^2]^T = |x|^2 - 2 z.x,
        # which orders rows as ||z - x||^2 does (|z|^2 is the same for every row). One matmul
        # and no elementwise pass over [S, N] matters on a busy CPU, where each extra
        # parallel op over N elements cost as much as the matmul itself.
        sq = (self.states * self.states).sum(dim=1, keepdim=True)
        self._keys_t = torch.cat([self.states, sq], dim=1).T.contiguous()

    # ------------------------------------------------------------------ construction

    @classmethod
    def fit(
        cls,
        observations: ArrayLike,
        actions: ArrayLike,
        *,
        episodes: ArrayLike | None = None,
        horizon: int = 1,
        k: int = DEFAULT_K,
        quantile: float = DEFAULT_QUANTILE,
        holdout: float = 0.1,
        max_calibration: int = 2048,
        seed: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> DataManifold:
        """Build the reference set from dataset pairs and calibrate the threshold.

        Args:
            observations: ``[N, O]`` dataset states.
            actions: ``[N, H * a]`` the action (chunk) taken at each state.
            episodes: ``[N]`` trajectory index of each row; whole trajectories are then held
                out for calibration, else single rows (see the module docstring for why
                trajectories are better).
            horizon: env actions per row of ``actions`` (H).
            k: nearest states per query.
            quantile: quantile of held-out distances that becomes the threshold.
            holdout: fraction of trajectories (or rows) held out for calibration.
            max_calibration: at most this many held-out pairs are queried.
            seed: seed of the hold-out draw.
            device, dtype: where and in what precision the reference set lives.
        """
        obs = np.asarray(_as_tensor(observations, torch.float64))
        act = np.asarray(_as_tensor(actions, torch.float64))
        if obs.ndim != 2 or act.ndim != 2 or len(obs) != len(act):
            raise ValueError(
                f"observations [N, O] and actions [N, A] with the same N expected, got "
                f"{list(obs.shape)} and {list(act.shape)}"
            )
        if len(obs) < 2:
            raise ValueError(f"need at least 2 dataset rows, got {len(obs)}")
        if not 0.0 < quantile < 1.0 or not 0.0 < holdout < 1.0:
            raise ValueError(f"quantile and holdout must lie in (0, 1): {quantile}, {holdout}")

        mean = obs.mean(axis=0)
        std = obs.std(axis=0)
        std = np.where(std > 1e-6, std, 1.0)

        rng = np.random.default_rng(seed)
        ids = None if episodes is None else np.unique(np.asarray(episodes))
        if ids is not None and len(ids) >= 2:
            n_out = min(len(ids) - 1, max(1, round(holdout * len(ids))))
            held = np.isin(np.asarray(episodes), rng.choice(ids, size=n_out, replace=False))
        else:
            held = np.zeros(len(obs), dtype=bool)
            n_out = min(len(obs) - 1, max(1, round(holdout * len(obs))))
            held[rng.choice(len(obs), size=n_out, replace=False)] = True
        queries = np.flatnonzero(held)
        if len(queries) > max_calibration:
            queries = np.sort(rng.choice(queries, size=max_calibration, replace=False))

        def tensor(x: np.ndarray) -> Tensor:
            return torch.as_tensor(x, dtype=dtype, device=device)

        manifold = cls(
            states=tensor((obs[~held] - mean) / std),
            actions=tensor(act[~held]),
            obs_mean=tensor(mean),
            obs_std=tensor(std),
            horizon=horizon,
            k=k,
            quantile=quantile,
            source_rows=torch.as_tensor(np.flatnonzero(~held), device=device),
            calibration_rows=torch.as_tensor(queries, device=device),
        )
        manifold.calibrate(tensor(obs[queries]), tensor(act[queries]), quantile)
        return manifold

    @classmethod
    def from_trajectories(
        cls,
        observations: ArrayLike,
        actions: ArrayLike,
        terminals: ArrayLike,
        horizon: int = 1,
        **kwargs,
    ) -> DataManifold:
        """Build from whole trajectories (a dataset in OGBench's layout).

        Args:
            observations: ``[N, O]`` states, rows in time order within each trajectory.
            actions: ``[N, a]`` per-step actions.
            terminals: ``[N]`` true at each trajectory's last row.
            horizon: the policy's chunk length H: reference rows become chunks of H
                consecutive actions inside one trajectory (``chunk_actions``).
            **kwargs: passed to ``fit`` (k, quantile, holdout, device, ...).

        ``source_rows`` and ``calibration_rows`` of the result index the arrays given here.
        """
        episodes = episode_index(terminals)
        obs = np.asarray(_as_tensor(observations))
        chunks, rows = chunk_actions(np.asarray(_as_tensor(actions)), episodes, horizon)
        manifold = cls.fit(obs[rows], chunks, episodes=episodes[rows], horizon=horizon, **kwargs)
        lookup = torch.as_tensor(rows, device=manifold.device)
        manifold.source_rows = lookup[manifold.source_rows]
        manifold.calibration_rows = lookup[manifold.calibration_rows]
        return manifold

    @classmethod
    def from_sample(cls, sample: object, horizon: int = 1, **kwargs) -> DataManifold:
        """Build from a dataset sample: a checkpoint's ``DatasetSample`` or a mapping.

        Args:
            sample: has ``observations [N, O]`` and ``actions [N, a]`` (attributes or keys).
                Used when present: ``terminals [N]`` (the rows are whole trajectories: chunks
                are built, see ``from_trajectories``); else ``action_chunks [N, H * a]``
                (the chunk starting at each row) and ``episodes [N]`` (trajectory index of
                each row, for holding out whole trajectories).
            horizon: the policy's chunk length. When the sample has neither terminals nor
                chunks of that length, the reference keeps single actions and candidates
                are compared on their first action (the result's ``horizon`` is 1).
            **kwargs: passed to ``fit`` (k, quantile, device, ...).
        """

        def get(name: str) -> ArrayLike | None:
            if isinstance(sample, Mapping):
                return sample.get(name)
            return getattr(sample, name, None)

        obs, act = get("observations"), get("actions")
        if obs is None or act is None:
            raise ValueError("a dataset sample needs observations and actions")
        terminals, chunks, episodes = get("terminals"), get("action_chunks"), get("episodes")
        if terminals is not None:
            return cls.from_trajectories(obs, act, terminals, horizon, **kwargs)
        width = np.shape(act)[1]
        if horizon > 1 and chunks is not None and np.shape(chunks)[1] == horizon * width:
            return cls.fit(obs, chunks, episodes=episodes, horizon=horizon, **kwargs)
        return cls.fit(obs, act, episodes=episodes, horizon=1, **kwargs)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, **kwargs) -> DataManifold:
        """Build from a checkpoint directory's dataset sample, for its policy's horizon.

        Args:
            path: checkpoint directory (``core.checkpoints`` layout).
            **kwargs: passed to ``fit`` (k, quantile, device, ...).
        """
        from core.checkpoints import load_dataset_sample, read_config

        horizon = read_config(path).horizon
        return cls.from_sample(load_dataset_sample(path), horizon=horizon, **kwargs)

    def calibrate(self, obs: Tensor, actions: Tensor, quantile: float) -> float:
        """Set ``threshold`` to the ``quantile`` of these pairs' distances.

        Args:
            obs: ``[M, O]`` states of pairs that are not in the reference set.
            actions: ``[M, A]`` their actions (chunks).
            quantile: in (0, 1).

        Returns:
            The new threshold.
        """
        dist = self.query(obs, actions).distance
        self.calibration = dist.sort().values
        self.quantile = quantile
        self.threshold = float(torch.quantile(dist.double(), quantile))
        return self.threshold

    def to(self, device: torch.device | str) -> DataManifold:
        """A copy on ``device`` (the threshold and calibration come along)."""
        return DataManifold(
            states=self.states.to(device),
            actions=self.actions.to(device),
            obs_mean=self.obs_mean.to(device),
            obs_std=self.obs_std.to(device),
            horizon=self.horizon,
            k=self.k,
            threshold=self.threshold,
            quantile=self.quantile,
            calibration=self.calibration.to(device),
            source_rows=self.source_rows.to(device),
            calibration_rows=self.calibration_rows.to(device),
        )

    # ------------------------------------------------------------------ queries

    @property
    def device(self) -> torch.device:
        return self.states.device

    @property
    def obs_dim(self) -> int:
        return self.states.shape[1]

    @property
    def action_dim(self) -> int:
        """Width ``A = horizon * env_action_dim`` of the reference actions."""
        return self.actions.shape[1]

    def __len__(self) -> int:
        return self.states.shape[0]

    def neighbours(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """The ``k`` reference rows with the nearest states.

        Args:
            obs: ``[S, O]`` raw (unstandardised) states.

        Returns:
            ``(rows [S, k'], dist [S, k'])`` with ``k' = min(k, N)``, nearest first, and
            their standardised Euclidean distances.
        """
        z = (obs.to(self.device, self.states.dtype) - self.obs_mean) / self.obs_std
        k = min(self.k, len(self))
        block = max(1, _SCORE_ELEMENTS // len(self))
        rows, dists = [], []
        probes = torch.cat([-2.0 * z, torch.ones_like(z[:, :1])], dim=1)
        for start in range(0, z.shape[0], block):
            score = probes[start : start + block] @ self._keys_t
            idx = torch.topk(score, k, dim=1, largest=False, sorted=True).indices
            # The expansion loses precision to cancellation (float32: ~1e-5 absolute), so
            # the winners' distances are recomputed directly.
            diff = z[start : start + block, None, :] - _take(self.states, idx)
            rows.append(idx)
            dists.append(torch.linalg.vector_norm(diff, dim=-1))
        return torch.cat(rows), torch.cat(dists)

    def query(self, obs: Tensor, actions: Tensor) -> ManifoldQuery:
        """Distance to the data of each candidate.

        Args:
            obs: ``[B, O]`` the state of each candidate. Consecutive equal rows are searched
                once, so the N candidates of one step cost one state search.
            actions: ``[B, A']`` candidates; ``A' = A`` or a longer chunk (a multiple of
                ``env_action_dim``), compared on its first ``A`` dims.

        Returns:
            A ``ManifoldQuery`` on ``actions``' device, distances in ``actions``' dtype.
        """
        if obs.ndim != 2 or actions.ndim != 2 or obs.shape[0] != actions.shape[0]:
            raise ValueError(
                f"obs [B, O] and actions [B, A] expected, got {list(obs.shape)} and "
                f"{list(actions.shape)}"
            )
        if obs.shape[1] != self.obs_dim:
            raise ValueError(f"obs has {obs.shape[1]} dims, the data has {self.obs_dim}")
        width = actions.shape[1]
        if width < self.action_dim or width % self.env_action_dim:
            raise ValueError(
                f"candidates have {width} dims; the data's actions have {self.action_dim} "
                f"(horizon {self.horizon} x {self.env_action_dim}), so candidates must be a "
                f"multiple of {self.env_action_dim} and at least {self.action_dim} wide"
            )
        actions = actions[:, : self.action_dim]
        out_device, out_dtype = actions.device, actions.dtype
        obs = obs.detach().to(self.device, self.states.dtype)
        cand = actions.detach().to(self.device, self.actions.dtype)
        # Runs of equal consecutive states are searched once: the sampler lays out a row's
        # candidates together, and a viewer step's candidates all share one state.
        # (torch.unique(dim=0) would find every repeat but costs ~1 ms per call on a CPU.)
        starts = torch.ones(obs.shape[0], dtype=torch.bool, device=obs.device)
        starts[1:] = (obs[1:] != obs[:-1]).any(dim=1)
        inverse = torch.cumsum(starts, 0) - 1
        rows, state_dist = self.neighbours(_take(obs, starts.nonzero().squeeze(1)))
        rows = _take(rows, inverse)  # [B, k]
        all_dist = torch.linalg.vector_norm(cand[:, None, :] - _take(self.actions, rows), dim=-1)
        which = all_dist.argmin(dim=1, keepdim=True)
        dist = all_dist.gather(1, which).squeeze(1) / math.sqrt(self.horizon)
        nearest = rows.gather(1, which).squeeze(1)
        state_dist = _take(state_dist.amin(dim=1), inverse)
        return ManifoldQuery(
            distance=dist.to(out_device, out_dtype),
            nearest=nearest.to(out_device),
            state_distance=state_dist.to(out_device, out_dtype),
            off_manifold=(dist > self.threshold).to(out_device),
        )

    def distances(self, obs: Tensor, actions: Tensor) -> Tensor:
        """``[B]`` distance to the data of each candidate (see ``query``)."""
        return self.query(obs, actions).distance

    def off_manifold(self, obs: Tensor, actions: Tensor) -> Tensor:
        """``[B]`` bool: candidates farther from the data than ``threshold``."""
        return self.query(obs, actions).off_manifold


# ---------------------------------------------------------------------- weight sweep


@dataclass
class WeightSweep:
    """Q and distance to the data as functions of the guidance weight, for one state.

    Every weight starts from the same initial noise, so differences between rows are the
    weight's doing alone.

    Attributes:
        weights: ``[W]`` guidance weights, as given.
        actions: ``[W, C, A]`` final actions of the ``C`` candidates at each weight.
        q: ``[W, C]`` Q of each final action.
        distance: ``[W, C]`` distance to the data (NaN when no manifold was given).
        off_manifold: ``[W, C]`` distance above the threshold (all False without manifold).
        nonfinite: ``[W, C]`` the sampler flagged a NaN/inf gradient or iterate.
        threshold: the manifold's threshold (inf without one).
        estimator: the estimator used.
    """

    weights: Tensor
    actions: Tensor
    q: Tensor
    distance: Tensor
    off_manifold: Tensor
    nonfinite: Tensor
    threshold: float
    estimator: str

    @property
    def q_mean(self) -> Tensor:
        """``[W]`` mean Q over candidates."""
        return self.q.mean(dim=1)

    @property
    def distance_mean(self) -> Tensor:
        """``[W]`` mean distance over candidates."""
        return self.distance.mean(dim=1)

    @property
    def off_fraction(self) -> Tensor:
        """``[W]`` fraction of candidates off the manifold."""
        return self.off_manifold.to(self.q.dtype).mean(dim=1)


def weight_sweep(
    velocity: VelocityFn,
    q: QFn,
    obs: Tensor,
    weights: Sequence[float] | Tensor,
    manifold: DataManifold | None = None,
    *,
    estimator: str = "qgf",
    steps: int = 10,
    noise: Tensor | None = None,
    candidates: int = 1,
    generator: torch.Generator | None = None,
    clip: bool = True,
) -> WeightSweep:
    """Sample the same noise at every weight in one batched ``guided_sample`` call.

    Row ``w * C + c`` of the batch is candidate ``c`` at weight ``weights[w]``; the sampler
    takes one weight per row, and its rows are independent, so the result equals ``W``
    separate calls with the same noise.

    Args:
        velocity, q: the policy's velocity field and the aggregated critic.
        obs: ``[O]`` or ``[1, O]`` the current state.
        weights: ``[W]`` guidance weights.
        manifold: measures distance to the data; None skips it.
        estimator, steps, clip: as in ``guided_sample``.
        noise: ``[C, A]`` initial noise shared by every weight; else ``candidates`` rows are
            drawn from ``generator``.
        candidates: C, used when ``noise`` is None.
        generator: torch.Generator for the noise.

    Returns:
        A ``WeightSweep``.
    """
    obs = obs.reshape(1, -1) if obs.ndim == 1 else obs
    if obs.shape[0] != 1:
        raise ValueError(f"obs must be one state, [O] or [1, O], got {list(obs.shape)}")
    w = torch.as_tensor(weights, dtype=obs.dtype, device=obs.device).reshape(-1)
    if noise is None:
        if not hasattr(velocity, "action_dim"):
            raise ValueError("pass noise, or a velocity with an .action_dim attribute")
        # Drawn on the generator's device, as guided_sample does, so CPU seeds match anywhere.
        gen_device = generator.device if generator is not None else obs.device
        noise = torch.randn(
            candidates,
            int(velocity.action_dim),
            generator=generator,
            device=gen_device,
            dtype=obs.dtype,
        )
    noise = noise.to(obs.device, obs.dtype)
    n_w, n_c, width = w.shape[0], noise.shape[0], noise.shape[1]
    rows = obs.expand(n_w * n_c, -1)
    trace = guided_sample(
        velocity,
        q,
        rows,
        estimator=estimator,
        weight=w.repeat_interleave(n_c),
        steps=steps,
        noise=noise.repeat(n_w, 1),
        clip=clip,
    )
    if manifold is not None:
        measured = manifold.query(rows, trace.actions)
        distance, off = measured.distance, measured.off_manifold
        threshold = manifold.threshold
    else:
        distance = torch.full((n_w * n_c,), float("nan"), dtype=obs.dtype, device=obs.device)
        off = torch.zeros(n_w * n_c, dtype=torch.bool, device=obs.device)
        threshold = math.inf
    return WeightSweep(
        weights=w,
        actions=trace.actions.view(n_w, n_c, width),
        q=trace.q_final.view(n_w, n_c),
        distance=distance.view(n_w, n_c),
        off_manifold=off.view(n_w, n_c),
        nonfinite=trace.nonfinite.view(n_w, n_c),
        threshold=threshold,
        estimator=estimator,
    )
