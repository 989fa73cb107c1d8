"""The critic's landscape at one state: Q on a 2-D slice of the action space, where the Q
heads disagree, where the data is, and where the denoising went.

A slice holds every action dimension fixed at a base action (by default the action the w = 0
candidates would have executed, so the slice stays put while the weight moves; or the
executed action; or the candidates' mean) but two, ``dims``, of one action of the chunk,
``chunk_index``; those two sweep a ``resolution x resolution`` grid over ``[-1, 1]^2`` (the
action box). On it:

==================  ===========================================================================
``q``               the aggregated (guidance) critic, Q(s, a): one batched call for the grid
``heads``           every Q head; ``disagreement`` is their std over heads (|Q1 - Q2| / 2 for
                    two): where it is large the critic is guessing
``density``         a Gaussian kernel density of the dataset's actions at the ``k`` states
                    nearest to s (the very neighbours distance-to-data uses,
                    ``DataManifold.neighbours``), projected on the two dims; bandwidth by
                    Scott's rule (``k^(-1/6)`` times each dim's spread, at least
                    ``MIN_BANDWIDTH``). None without a dataset sample, or for a later action of
                    a chunk when the sample holds single actions.
paths               ``project`` maps any actions (a_hat along denoising, finals, the ghost, a
                    comparison's rows) to slice coordinates: their values on the two dims.
==================  ===========================================================================

GUI-free: the viewer's landscape panel and ``qgf diagnose --landscape`` both draw it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from functools import partial

import numpy as np
import torch
from torch import Tensor

from core.guidance import QFn

HOLDS = ("ghost", "executed", "mean")
MIN_BANDWIDTH = 0.02
DEFAULT_RESOLUTION = 64


@dataclass(frozen=True)
class SliceSpec:
    """Which 2-D slice of the action space to show.

    Attributes:
        dims: the two env-action dimensions that vary (0, 1 = the effector's dx, dy).
        chunk_index: which action of a chunk (0 for the first; always 0 without chunks).
        hold: the other dimensions' values: ``ghost`` (the action the w = 0 candidates
            would have executed: the same whatever the weight), ``executed`` (the executed
            candidate's action) or ``mean`` (the guided candidates' mean).
        resolution: grid points per axis.
    """

    dims: tuple[int, int] = (0, 1)
    chunk_index: int = 0
    hold: str = "ghost"
    resolution: int = DEFAULT_RESOLUTION

    def validate(self, env_action_dim: int, horizon: int) -> None:
        """Raise ``ValueError`` naming the field that does not fit the policy."""
        a, b = self.dims
        if a == b or not (0 <= a < env_action_dim and 0 <= b < env_action_dim):
            raise ValueError(
                f"slice dims {self.dims} must be two different dims in 0..{env_action_dim - 1}"
            )
        if not 0 <= self.chunk_index < horizon:
            raise ValueError(f"chunk_index {self.chunk_index} must lie in 0..{horizon - 1}")
        if self.hold not in HOLDS:
            raise ValueError(f"hold must be one of {HOLDS}, got {self.hold!r}")
        if not 2 <= self.resolution <= 1024:
            raise ValueError(f"resolution {self.resolution} must lie in 2..1024")

    def flat_dims(self, env_action_dim: int) -> tuple[int, int]:
        """The two dims in the flat (chunk) action."""
        offset = self.chunk_index * env_action_dim
        return offset + self.dims[0], offset + self.dims[1]

    def to_dict(self) -> dict:
        return {**asdict(self), "dims": list(self.dims)}

    @classmethod
    def from_dict(cls, data: dict) -> SliceSpec:
        data = dict(data)
        if "dims" in data:
            data["dims"] = tuple(int(d) for d in data["dims"])
        return cls(**data)


@dataclass
class Landscape:
    """Q and friends on one slice at one state (numpy, ``[R, R]`` indexed ``[y, x]``).

    Attributes:
        spec: the slice.
        base: ``[A]`` the flat action the other dimensions are held at.
        xs, ys: ``[R]`` grid coordinates of ``spec.dims[0]`` and ``spec.dims[1]``.
        q: ``[R, R]`` the aggregated critic.
        heads: ``[E, R, R]`` every Q head.
        density: ``[R, R]`` data density (integrates to 1 over the box), or None.
        density_points: ``[k, 2]`` the neighbours' actions on the slice, or None.
        density_note: why there is no density, when there is none.
        bandwidth: ``[2]`` the kernel's bandwidth, or None.
        seconds: wall time of the grid's critic call(s).
    """

    spec: SliceSpec
    base: np.ndarray
    xs: np.ndarray
    ys: np.ndarray
    q: np.ndarray
    heads: np.ndarray
    density: np.ndarray | None
    density_points: np.ndarray | None
    density_note: str
    bandwidth: np.ndarray | None
    seconds: float

    @property
    def disagreement(self) -> np.ndarray:
        """``[R, R]`` std of the Q heads (0 with one head)."""
        return self.heads.std(axis=0)

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything as named arrays (for ``.npz``)."""
        out = {
            "xs": self.xs,
            "ys": self.ys,
            "q": self.q,
            "heads": self.heads,
            "disagreement": self.disagreement,
            "base": self.base,
        }
        if self.density is not None:
            out["density"] = self.density
        if self.density_points is not None:
            out["density_points"] = self.density_points
        return out


def grid_actions(base: Tensor, spec: SliceSpec, env_action_dim: int) -> tuple[Tensor, Tensor]:
    """``([R*R, A] actions, [R] coordinates)``: ``base`` with the slice's two dims swept.

    Row ``i * R + j`` has ``dims[0] = coords[j]`` and ``dims[1] = coords[i]`` (``[y, x]``).
    """
    r = spec.resolution
    coords = torch.linspace(-1.0, 1.0, r, dtype=base.dtype, device=base.device)
    dx, dy = spec.flat_dims(env_action_dim)
    grid = base.reshape(1, -1).repeat(r * r, 1)
    grid[:, dx] = coords.repeat(r)
    grid[:, dy] = coords.repeat_interleave(r)
    return grid, coords


def project(actions: np.ndarray | Tensor, spec: SliceSpec, env_action_dim: int) -> np.ndarray:
    """``[..., A] -> [..., 2]``: actions' coordinates on the slice."""
    a = actions.detach().cpu().numpy() if isinstance(actions, Tensor) else np.asarray(actions)
    dx, dy = spec.flat_dims(env_action_dim)
    return np.stack([a[..., dx], a[..., dy]], axis=-1)


def heads_of(critic: QFn) -> QFn | None:
    """The per-head Q ``(obs, a) -> [E, B]`` of a critic that has one (``q_all``)."""
    return getattr(critic, "q_all", None)


def critic_landscape(
    critic: QFn,
    obs: Tensor,
    base: Tensor,
    spec: SliceSpec,
    env_action_dim: int,
    horizon: int = 1,
    manifold=None,
    batch: int = 16384,
) -> Landscape:
    """Q, its heads and the data density on the slice ``spec`` at state ``obs``.

    Args:
        critic: the aggregated critic ``(obs [B,O], a [B,A]) -> [B]``; with ``q_all`` its
            heads are read in the same call, else ``heads`` holds Q alone.
        obs: ``[O]`` the state.
        base: ``[A]`` the flat action the other dimensions are held at.
        spec: the slice.
        env_action_dim, horizon: one env action's size and the chunk length.
        manifold: a ``core.manifold.DataManifold`` for the density, or None.
        batch: grid rows per critic call (the default grid is one call).
    """
    spec.validate(env_action_dim, horizon)
    device = base.device
    o = obs.reshape(1, -1).to(device=device, dtype=base.dtype)
    grid, coords = grid_actions(base.detach(), spec, env_action_dim)
    all_heads = heads_of(critic)
    r = spec.resolution
    t0 = time.perf_counter()
    qs, hs = [], []
    with torch.no_grad():
        for start in range(0, grid.shape[0], batch):
            part = grid[start : start + batch]
            obs_rows = o.expand(part.shape[0], -1)
            if all_heads is not None:
                heads = all_heads(obs_rows, part)
                hs.append(heads)
                # The aggregate of the heads just computed, when the critic says which it
                # is; otherwise its own call.
                how = getattr(critic, "aggregate", None)
                if how == "min":
                    qs.append(heads.min(dim=0).values)
                elif how == "mean":
                    qs.append(heads.mean(dim=0))
                else:
                    qs.append(critic(obs_rows, part))
            else:
                q = critic(obs_rows, part)
                qs.append(q)
                hs.append(q[None])
        q = torch.cat(qs)
        heads = torch.cat(hs, dim=1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    xs = coords.cpu().double().numpy()
    density, points, note, bandwidth = None, None, "no dataset sample", None
    if manifold is not None:
        density, points, note, bandwidth = data_density(manifold, obs, spec, env_action_dim, xs)
    return Landscape(
        spec=spec,
        base=base.detach().cpu().double().numpy(),
        xs=xs,
        ys=xs.copy(),
        q=q.reshape(r, r).cpu().double().numpy(),
        heads=heads.reshape(-1, r, r).cpu().double().numpy(),
        density=density,
        density_points=points,
        density_note=note,
        bandwidth=bandwidth,
        seconds=seconds,
    )


def data_density(
    manifold, obs: Tensor, spec: SliceSpec, env_action_dim: int, coords: np.ndarray
) -> tuple[np.ndarray | None, np.ndarray | None, str, np.ndarray | None]:
    """Kernel density of the neighbours' actions on the slice: ``(density [R, R] or None,
    points [k, 2] or None, note, bandwidth [2] or None)``."""
    if spec.chunk_index >= manifold.horizon:
        return (
            None,
            None,
            f"the dataset sample holds {manifold.horizon}-action chunks: no data for action "
            f"{spec.chunk_index + 1} of the chunk",
            None,
        )
    rows, _ = manifold.neighbours(obs.reshape(1, -1))
    actions = manifold.actions[rows[0]].detach().cpu().double().numpy()  # [k, A_ref]
    points = project(actions, spec, env_action_dim)  # [k, 2]
    k = points.shape[0]
    spread = points.std(axis=0)
    bandwidth = np.maximum(spread * k ** (-1.0 / 6.0), MIN_BANDWIDTH)
    gx = (coords[None, :] - points[:, 0:1]) / bandwidth[0]  # [k, R]
    gy = (coords[None, :] - points[:, 1:2]) / bandwidth[1]
    kx = np.exp(-0.5 * gx**2) / (math.sqrt(2 * math.pi) * bandwidth[0])
    ky = np.exp(-0.5 * gy**2) / (math.sqrt(2 * math.pi) * bandwidth[1])
    density = np.einsum("ky,kx->yx", ky, kx) / k
    return density, points, "", bandwidth


def base_action(final: Tensor, executed: int, hold: str, ghost: Tensor | None = None) -> Tensor:
    """The flat action the slice is held at, from the candidates' final actions
    ``final [N, A]`` (and the w = 0 ones ``ghost [N, A]`` for ``hold = "ghost"``)."""
    if hold == "mean":
        return final.mean(dim=0)
    if hold == "ghost":
        if ghost is None:
            raise ValueError("hold 'ghost' needs the w = 0 candidates")
        return ghost[executed]
    return final[executed]


# ----------------------------------------------------------------------------- figure

# Denoising time t = k / T from early to late: the viewer's overlay ramp, blue to yellow.
TIME_CMAP = "plasma"
GHOST_COLOUR = "0.55"
OFF_COLOUR = "red"


@dataclass
class SlicePaths:
    """Candidates' denoising on the slice (slice coordinates, from ``project``).

    Attributes:
        a_hat: ``[T, N, 2]`` one-step estimates along denoising (guided).
        final: ``[N, 2]`` final actions (guided); ``executed`` is the acting one.
        ghost_a_hat, ghost_final: the same for the w = 0 candidates from the same noise, or
            None.
        off_manifold: ``[N]`` bool flags of the guided finals, or None (unavailable).
        grad: ``[T, N, 2]`` the gradient the estimator applied (before weighting), or None.
        label: what sampled them (estimator, weight).
    """

    a_hat: np.ndarray
    final: np.ndarray
    executed: int = 0
    ghost_a_hat: np.ndarray | None = None
    ghost_final: np.ndarray | None = None
    off_manifold: np.ndarray | None = None
    grad: np.ndarray | None = None
    label: str = ""


def figure(
    landscape: Landscape,
    paths: SlicePaths | None = None,
    title: str = "",
    dim_names: tuple[str, str] = ("dx", "dy"),
):
    """A matplotlib figure of one slice: Q (left) and the heads' disagreement (right), each
    with the data density as contours and the denoising paths on top."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.9), layout="constrained")
    axes = fig.subplots(1, 2)
    extent = (-1.0, 1.0, -1.0, 1.0)
    panels = (
        (axes[0], landscape.q, "viridis", "Q(s, a) (aggregated target critic)"),
        (axes[1], landscape.disagreement, "magma", "std of the Q heads"),
    )
    for ax, values, cmap, label in panels:
        image = ax.imshow(values, origin="lower", extent=extent, cmap=cmap, aspect="equal")
        fig.colorbar(image, ax=ax, shrink=0.8, label=label)
        if landscape.density is not None:
            levels = np.quantile(landscape.density[landscape.density > 0], [0.5, 0.8, 0.95])
            ax.contour(
                landscape.xs, landscape.ys, landscape.density, levels=np.unique(levels),
                colors="white", linewidths=0.9, alpha=0.85,
            )  # fmt: skip
        if landscape.density_points is not None:
            ax.plot(*landscape.density_points.T, ".", color="white", ms=2.5, alpha=0.7)
        if paths is not None:
            _draw_paths(ax, paths)
        ax.set_xlim(-1, 1)
        ax.set_ylim(-1, 1)
        ax.set_xlabel(f"{dim_names[0]} (action dim {landscape.spec.dims[0]})")
        ax.set_ylabel(f"{dim_names[1]} (action dim {landscape.spec.dims[1]})")
    note = (
        "white contours: data density at the nearest states (50/80/95% levels)"
        if landscape.density is not None
        else f"no data density ({landscape.density_note})"
    )
    grid = landscape.spec.resolution
    fig.suptitle(
        f"{title}\n{note}; grid {grid}x{grid}: {1000 * landscape.seconds:.1f} ms",
        fontsize=9,
    )
    return fig


def _draw_paths(ax, paths: SlicePaths) -> None:
    import matplotlib as mpl

    steps = paths.a_hat.shape[0]
    cmap = mpl.colormaps[TIME_CMAP]
    if paths.ghost_a_hat is not None:
        for n in range(paths.ghost_a_hat.shape[1]):
            ax.plot(*paths.ghost_a_hat[:, n].T, "-", color=GHOST_COLOUR, lw=0.9, alpha=0.8)
    if paths.ghost_final is not None:
        ax.plot(*paths.ghost_final.T, "o", mfc="none", mec=GHOST_COLOUR, ms=5, label="w = 0")
    for n in range(paths.a_hat.shape[1]):
        for k in range(steps - 1):
            seg = paths.a_hat[k : k + 2, n]
            ax.plot(*seg.T, "-", color=cmap(k / max(steps - 1, 1)), lw=1.4)
    if paths.grad is not None:
        g = paths.grad
        norm = np.linalg.norm(g, axis=-1, keepdims=True)
        unit = np.where(norm > 0, g / np.maximum(norm, 1e-12), 0.0) * 0.06
        ax.quiver(
            paths.a_hat[..., 0], paths.a_hat[..., 1], unit[..., 0], unit[..., 1],
            angles="xy", scale_units="xy", scale=1, color="cyan", width=0.004, alpha=0.8,
        )  # fmt: skip
    off = paths.off_manifold if paths.off_manifold is not None else np.zeros(len(paths.final), bool)
    ax.plot(*paths.final[~off].T, "o", color=cmap(1.0), mec="black", ms=6, label=paths.label)
    if off.any():
        ax.plot(*paths.final[off].T, "o", color=OFF_COLOUR, mec="black", ms=6, label="off-manifold")
    ax.plot(*paths.final[paths.executed], "*", color="white", mec="black", ms=13, label="executed")
    ax.legend(fontsize=7, loc="lower right", framealpha=0.6)


# ----------------------------------------------------------------------------- an episode


@dataclass
class EpisodeSlice:
    """The slice at one env step of an episode: the state, the landscape, and the paths of
    the candidates sampled there at each weight shown (same noise for every weight)."""

    step: int
    obs: np.ndarray
    landscape: Landscape
    paths: dict[float, SlicePaths]


def episode_slices(
    policy,
    critic,
    env_name: str,
    show: list[int],
    *,
    weight: float,
    weights: list[float] | None = None,
    estimator: str = "qgf",
    steps: int = 10,
    candidates: int = 8,
    seed: int = 0,
    spec: SliceSpec | None = None,
    manifold=None,
) -> list[EpisodeSlice]:
    """Play one seeded episode at ``weight`` (as the viewer does: per-step noise from
    ``seed``, candidate 0 executed, chunks open loop) and take the slice at the env steps
    ``show`` (a step inside a chunk moves to the chunk's start).

    At each shown step the candidates are sampled at every weight of ``weights`` (default:
    ``weight`` alone) from the step's noise, with the w = 0 ghost, in one call; the slice is
    held at the executed action of the played weight.

    Returns:
        One ``EpisodeSlice`` per shown step that the episode reached, in order.
    """
    from core import envs
    from core.guidance import guided_sample
    from core.step import step_noise

    spec = spec or SliceSpec()
    shown_weights = [float(w) for w in (weights or [weight])]
    horizon = int(getattr(policy, "horizon", 1))
    width = int(policy.action_dim)
    env_dim = width // horizon
    wanted = sorted({s - s % horizon for s in show})
    device = next(policy.parameters()).device
    env = envs.make_env(env_name)
    obs, _ = envs.reset(env, seed)
    n = candidates
    out: list[EpisodeSlice] = []
    chunk: list[np.ndarray] = []
    for t in range(max(wanted) + 1):
        if not chunk:
            o = torch.as_tensor(obs, dtype=torch.float32, device=device)[None]
            noise = step_noise(seed, t, n, width).to(device)
            row_weights = [weight, *shown_weights, 0.0] if t in wanted else [weight]
            rows = len(row_weights)
            trace = guided_sample(
                policy,
                critic,
                o.expand(rows, -1),
                estimator=estimator,
                weight=torch.tensor(row_weights, device=device),
                steps=steps,
                noise=noise.repeat(rows, 1),
                best_of=n,
            )
            final = trace.final.view(rows, n, width)
            if t in wanted:
                a_hat = project(trace.a_hat, spec, env_dim).reshape(steps, rows, n, 2)
                ends = project(final, spec, env_dim)
                grad = project(trace.grad, spec, env_dim).reshape(steps, rows, n, 2)
                paths = {}
                for r, w in enumerate(shown_weights, start=1):
                    off = None
                    if manifold is not None:
                        off = manifold.query(o.expand(n, -1), final[r]).off_manifold.cpu().numpy()
                    paths[w] = SlicePaths(
                        a_hat=a_hat[:, r],
                        final=ends[r],
                        executed=0,
                        ghost_a_hat=a_hat[:, -1],
                        ghost_final=ends[-1],
                        off_manifold=off,
                        grad=grad[:, r],
                        label=f"{estimator}, w = {w:g}",
                    )
                base = base_action(final[0], 0, spec.hold, ghost=final[-1])
                land = critic_landscape(critic, o[0], base, spec, env_dim, horizon, manifold)
                out.append(EpisodeSlice(t, np.asarray(obs), land, paths))
            chunk = list(final[0, 0].cpu().numpy().reshape(horizon, env_dim))
        obs, _, terminated, truncated, _ = env.step(chunk.pop(0))
        if terminated or truncated:
            break
    return out


def write_episode_slices(
    slices: list[EpisodeSlice], out, title: str, dim_names: tuple[str, str] = ("dx", "dy")
) -> list:
    """Each slice as ``step<t>-w<w>.png`` per weight and ``step<t>.npz`` (the landscape's
    arrays, the state, and every weight's paths) in directory ``out``, each atomically."""
    from pathlib import Path

    from core.data import save_npz_atomic
    from core.files import atomic_write

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for s in slices:
        arrays = {**s.landscape.arrays(), "obs": s.obs, "spec": np.array(str(s.landscape.spec))}
        for w, p in s.paths.items():
            fig = figure(s.landscape, p, f"{title}, step {s.step}, {p.label}", dim_names)
            path = out / f"step{s.step}-w{w:g}.png"
            written.append(atomic_write(path, partial(fig.savefig, dpi=100)))
            for name in ("a_hat", "final", "ghost_a_hat", "ghost_final", "grad", "off_manifold"):
                value = getattr(p, name)
                if value is not None:
                    arrays[f"w{w:g}/{name}"] = value
        path = out / f"step{s.step}.npz"
        save_npz_atomic(path, arrays)
        written.append(path)
    return written
