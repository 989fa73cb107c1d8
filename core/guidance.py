"""Critic-guided Euler sampling of a flow policy, with every gradient estimator of QGF.

The sampler (``guided_sample``) follows ``design/ALGORITHM.md``::

    a_0 ~ N(0, I)
    for k = 0 .. T-1:   t = k / T
        v      = v(s, a_t, t)
        a_hat  = clip(a_t + (1 - t) * v, -1, 1)     # one-step clean estimate
        g      = G(s, a_t, t)                       # the estimator
        a_t   <- a_t + dt * (v + w * g)
    return clip(a_T, -1, 1)

and records the whole denoising trajectory in a ``DenoiseTrace`` so that it can be drawn
and compared. Estimators live in a registry (``ESTIMATORS``); ``register_estimator`` adds
new ones, which then appear everywhere estimators are listed.

Shapes: ``B`` rows (states), ``N = best_of`` candidates per row, ``B* = B * N``; the
candidates of row ``i`` are rows ``i*N .. (i+1)*N - 1`` of every ``B*`` axis.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import Tensor

VelocityFn = Callable[[Tensor, Tensor, Tensor], Tensor]
QFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class GuidanceStep:
    """Everything an estimator may use at denoising step ``k`` (all tensors detached).

    Attributes:
        velocity, q: the policy's velocity field and the aggregated critic.
        obs: ``[B*, O]`` states, one per candidate.
        a_t: ``[B*, A]`` the current iterate.
        t: ``[B*]`` flow time ``k / steps``.
        v: ``[B*, A]`` velocity at ``(obs, a_t, t)``, computed without a graph.
        a_hat: ``[B*, A]`` the one-step clean estimate (clipped when ``clip``).
        k, steps: step index and number of Euler steps ``T``.
        clip: whether a_hat and final actions are clipped to [-1, 1].
    """

    velocity: VelocityFn
    q: QFn
    obs: Tensor
    a_t: Tensor
    t: Tensor
    v: Tensor
    a_hat: Tensor
    k: int
    steps: int
    clip: bool

    def one_step_estimate(self, a_t: Tensor) -> Tensor:
        """``a_hat(a_t) = clip(a_t + (1 - t) v(s, a_t, t))``, differentiable in ``a_t``."""
        v = self.velocity(self.obs, a_t, self.t)
        return _maybe_clip(a_t + (1.0 - self.t)[:, None] * v, self.clip)

    def rollout(self, a_t: Tensor) -> Tensor:
        """Unguided Euler from this step's ``t`` to 1, differentiable in ``a_t``."""
        return euler(self.velocity, self.obs, a_t, self.steps, start=self.k, clip=self.clip)


Estimator = Callable[[GuidanceStep], tuple[Tensor, Tensor]]
"""``G(step) -> (grad [B*, A], q_at [B*])``: the gradient and Q where it was taken."""

ESTIMATORS: dict[str, Estimator] = {}
ESTIMATOR_DOCS: dict[str, str] = {}


def register_estimator(name: str, *, replace: bool = False) -> Callable[[Estimator], Estimator]:
    """Decorator adding a gradient estimator to ``ESTIMATORS`` under ``name``.

    The function receives a ``GuidanceStep`` and returns ``(grad [B*, A], q_at [B*])``:
    the guidance direction G (before weighting) and Q at the point where it was taken.
    Its docstring's first line is what listings (CLI, viewer) show.

    Example::

        @register_estimator("qgf_ortho")
        def qgf_ortho(step):
            g, q = ESTIMATORS["qgf"](step)
            v = step.v / step.v.norm(dim=-1, keepdim=True).clamp_min(1e-8)
            return g - (g * v).sum(-1, keepdim=True) * v, q
    """

    def decorate(fn: Estimator) -> Estimator:
        if name in ESTIMATORS and not replace:
            raise ValueError(f"estimator {name!r} is already registered (pass replace=True)")
        ESTIMATORS[name] = fn
        ESTIMATOR_DOCS[name] = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        return fn

    return decorate


def _maybe_clip(a: Tensor, clip: bool) -> Tensor:
    return a.clamp(-1.0, 1.0) if clip else a


def euler(
    velocity: VelocityFn, obs: Tensor, a: Tensor, steps: int, start: int = 0, clip: bool = True
) -> Tensor:
    """Unguided Euler integration of the flow from ``t = start / steps`` to 1.

    Args:
        velocity: ``(obs [B,O], a_t [B,A], t [B]) -> [B,A]``.
        obs: ``[B, O]``.
        a: ``[B, A]`` the iterate at ``t = start / steps``.
        steps: total number of Euler steps T of the sampler.
        start: index of the first step to take.
        clip: clip the result to [-1, 1].

    Returns:
        ``[B, A]`` the action at ``t = 1``. Differentiable in ``a`` when grad is enabled.
    """
    dt = 1.0 / steps
    for j in range(start, steps):
        t = torch.full((a.shape[0],), j / steps, dtype=a.dtype, device=a.device)
        a = a + dt * velocity(obs, a, t)
    return _maybe_clip(a, clip)


def _q_and_grad(q: QFn, obs: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
    """Q at ``a`` and its gradient w.r.t. ``a`` (rows are independent, so sum is exact)."""
    a = a.detach().requires_grad_(True)
    with torch.enable_grad():
        value = q(obs, a)
        (grad,) = torch.autograd.grad(value.sum(), a)
    return grad, value.detach()


def _grad_through(
    q: QFn, obs: Tensor, a_t: Tensor, fn: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor]:
    """``grad_{a_t} Q(s, fn(a_t))`` by backprop through ``fn``, and that Q."""
    a = a_t.detach().requires_grad_(True)
    with torch.enable_grad():
        value = q(obs, fn(a))
        (grad,) = torch.autograd.grad(value.sum(), a)
    return grad, value.detach()


@register_estimator("none")
def none(step: GuidanceStep) -> tuple[Tensor, Tensor]:
    """No guidance (plain BC sampling); Q is read at a_hat for the plots."""
    return torch.zeros_like(step.a_t), step.q(step.obs, step.a_hat)


@register_estimator("qgf")
def qgf(step: GuidanceStep) -> tuple[Tensor, Tensor]:
    """QGF: grad of Q at the one-step estimate a_hat, Jacobian replaced by I."""
    return _q_and_grad(step.q, step.obs, step.a_hat)


@register_estimator("qgf_jacobian")
def qgf_jacobian(step: GuidanceStep) -> tuple[Tensor, Tensor]:
    """QGF with the exact Jacobian: J^T grad Q(a_hat), J = d a_hat / d a_t."""
    return _grad_through(step.q, step.obs, step.a_t, step.one_step_estimate)


@register_estimator("qgf_chain")
def qgf_chain(step: GuidanceStep) -> tuple[Tensor, Tensor]:
    """grad of Q at a_1 = ODE(a_t) (exact unguided denoising), Jacobian replaced by I."""
    with torch.no_grad():
        a_1 = step.rollout(step.a_t)
    return _q_and_grad(step.q, step.obs, a_1)


@register_estimator("ood")
def ood(step: GuidanceStep) -> tuple[Tensor, Tensor]:
    """Critic queried at the noisy action: grad of Q(s, a_t) w.r.t. a_t."""
    return _q_and_grad(step.q, step.obs, step.a_t)


@register_estimator("bptt")
def bptt(step: GuidanceStep) -> tuple[Tensor, Tensor]:
    """Backprop through every remaining Euler step: grad_{a_t} Q(s, ODE(a_t))."""
    return _grad_through(step.q, step.obs, step.a_t, step.rollout)


@dataclass
class DenoiseTrace:
    """The whole guided denoising of a batch.

    Attributes:
        actions: ``[B, A]`` final actions after best-of selection.
        a_t: ``[T+1, B*, A]`` iterates a_0 .. a_T (a_T before the final clip).
        a_hat: ``[T, B*, A]`` one-step clean estimates.
        grad: ``[T, B*, A]`` the estimator's G at each step, before weighting, as computed
            (non-finite values are kept here so they can be shown, but never applied).
        q_hat: ``[T, B*]`` Q where the gradient was taken.
        q_final: ``[B*]`` Q of each candidate's final (clipped) action.
        chosen: ``[B]`` index in 0..best_of-1 of the kept candidate of each row.
        nonfinite: ``[B*]`` True where a gradient or an iterate was NaN/inf at any step.
        weight: ``[B*]`` guidance weight applied to each candidate.
        estimator, steps, best_of, clip: the settings that produced the trace.
    """

    actions: Tensor
    a_t: Tensor
    a_hat: Tensor
    grad: Tensor
    q_hat: Tensor
    q_final: Tensor
    chosen: Tensor
    nonfinite: Tensor
    weight: Tensor
    estimator: str
    steps: int
    best_of: int
    clip: bool = True

    @property
    def final(self) -> Tensor:
        """``[B*, A]`` every candidate's final action (clipped like ``actions``)."""
        return _maybe_clip(self.a_t[-1], self.clip)

    @property
    def executed(self) -> Tensor:
        """``[B]`` index into the ``B*`` axis of each row's kept candidate."""
        rows = torch.arange(self.chosen.shape[0], device=self.chosen.device)
        return rows * self.best_of + self.chosen

    @property
    def nonfinite_rows(self) -> Tensor:
        """``[B]`` True where any candidate of the row went non-finite."""
        return self.nonfinite.view(-1, self.best_of).any(dim=1)

    def to(self, device: torch.device | str) -> DenoiseTrace:
        """A copy with every tensor on ``device``."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            if isinstance(getattr(self, f.name), Tensor)
            else getattr(self, f.name)
            for f in fields(self)
        }
        return DenoiseTrace(**moved)


def _expand_weight(weight: float | Tensor, batch: int, best_of: int, like: Tensor) -> Tensor:
    w = torch.as_tensor(weight, dtype=like.dtype, device=like.device)
    if w.ndim == 0:
        return w.expand(batch * best_of).clone()
    if w.shape != (batch,):
        raise ValueError(
            f"weight must be a float or a tensor of shape [{batch}], got {tuple(w.shape)}"
        )
    return w.repeat_interleave(best_of)


def _initial_noise(
    noise: Tensor | None,
    generator: torch.Generator | None,
    shape: tuple[int, int],
    like: Tensor,
) -> Tensor:
    if noise is not None:
        if tuple(noise.shape) != shape:
            raise ValueError(
                f"noise must have shape {list(shape)} ([B * best_of, A]), got {list(noise.shape)}"
            )
        return noise.to(device=like.device, dtype=like.dtype)
    # Draw on the generator's device so a CPU generator gives the same noise everywhere.
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def guided_sample(
    velocity: VelocityFn,
    q: QFn,
    obs: Tensor,
    estimator: str = "qgf",
    weight: float | Tensor = 0.05,
    steps: int = 10,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    best_of: int = 1,
    clip: bool = True,
) -> DenoiseTrace:
    """Sample actions from a flow policy guided by a critic, recording every step.

    Args:
        velocity: ``(obs [B,O], a_t [B,A], t [B]) -> [B,A]``; must have ``.action_dim``
            when ``noise`` is None.
        q: aggregated critic ``(obs [B,O], a [B,A]) -> [B]``.
        obs: ``[B, O]`` states (float32 or float64; outputs keep dtype and device).
        estimator: a name in ``ESTIMATORS``.
        weight: guidance weight w (= 1/beta), a float or ``[B]`` (one per row: a whole
            weight sweep in one call).
        steps: Euler steps T.
        noise: optional a_0, ``[B * best_of, A]``; otherwise drawn from ``generator``.
        generator: torch.Generator for reproducible noise.
        best_of: N candidates per row; each row keeps the argmax of Q(final action).
        clip: clip a_hat and the final action to [-1, 1].

    Returns:
        A ``DenoiseTrace``. Rows are independent of one another, and with ``weight = 0``
        every estimator gives exactly the unguided actions for the same noise.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; registered: {sorted(ESTIMATORS)}")
    if steps < 1 or best_of < 1:
        raise ValueError(f"steps and best_of must be >= 1, got steps={steps}, best_of={best_of}")
    if obs.ndim != 2:
        raise ValueError(f"obs must be [B, O], got shape {list(obs.shape)}")
    estimate = ESTIMATORS[estimator]
    batch = obs.shape[0]
    n = batch * best_of
    if noise is None:
        if not hasattr(velocity, "action_dim"):
            raise ValueError("pass noise, or a velocity with an .action_dim attribute")
        action_dim = int(velocity.action_dim)
    else:
        action_dim = noise.shape[-1]

    with torch.no_grad():
        obs_n = obs.detach().repeat_interleave(best_of, dim=0) if best_of > 1 else obs.detach()
        a = _initial_noise(noise, generator, (n, action_dim), obs_n)
        w = _expand_weight(weight, batch, best_of, obs_n)

        a_ts = torch.empty(steps + 1, n, action_dim, dtype=a.dtype, device=a.device)
        a_hats = torch.empty(steps, n, action_dim, dtype=a.dtype, device=a.device)
        grads = torch.empty_like(a_hats)
        q_hats = torch.empty(steps, n, dtype=a.dtype, device=a.device)
        nonfinite = torch.zeros(n, dtype=torch.bool, device=a.device)
        dt = 1.0 / steps
        a_ts[0] = a
        for k in range(steps):
            t = torch.full((n,), k / steps, dtype=a.dtype, device=a.device)
            v = velocity(obs_n, a, t)
            a_hat = _maybe_clip(a + (1.0 - k / steps) * v, clip)
            step = GuidanceStep(velocity, q, obs_n, a, t, v, a_hat, k, steps, clip)
            g, q_at = estimate(step)
            bad = ~torch.isfinite(g).all(dim=-1)
            nonfinite |= bad
            # A non-finite gradient is recorded and flagged, but never applied. With w = 0,
            # v + 0 * g == v bit for bit, so every estimator reproduces plain BC exactly.
            g_applied = torch.where(bad[:, None], torch.zeros_like(g), g)
            a = a + dt * (v + w[:, None] * g_applied)
            nonfinite |= ~torch.isfinite(a).all(dim=-1)
            a_ts[k + 1] = a
            a_hats[k] = a_hat
            grads[k] = g
            q_hats[k] = q_at

        final = _maybe_clip(a, clip)
        q_final = q(obs_n, final).detach()
        # A non-finite candidate is never chosen over a finite one.
        score = torch.where(nonfinite | ~torch.isfinite(q_final), float("-inf"), q_final)
        chosen = score.view(batch, best_of).argmax(dim=1)
        actions = final.view(batch, best_of, action_dim)[torch.arange(batch), chosen]

    return DenoiseTrace(
        actions=actions,
        a_t=a_ts,
        a_hat=a_hats,
        grad=grads,
        q_hat=q_hats,
        q_final=q_final,
        chosen=chosen,
        nonfinite=nonfinite,
        weight=w,
        estimator=estimator,
        steps=steps,
        best_of=best_of,
        clip=clip,
    )
