"""Critic-guided Euler sampling of a flow policy, with every gradient estimator of QGF.

The sampler (``guided_sample``) follows ``docs/ALGORITHM.md``::

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

Speed (batch 1 on a CPU is bound by per-op overhead and by reading the weights):

- Every estimator gets Q's gradient from a ``CriticGrad``. For a plain
  ``core.models.Critic`` that is an explicit backward pass through the ensemble
  (``_EnsembleCriticGrad``), no autograd graph, and each row goes back through its minimising
  head only; any other callable uses autograd. qgf_jacobian and bptt apply the chain rule:
  autograd through the velocity (a_hat or the remaining Euler steps), Q's gradient from the
  critic pass.
- A plain ``core.models.VelocityField`` runs without module calls (``fast_velocity``): the
  same ops, so the same numbers, for less Python overhead per Euler step.
- Non-finite values are looked for once, at the end of a call; only if there are any is the
  batch run again with per-row, per-step checks (``_denoise``). Rows are independent, so the
  finite rows come out the same either way.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.models import (
    MLP,
    Critic,
    EnsembleLayerNorm,
    EnsembleLinear,
    QEnsemble,
    VelocityField,
)

VelocityFn = Callable[[Tensor, Tensor, Tensor], Tensor]
QFn = Callable[[Tensor, Tensor], Tensor]


def _maybe_clip(a: Tensor, clip: bool) -> Tensor:
    return a.clamp(-1.0, 1.0) if clip else a


def _flow_time(k: int, steps: int, n: int, like: Tensor) -> Tensor:
    """``[n]`` flow time ``k / steps`` (one helper so every caller builds it identically)."""
    return torch.full((n,), k / steps, dtype=like.dtype, device=like.device)


def _euler_step(a: Tensor, v: Tensor, steps: int) -> Tensor:
    """``a + v / steps``. The guided sampler and ``euler`` share this op, so that weight 0
    reproduces plain Euler sampling bit for bit."""
    return torch.add(a, v, alpha=1.0 / steps)


def _one_step(a_t: Tensor, v: Tensor, k: int, steps: int, clip: bool) -> Tensor:
    """``a_hat = clip(a_t + (1 - t) v)`` with ``t = k / steps``."""
    return _maybe_clip(torch.add(a_t, v, alpha=1.0 - k / steps), clip)


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
    for j in range(start, steps):
        a = _euler_step(a, velocity(obs, a, _flow_time(j, steps, a.shape[0], a)), steps)
    return _maybe_clip(a, clip)


# --------------------------------------------------------------------------- the velocity


_MLP_LAYERS = (nn.Linear, nn.GELU, nn.LayerNorm, nn.ReLU, nn.SiLU, nn.Mish)


class _MLPVelocity:
    """A plain ``core.models.VelocityField`` without module calls: the ops of its ``forward``
    on the same parameters (time embedding, ``F.linear``, ``F.gelu``, ``F.layer_norm``; other
    activations are called as they are), so the same numbers bit for bit, autograd included.

    At the viewer's 16 rows a velocity call is ~15 module calls whose Python overhead costs
    about as much as their arithmetic; here the layers are looked up once. Other attributes
    (``action_dim``, ``parameters`` ...) are the module's.
    """

    def __init__(self, module: VelocityField) -> None:
        self.module = module
        self.embed_time = module.embed_time
        # Each layer as (function, positional arguments after x, keyword arguments).
        self.layers: list[tuple] = []
        for layer in module.mlp.net:
            if isinstance(layer, nn.Linear):
                self.layers.append((F.linear, (layer.weight, layer.bias), {}))
            elif isinstance(layer, nn.GELU):
                self.layers.append((F.gelu, (), {"approximate": layer.approximate}))
            elif isinstance(layer, nn.LayerNorm):
                args = (layer.normalized_shape, layer.weight, layer.bias, layer.eps)
                self.layers.append((F.layer_norm, args, {}))
            else:  # a parameterless activation
                self.layers.append((layer, (), {}))

    def __getattr__(self, name: str):
        return getattr(self.module, name)

    def __call__(self, obs: Tensor, a_t: Tensor, t: Tensor) -> Tensor:
        emb = self.embed_time(t.to(a_t.dtype))
        x = torch.cat([obs, a_t, emb], dim=-1)
        for fn, args, kwargs in self.layers:
            x = fn(x, *args, **kwargs)
        return x


def fast_velocity(velocity: VelocityFn) -> VelocityFn:
    """The same velocity field with less per-call overhead where it is a plain
    ``core.models.VelocityField`` (no subclass overriding ``forward``, no hooks, MLP layers
    of the known kinds); anything else is returned as it is. Like ``critic_grad``, meant for
    one sampler call: it holds the module's parameters as they are now."""
    if (
        isinstance(velocity, VelocityField)
        and type(velocity).forward is VelocityField.forward
        and type(velocity.mlp).forward is MLP.forward
        and not any(_has_hooks(m) for m in velocity.modules())
        and all(type(m) in _MLP_LAYERS for m in velocity.mlp.net)
    ):
        return _MLPVelocity(velocity)
    return velocity


# --------------------------------------------------------------------------- critic gradients


# Layers whose input gradient the explicit backward pass knows; a critic with any other
# (another activation) gets autograd.
_ENSEMBLE_LAYERS = (EnsembleLinear, nn.GELU, EnsembleLayerNorm)


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


class CriticGrad:
    """Q and its gradient in the action, without a graph: the critic as estimators use it.

    ``critic_grad(q)`` picks the implementation; this one, for any callable, uses autograd.
    """

    def __init__(self, q: QFn) -> None:
        self.q = q

    def __call__(self, obs: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
        """``(obs [B,O], a [B,A]) -> (grad_a Q(s, a) [B,A], Q(s, a) [B])``, ``a`` fixed.

        Rows are independent, so the gradient of the sum is each row's gradient."""
        a = a.detach().requires_grad_(True)
        with torch.enable_grad():
            value = self.q(obs, a)
            (grad,) = torch.autograd.grad(value.sum(), a)
        return grad, value.detach()

    def value(self, obs: Tensor, a: Tensor) -> Tensor:
        """``[B]`` Q(s, a), without a graph."""
        with torch.no_grad():
            return self.q(obs, a).detach()


class _EnsembleCriticGrad(CriticGrad):
    """``CriticGrad`` for a plain ``core.models.Critic``, by an explicit backward pass.

    The ensemble runs forward as one batched module, keeping what each layer's input
    gradient needs (per GELU its input; per LayerNorm its input, mean and 1/std); then the
    gradient walks back: Linear -> ``g @ W^T``, GELU -> ``gelu_backward``, LayerNorm with
    its per-head affine -> ``native_layer_norm_backward``, and at the first layer only the
    action rows of W, since Q's gradient in obs is never needed. With ``min``, a row's
    gradient is that of its minimising head (as autograd gives it), so each row goes back
    through that head alone: half the backward of a 2-head ensemble. With ``mean``, through
    every head, each weighted ``1 / E``.

    At batch 1 every tensor op costs about as much as the arithmetic, so the per-head views
    of the parameters that the backward pass uses are taken once, here, not at every step.
    """

    def __init__(self, critic: Critic) -> None:
        super().__init__(critic)
        ensemble = critic.q_ensemble
        self.heads = ensemble.ensemble
        self.mean = critic.aggregate == "mean"
        layers = list(ensemble.net)
        a_dim = critic.action_dim
        # forward: the layers as (kind, *arguments), looked up once: module attribute access
        # costs at every call.
        self.forward: list[tuple] = []
        for layer in layers:
            if isinstance(layer, EnsembleLinear):
                self.forward.append(("linear", layer.bias, layer.weight))
            elif isinstance(layer, nn.GELU):
                self.forward.append(("gelu", layer.approximate))
            else:
                assert isinstance(layer, EnsembleLayerNorm)  # see _ENSEMBLE_LAYERS
                self.forward.append(("norm", [layer.dim], layer.weight, layer.bias, layer.eps))
        # backward[e]: head e's layers in reverse as (kind, parameter view, extra).
        self.backward: list[list[tuple]] = []
        for e in range(self.heads):
            plan: list[tuple] = []
            for i in range(len(layers) - 1, -1, -1):
                layer = layers[i]
                if isinstance(layer, EnsembleLinear):
                    w = layer.weight[e]  # [in, out]
                    plan.append(("linear", (w[-a_dim:] if i == 0 else w).T, None))
                elif isinstance(layer, nn.GELU):
                    plan.append(("gelu", None, layer.approximate))
                else:
                    assert isinstance(layer, EnsembleLayerNorm)
                    plan.append(("norm", layer.weight[e, 0], layer.dim))
            self.backward.append(plan)

    def _forward(self, obs: Tensor, a: Tensor) -> tuple[Tensor, list[tuple]]:
        """``[E, B]`` Q of every head, and the saved activations."""
        x = torch.cat([obs, a], dim=-1)
        x = x.expand(self.heads, *x.shape)
        saved: list[tuple] = []
        for kind, *args in self.forward:
            if kind == "linear":
                bias, weight = args
                x = torch.baddbmm(bias, x, weight)
            elif kind == "gelu":
                saved.append((x,))
                x = F.gelu(x, approximate=args[0])
            else:
                shape, weight, bias, eps = args
                y, mean, rstd = torch.ops.aten.native_layer_norm(x, shape, None, None, eps)
                saved.append((x, mean, rstd))
                x = torch.addcmul(bias, y, weight)
        return x.squeeze(-1), saved

    def _head_backward(self, saved: list[tuple], head: int, rows: Tensor | None, n: int) -> Tensor:
        """``[n, A]`` gradient of head ``head``'s Q for the ``n`` rows ``rows`` (None: all)."""

        # This head's rows of a saved activation [E, B, ...] (a view when all rows).
        act: Callable[[Tensor], Tensor] = operator.itemgetter(head)
        if rows is not None:
            index = rows

            def act(t: Tensor) -> Tensor:
                return t[head].index_select(0, index)

        pending = iter(reversed(saved))
        plan = self.backward[head]
        # d Q / d (last hidden) is the output layer's weight row, the same for every row.
        g = plan[0][1].expand(n, -1)
        for kind, param, extra in plan[1:]:
            if kind == "linear":
                g = torch.mm(g, param)
            elif kind == "gelu":
                (pre,) = next(pending)
                g = torch.ops.aten.gelu_backward(g, act(pre), approximate=extra)
            else:
                pre, mean, rstd = next(pending)
                g = torch.ops.aten.native_layer_norm_backward(
                    g, act(pre), [extra], act(mean), act(rstd), param, None, [True, False, False]
                )[0]
        return g

    def __call__(self, obs: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
        n = a.shape[0]
        with torch.no_grad():
            qs, saved = self._forward(obs, a)
            if self.mean:
                grads = [self._head_backward(saved, e, None, n) for e in range(self.heads)]
                return torch.stack(grads).mean(dim=0), qs.mean(dim=0)
            value, best = qs.min(dim=0)
            if self.heads == 1:
                return self._head_backward(saved, 0, None, n), value
            if n == 1:
                return self._head_backward(saved, int(best.item()), None, n), value
            # Which head each row takes decides the work: this reads it back (a device sync
            # on a GPU).
            counts = torch.bincount(best, minlength=self.heads).tolist()
            if max(counts) == n:
                return self._head_backward(saved, counts.index(n), None, n), value
            grad = torch.empty_like(a)
            for e, count in enumerate(counts):
                if count:
                    rows = (best == e).nonzero().squeeze(1)
                    grad.index_copy_(0, rows, self._head_backward(saved, e, rows, count))
        return grad, value

    def value(self, obs: Tensor, a: Tensor) -> Tensor:
        # The same forward without module calls, whose Python overhead counts at batch 1.
        with torch.no_grad():
            qs, _ = self._forward(obs, a)
            return qs.mean(dim=0) if self.mean else qs.min(dim=0).values


def critic_grad(q: QFn) -> CriticGrad:
    """The fastest exact ``CriticGrad`` for this critic.

    A plain ``core.models.Critic`` (no subclass overriding ``forward``, no hooks, layers of
    the known kinds) gets the explicit backward pass; anything else gets autograd. The
    result is meant for one sampler call: it holds views of the critic's parameters, so
    in-place updates show but replaced parameters do not.
    """
    if (
        isinstance(q, Critic)
        and type(q).forward is Critic.forward
        and type(q.q_ensemble).forward is QEnsemble.forward
        and not any(_has_hooks(m) for m in q.modules())
        and all(type(m) in _ENSEMBLE_LAYERS for m in q.q_ensemble.net)
        and isinstance(q.q_ensemble.net[0], EnsembleLinear)
        and isinstance(q.q_ensemble.net[-1], EnsembleLinear)
    ):
        return _EnsembleCriticGrad(q)
    return CriticGrad(q)


# --------------------------------------------------------------------------- estimators


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
        critic: Q and its gradient without a graph (``critic_grad(q)`` when left out).
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
    critic: CriticGrad | None = field(default=None, repr=False)

    @classmethod
    def at(
        cls,
        velocity: VelocityFn,
        q: QFn,
        obs: Tensor,
        a_t: Tensor,
        k: int,
        steps: int,
        clip: bool = True,
        critic: CriticGrad | None = None,
    ) -> GuidanceStep:
        """The step at iterate ``a_t [B*, A]`` and time ``k / steps``: evaluates v and a_hat.

        This is how the sampler builds each step, so an estimator evaluated on a step built
        here (e.g. at a perturbed ``a_t`` for the noise-sensitivity diagnostic) sees exactly
        what it sees inside ``guided_sample``.
        """
        with torch.no_grad():
            t = _flow_time(k, steps, a_t.shape[0], a_t)
            v = velocity(obs, a_t, t)
            a_hat = _one_step(a_t, v, k, steps, clip)
        return cls(velocity, q, obs, a_t, t, v, a_hat, k, steps, clip, critic)

    def q_and_grad(self, a: Tensor) -> tuple[Tensor, Tensor]:
        """``(grad_a Q(s, a) [B*, A], Q(s, a) [B*])`` with ``a`` held fixed."""
        if self.critic is None:
            self.critic = critic_grad(self.q)
        return self.critic(self.obs, a)

    def q_value(self, a: Tensor) -> Tensor:
        """``[B*]`` Q(s, a) without a graph."""
        if self.critic is None:
            self.critic = critic_grad(self.q)
        return self.critic.value(self.obs, a)

    def grad_through(self, fn: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        """``(grad_{a_t} Q(s, fn(a_t)), Q(s, fn(a_t)))``: the chain rule, with Q's gradient
        at ``x = fn(a_t)`` from ``q_and_grad`` and autograd through ``fn`` only
        (``J_fn^T grad_x Q``), so the critic never enters an autograd graph."""
        a = self.a_t.detach().requires_grad_(True)
        with torch.enable_grad():
            x = fn(a)
        g_x, value = self.q_and_grad(x.detach())
        (grad,) = torch.autograd.grad(x, a, grad_outputs=g_x)
        return grad, value

    def one_step_estimate(self, a_t: Tensor) -> Tensor:
        """``a_hat(a_t) = clip(a_t + (1 - t) v(s, a_t, t))``, differentiable in ``a_t``."""
        return _one_step(a_t, self.velocity(self.obs, a_t, self.t), self.k, self.steps, self.clip)

    def rollout(self, a_t: Tensor) -> Tensor:
        """``ODE(a_t)``: unguided Euler from this step's ``t`` to 1, then the sampler's final
        clip (when ``clip``), differentiable in ``a_t``."""
        return euler(self.velocity, self.obs, a_t, self.steps, start=self.k, clip=self.clip)


Estimator = Callable[[GuidanceStep], tuple[Tensor, Tensor]]
"""``G(step) -> (grad [B*, A], q_at [B*])``: the gradient and Q where it was taken."""

ESTIMATORS: dict[str, Estimator] = {}
ESTIMATOR_DOCS: dict[str, str] = {}


def register_estimator(name: str, *, replace: bool = False) -> Callable[[Estimator], Estimator]:
    """Decorator adding a gradient estimator to ``ESTIMATORS`` under ``name``.

    The function receives a ``GuidanceStep`` and returns ``(grad [B*, A], q_at [B*])``:
    the guidance direction G (before weighting) and Q at the point where it was taken.
    Rows must not depend on one another. Its docstring's first line is what listings (CLI,
    viewer) show.

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
        lines = (fn.__doc__ or "").strip().splitlines()
        ESTIMATOR_DOCS[name] = lines[0] if lines else ""
        return fn

    return decorate


@register_estimator("none")
def none(step: GuidanceStep) -> tuple[Tensor, Tensor]:
    """No guidance (plain BC sampling); Q is read at a_hat for the plots."""
    return torch.zeros_like(step.a_t), step.q_value(step.a_hat)


@register_estimator("qgf")
def qgf(step: GuidanceStep) -> tuple[Tensor, Tensor]:
    """QGF: grad of Q at the one-step estimate a_hat, Jacobian replaced by I."""
    return step.q_and_grad(step.a_hat)


@register_estimator("qgf_jacobian")
def qgf_jacobian(step: GuidanceStep) -> tuple[Tensor, Tensor]:
    """QGF with the exact Jacobian: J^T grad Q(a_hat), J = d a_hat / d a_t (through v, clip)."""
    return step.grad_through(step.one_step_estimate)


@register_estimator("qgf_chain")
def qgf_chain(step: GuidanceStep) -> tuple[Tensor, Tensor]:
    """grad of Q at a_1 = ODE(a_t) (exact unguided denoising), Jacobian replaced by I."""
    with torch.no_grad():
        # The first Euler step of ODE(a_t) uses the velocity the sampler already has.
        a_next = _euler_step(step.a_t, step.v, step.steps)
        a_1 = euler(step.velocity, step.obs, a_next, step.steps, start=step.k + 1, clip=step.clip)
    return step.q_and_grad(a_1)


@register_estimator("ood")
def ood(step: GuidanceStep) -> tuple[Tensor, Tensor]:
    """Critic queried at the noisy action: grad of Q(s, a_t) w.r.t. a_t."""
    return step.q_and_grad(step.a_t)


@register_estimator("bptt")
def bptt(step: GuidanceStep) -> tuple[Tensor, Tensor]:
    """Backprop through every remaining Euler step: grad_{a_t} Q(s, ODE(a_t))."""
    return step.grad_through(step.rollout)


# --------------------------------------------------------------------------- the sampler


@dataclass
class DenoiseTrace:
    """The whole guided denoising of a batch.

    Attributes:
        actions: ``[B, A]`` final actions after best-of selection (always finite).
        a_t: ``[T+1, B*, A]`` iterates a_0 .. a_T (a_T before the final clip; always finite:
            a step that would make a row non-finite leaves it where it was).
        a_hat: ``[T, B*, A]`` one-step clean estimates, as computed.
        grad: ``[T, B*, A]`` the estimator's G at each step, before weighting, as computed
            (non-finite values are kept here so they can be shown, but never applied).
        q_hat: ``[T, B*]`` Q where the gradient was taken.
        q_final: ``[B*]`` Q of each candidate's final (clipped) action.
        chosen: ``[B]`` index in 0..best_of-1 of the kept candidate of each row.
        nonfinite: ``[B*]`` True where, at any step, a_hat, G or Q where it was taken was
            NaN/inf (that step then took no guidance), the step's iterate was NaN/inf (the
            row then stayed put), or Q of the final action was NaN/inf.
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

    def row(self, i: int) -> DenoiseTrace:
        """Row ``i`` of the batch as a one-row trace (its ``best_of`` candidates)."""
        cand = slice(i * self.best_of, (i + 1) * self.best_of)
        return DenoiseTrace(
            actions=self.actions[i : i + 1],
            a_t=self.a_t[:, cand],
            a_hat=self.a_hat[:, cand],
            grad=self.grad[:, cand],
            q_hat=self.q_hat[:, cand],
            q_final=self.q_final[cand],
            chosen=self.chosen[i : i + 1],
            nonfinite=self.nonfinite[cand],
            weight=self.weight[cand],
            estimator=self.estimator,
            steps=self.steps,
            best_of=self.best_of,
            clip=self.clip,
        )


def _expand_weight(weight: float | Tensor, batch: int, best_of: int, like: Tensor) -> Tensor:
    # A Python float goes straight to the sample's dtype (via float32 it would be rounded).
    w = torch.as_tensor(weight, dtype=like.dtype, device=like.device).detach()
    if w.ndim == 0:
        w = w.expand(batch * best_of).clone()
    elif w.shape == (batch,):
        w = w.repeat_interleave(best_of)
    else:
        raise ValueError(
            f"weight must be a float or a tensor of shape [{batch}], got {tuple(w.shape)}"
        )
    if not torch.isfinite(w).all():
        raise ValueError("weight must be finite")
    return w


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
        a = noise.detach().to(device=like.device, dtype=like.dtype)
        if not torch.isfinite(a).all():
            raise ValueError("noise must be finite")
        return a
    # Draw on the generator's device so a CPU generator gives the same noise everywhere.
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


@dataclass
class _Run:
    """One pass of the denoising loop (see ``_denoise``); tensors as in ``DenoiseTrace``."""

    a_t: Tensor
    a_hat: Tensor
    grad: Tensor
    q_hat: Tensor
    final: Tensor
    q_final: Tensor
    # [B*] per row, careful runs only: a_hat, G and Q where it was taken were finite at
    # every step (guided), and every step's iterate was (moved).
    guided: Tensor | None
    moved: Tensor | None

    def all_finite(self) -> bool:
        return bool(
            self.grad.isfinite().all()
            & self.q_hat.isfinite().all()
            & self.a_hat.isfinite().all()
            & self.a_t[-1].isfinite().all()
            & self.q_final.isfinite().all()
        )

    def finite_rows(self) -> Tensor:
        """``[B*]`` rows that stayed finite throughout (careful runs only)."""
        if self.guided is None or self.moved is None:
            raise ValueError("only a careful run checks its rows")
        return self.guided & self.moved & self.q_final.isfinite()


def _denoise(
    velocity: VelocityFn,
    q: QFn,
    critic: CriticGrad,
    estimator: str,
    obs: Tensor,
    a: Tensor,
    w_dt: Tensor,
    steps: int,
    clip: bool,
    careful: bool,
) -> _Run:
    """The guided Euler loop from ``a_0 = a [B*, A]``, with ``w_dt = w / T`` as ``[B*, 1]``.

    ``careful=False`` applies every G as it comes: a NaN then spreads through its row, which
    ``_Run.all_finite`` detects once at the end, instead of paying per-step checks on every
    call. ``careful=True`` checks each row at each step: a non-finite G (or Q where it was
    taken) is recorded but not applied, and a row whose next iterate would be non-finite
    (e.g. a NaN velocity) stays where it was. Rows that stay finite get the same numbers
    either way.
    """
    estimate = ESTIMATORS[estimator]
    a_ts, a_hats, grads, q_hats, guided, moved = [a], [], [], [], [], []
    for k in range(steps):
        step = GuidanceStep.at(velocity, q, obs, a, k, steps, clip, critic)
        g, q_at = estimate(step)
        if g.shape != a.shape or q_at.shape != a.shape[:1]:
            raise ValueError(
                f"estimator {estimator!r} returned G {list(g.shape)} and Q {list(q_at.shape)}; "
                f"expected {list(a.shape)} and {list(a.shape[:1])}"
            )
        if g.requires_grad or q_at.requires_grad:  # a user estimator's graph stops here
            g, q_at = g.detach(), q_at.detach()
        # w * G is added to the unguided Euler step, so w = 0 gives that step bit for bit.
        unguided = _euler_step(a, step.v, steps)
        if careful:
            ok = g.isfinite().all(dim=-1) & q_at.isfinite() & step.a_hat.isfinite().all(dim=-1)
            a_next = torch.addcmul(unguided, w_dt, torch.where(ok[:, None], g, 0.0))
            finite = a_next.isfinite().all(dim=-1)
            a = torch.where(finite[:, None], a_next, a)
            guided.append(ok)
            moved.append(finite)
        else:
            a = torch.addcmul(unguided, w_dt, g)
        a_ts.append(a)
        a_hats.append(step.a_hat)
        grads.append(g)
        q_hats.append(q_at)
    final = _maybe_clip(a, clip)
    return _Run(
        a_t=torch.stack(a_ts),
        a_hat=torch.stack(a_hats),
        grad=torch.stack(grads),
        q_hat=torch.stack(q_hats),
        final=final,
        q_final=critic.value(obs, final),
        guided=torch.stack(guided).all(dim=0) if careful else None,
        moved=torch.stack(moved).all(dim=0) if careful else None,
    )


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
        A ``DenoiseTrace`` with no autograd graph attached. Rows are independent of one
        another, and with ``weight = 0`` every estimator gives exactly the unguided actions
        (``euler``) for the same noise. Works under a caller's ``no_grad`` or
        ``inference_mode``.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; registered: {sorted(ESTIMATORS)}")
    if steps < 1 or best_of < 1:
        raise ValueError(f"steps and best_of must be >= 1, got steps={steps}, best_of={best_of}")
    if obs.ndim != 2:
        raise ValueError(f"obs must be [B, O], got shape {list(obs.shape)}")
    if torch.is_inference_mode_enabled():
        # Inference tensors cannot enter an autograd graph: leave inference mode and work
        # on ordinary copies of the inputs.
        with torch.inference_mode(False):
            return guided_sample(
                velocity,
                q,
                obs.clone(),
                estimator,
                weight.clone() if isinstance(weight, Tensor) else weight,
                steps,
                None if noise is None else noise.clone(),
                generator,
                best_of,
                clip,
            )
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
        w_dt = (w / steps)[:, None]
        critic = critic_grad(q)
        args = (fast_velocity(velocity), q, critic, estimator, obs_n, a, w_dt, steps, clip)
        run = _denoise(*args, careful=False)
        if run.all_finite():
            nonfinite = torch.zeros(n, dtype=torch.bool, device=a.device)
        else:
            # Rows are independent, so redoing the batch with the per-row checks changes
            # nothing for the rows that were finite, and finds and contains the others.
            run = _denoise(*args, careful=True)
            nonfinite = ~run.finite_rows()
        final, q_final = run.final, run.q_final
        # A non-finite candidate is never chosen over a finite one.
        score = torch.where(nonfinite, float("-inf"), q_final)
        chosen = score.view(batch, best_of).argmax(dim=1)
        executed = torch.arange(batch, device=chosen.device) * best_of + chosen
        trace = DenoiseTrace(
            actions=final[executed],
            a_t=run.a_t,
            a_hat=run.a_hat,
            grad=run.grad,
            q_hat=run.q_hat,
            q_final=q_final,
            chosen=chosen,
            nonfinite=nonfinite,
            weight=w,
            estimator=estimator,
            steps=steps,
            best_of=best_of,
            clip=clip,
        )
    return trace
