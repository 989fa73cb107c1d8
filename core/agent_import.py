"""Import agents trained with the JAX codebases people use: the QGF release and FQL.

Both save ``params_<step>.pkl``: a pickle of ``{"agent": flax.serialization.to_state_dict(agent)}``.
It holds parameters and optimizer state, never the agent's config, so the architecture is
read off the parameter shapes and names, and what shapes cannot tell (flow steps, how Q
heads are aggregated, the activation) comes from the run's ``flags.json`` when it lies
beside the file, else from flags, else from each codebase's default. The pickle is read by
``core.safe_pickle``: nothing in it runs, and neither jax nor flax is needed.

The layouts (flax names modules ``<Class>_<i>`` in creation order; a Dense kernel is
``[in, out]``; an ``nn.vmap`` ensemble stacks its members' parameters on axis 0)::

    QGF release (agents/qgf.py)               FQL (agents/fql.py)
    agent                                     agent
      policy.params                             network.params
        MLP_0/Dense_i, LayerNorm_i  trunk          modules_actor_bc_flow/mlp/Dense_i, LayerNorm_i
        Dense_0                     output         modules_actor_onestep_flow/mlp/...
      critic.params/value_net/...   [E, ...]       modules_critic/value_net/...        [E, ...]
      target_critic.params/...      [E, ...]       modules_target_critic/value_net/... [E, ...]
      value.params/value_net/...    V              (no V network)

The QGF release's own FQL variant (its agents/fql.py) uses the QGF layout of the actors
(``MLP_0`` + ``Dense_0``, raw time) inside FQL's ``network.params``, and may have
``modules_value``.

How their MLPs compute (see ``core.models``): QGF release Dense -> LayerNorm -> act, with no
LayerNorm on the last hidden layer of an actor trunk and one on every hidden layer of a
critic; FQL Dense -> act -> LayerNorm on every hidden layer. flax's LayerNorm eps is 1e-6
and ``nn.gelu`` is the tanh approximation. The QGF release's policy takes sinusoidal time
(16 dims); the FQL actors take raw t.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core import safe_pickle
from core.checkpoints import (
    CheckpointConfig,
    CheckpointError,
    DatasetSample,
    save_checkpoint,
    sha256_file,
)
from core.files import read_json_object
from core.models import (
    ACTIVATIONS,
    AGGREGATIONS,
    MLP,
    Critic,
    EnsembleLayerNorm,
    EnsembleLinear,
    OneStepPolicy,
    VelocityField,
)

FLAX_LAYER_NORM_EPS = 1e-6
SINUSOIDAL_DIM = 16
PARAMS_FILE = re.compile(r"^params_(\d+)\.pkl$")
# Reference defaults of what shapes cannot tell, per source format.
DEFAULTS = {
    "qgf": {"flow_steps": 10, "q_agg": "min", "activation": "gelu_tanh"},
    "fql": {"flow_steps": 10, "q_agg": "mean", "activation": "gelu_tanh"},
}
# flax activation names (``getattr(flax.linen, name)``) -> ``core.models.ACTIVATIONS``.
FLAX_ACTIVATIONS = {
    "gelu": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
    "mish": "mish",  # the QGF release's own x * tanh(softplus(x))
}
DATA_SAMPLE_ROWS = 20_000


class AgentImportError(CheckpointError):
    """An agent file that cannot be imported: unreadable, unsafe, or of an unsupported kind."""


# ----------------------------------------------------------------------------- the source


def find_params_file(src: str | Path) -> tuple[Path, int | None]:
    """The parameter file to import and its step: ``src`` itself, or the newest
    ``params_<step>.pkl`` of a run directory.

    Raises:
        AgentImportError: nothing there, or a directory with no parameter file.
    """
    src = Path(src)
    if src.is_dir():
        found = [(int(m.group(1)), p) for p in src.iterdir() if (m := PARAMS_FILE.match(p.name))]
        if not found:
            raise AgentImportError(f"{src} holds no params_<step>.pkl file")
        step, path = max(found)
        return path, step
    if not src.is_file():
        raise AgentImportError(f"no agent file or run directory at {src}")
    m = PARAMS_FILE.match(src.name)
    return src, int(m.group(1)) if m else None


def read_run_flags(params_file: Path) -> dict[str, Any]:
    """The run's ``flags.json`` beside the parameter file (both codebases write one), or {}."""
    path = params_file.parent / "flags.json"
    if not path.is_file():
        return {}
    return read_json_object(path, AgentImportError)


# ----------------------------------------------------------------------------- flax trees


def _node(tree: Any, *keys: str) -> Any:
    """``tree[k0][k1]...``, or an ``AgentImportError`` naming the missing path."""
    for i, key in enumerate(keys):
        if not isinstance(tree, Mapping) or key not in tree:
            where = "/".join(keys[:i]) or "the agent"
            have = sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__
            raise AgentImportError(f"{where} has no {key!r} (found: {have})")
        tree = tree[key]
    return tree


def _numbered(module: Mapping[str, Any], kind: str) -> list[Mapping[str, Any]]:
    """``module``'s ``<kind>_0, <kind>_1, ...`` in order (flax's creation order)."""
    found = {}
    for name, value in module.items():
        m = re.fullmatch(rf"{kind}_(\d+)", name)
        if m:
            found[int(m.group(1))] = value
    if sorted(found) != list(range(len(found))):
        raise AgentImportError(f"{kind} layers are not numbered 0..n-1: {sorted(found)}")
    return [found[i] for i in range(len(found))]


def _array(node: Mapping[str, Any], name: str, what: str) -> np.ndarray:
    value = node.get(name) if isinstance(node, Mapping) else None
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
        raise AgentImportError(f"{what}/{name} is not a float array")
    if not np.isfinite(value).all():
        raise AgentImportError(f"{what}/{name} holds NaN or inf")
    return value


@dataclass
class FlaxMLP:
    """A flax MLP's layers in order: Dense ``(kernel [.., in, out], bias [.., out])`` and
    LayerNorm ``(scale [.., d], bias [.., d])``, with a leading ensemble axis if stacked."""

    dense: list[tuple[np.ndarray, np.ndarray]]
    norm: list[tuple[np.ndarray, np.ndarray]]

    @classmethod
    def read(cls, module: Mapping[str, Any], what: str) -> FlaxMLP:
        unknown = sorted(k for k in module if not re.fullmatch(r"(Dense|LayerNorm)_\d+", k))
        if unknown:
            raise AgentImportError(f"{what} has layers this importer does not know: {unknown}")
        dense = [
            (_array(d, "kernel", f"{what}/Dense_{i}"), _array(d, "bias", f"{what}/Dense_{i}"))
            for i, d in enumerate(_numbered(module, "Dense"))
        ]
        norm = [
            (
                _array(n, "scale", f"{what}/LayerNorm_{i}"),
                _array(n, "bias", f"{what}/LayerNorm_{i}"),
            )
            for i, n in enumerate(_numbered(module, "LayerNorm"))
        ]
        if not dense:
            raise AgentImportError(f"{what} has no Dense layer")
        return cls(dense, norm)

    @property
    def widths(self) -> list[int]:
        """Output width of every Dense layer."""
        return [int(k.shape[-1]) for k, _ in self.dense]

    @property
    def in_dim(self) -> int:
        return int(self.dense[0][0].shape[-2])

    def stacked(self) -> int | None:
        """The ensemble size when parameters are stacked on axis 0, else None."""
        ndim = {k.ndim for k, _ in self.dense}
        if ndim == {2}:
            return None
        if ndim == {3}:
            sizes = {k.shape[0] for k, _ in self.dense} | {s.shape[0] for s, _ in self.norm}
            if len(sizes) == 1:
                return sizes.pop()
        raise AgentImportError("Dense kernels mix stacked and single parameters")


def _copy(param: torch.Tensor, value: np.ndarray, what: str) -> None:
    value = np.asarray(value, dtype=np.float32)
    if tuple(param.shape) != value.shape:
        raise AgentImportError(
            f"{what}: expected shape {list(param.shape)}, found {list(value.shape)}"
        )
    with torch.no_grad():
        param.copy_(torch.from_numpy(value))


def load_mlp(target: nn.Sequential, source: FlaxMLP, what: str, head: int | None = None) -> None:
    """Copy a flax MLP's parameters into a ``core.models`` layer stack, layer by layer in
    order (Linear <- Dense with its kernel transposed, LayerNorm <- LayerNorm; for ensemble
    layers all heads at once). ``head`` picks one member of a stacked flax ensemble."""
    dense, norm = iter(source.dense), iter(source.norm)
    n_linear = sum(isinstance(m, (nn.Linear, EnsembleLinear)) for m in target)
    n_norm = sum(isinstance(m, (nn.LayerNorm, EnsembleLayerNorm)) for m in target)
    if (n_linear, n_norm) != (len(source.dense), len(source.norm)):
        raise AgentImportError(
            f"{what}: {len(source.dense)} Dense and {len(source.norm)} LayerNorm layers, the "
            f"inferred architecture has {n_linear} and {n_norm}"
        )

    def pick(a: np.ndarray) -> np.ndarray:
        return a if head is None else a[head]

    for i, layer in enumerate(target):
        if isinstance(layer, nn.Linear):
            k, b = next(dense)
            _copy(layer.weight, pick(k).T, f"{what} layer {i} kernel")
            _copy(layer.bias, pick(b), f"{what} layer {i} bias")
        elif isinstance(layer, EnsembleLinear):
            k, b = next(dense)
            _copy(layer.weight, k, f"{what} layer {i} kernel")
            _copy(layer.bias, b[:, None, :], f"{what} layer {i} bias")
        elif isinstance(layer, nn.LayerNorm):
            s, b = next(norm)
            _copy(layer.weight, pick(s), f"{what} layer {i} scale")
            _copy(layer.bias, pick(b), f"{what} layer {i} bias")
        elif isinstance(layer, EnsembleLayerNorm):
            s, b = next(norm)
            _copy(layer.weight, s[:, None, :], f"{what} layer {i} scale")
            _copy(layer.bias, b[:, None, :], f"{what} layer {i} bias")


# ----------------------------------------------------------------------------- layouts


@dataclass
class AgentParts:
    """The networks of an agent file, as flax MLPs, before any architecture is fixed.

    Attributes:
        format: ``qgf`` (the QGF release's QGF agent), ``fql`` (FQL) or ``fql-qgf`` (the QGF
            release's FQL variant).
        policy: the BC flow's MLP; for the QGF layout the trunk and output Dense joined.
        policy_norm_last_hidden: whether the layout puts a LayerNorm on the policy's last
            hidden layer when it has LayerNorm at all.
        critic, target_critic: the Q ensembles (stacked on axis 0).
        value: V, or None.
        onestep: FQL's one-step policy, or None.
        norm_position: where the layout's LayerNorm sits relative to the activation.
        step: the train state's step counter, when the file has one.
    """

    format: str
    policy: FlaxMLP
    policy_norm_last_hidden: bool
    critic: FlaxMLP
    target_critic: FlaxMLP
    value: FlaxMLP | None
    onestep: FlaxMLP | None
    norm_position: str
    step: int | None


def _refuse_encoders(module: Mapping[str, Any], what: str) -> None:
    if "encoder" in module or any("encoder" in k.lower() for k in module):
        raise AgentImportError(
            f"{what} has an observation encoder (image-based agent): only state-based agents import"
        )


def _value_net(module: Any, what: str) -> FlaxMLP:
    """A ``Value`` module: ``value_net`` holding an MLP."""
    if not isinstance(module, Mapping):
        raise AgentImportError(f"{what} is not a parameter tree")
    _refuse_encoders(module, what)
    # A BroNet critic has the same parameter names and shapes as an MLP of twice its blocks
    # plus one hidden layers: only the run's flags.json tells them apart (``infer_config``).
    return FlaxMLP.read(_node(module, "value_net"), f"{what}/value_net")


def _mlp_trunk_and_head(module: Mapping[str, Any], what: str) -> FlaxMLP:
    """The QGF layout of an actor: ``MLP_0`` (hidden layers) + ``Dense_0`` (output)."""
    _refuse_encoders(module, what)
    extra = sorted(set(module) - {"MLP_0", "Dense_0"})
    if extra:
        raise AgentImportError(f"{what} has unexpected modules {extra}")
    trunk = FlaxMLP.read(_node(module, "MLP_0"), f"{what}/MLP_0")
    head = _node(module, "Dense_0")
    out = (_array(head, "kernel", f"{what}/Dense_0"), _array(head, "bias", f"{what}/Dense_0"))
    return FlaxMLP(trunk.dense + [out], trunk.norm)


def _actor(module: Any, what: str) -> tuple[FlaxMLP, str]:
    """An actor of either layout, and which: ``qgf`` (MLP_0 + Dense_0) or ``fql`` (mlp)."""
    if not isinstance(module, Mapping):
        raise AgentImportError(f"{what} is not a parameter tree")
    if "mlp" in module:
        _refuse_encoders(module, what)
        return FlaxMLP.read(module["mlp"], f"{what}/mlp"), "fql"
    if "MLP_0" in module:
        return _mlp_trunk_and_head(module, what), "qgf"
    raise AgentImportError(f"{what} has neither 'mlp' (FQL) nor 'MLP_0' (QGF release) modules")


def _step(state: Any) -> int | None:
    step = state.get("step") if isinstance(state, Mapping) else None
    if isinstance(step, np.ndarray) and step.size == 1:
        return int(step.reshape(()))
    if isinstance(step, (int, np.integer)):
        return int(step)
    return None


def read_agent_parts(tree: Any) -> AgentParts:
    """Recognise the layout of a loaded agent file and collect its networks.

    Raises:
        AgentImportError: an unknown layout, an encoder, a BroNet critic, or malformed layers.
    """
    agent = _node(tree, "agent")
    if not isinstance(agent, Mapping):
        raise AgentImportError("'agent' is not a parameter tree")
    if {"policy", "critic", "target_critic"} <= set(agent):
        policy = _node(agent, "policy", "params")
        if not isinstance(policy, Mapping):
            raise AgentImportError("policy/params is not a parameter tree")
        value = agent.get("value")
        return AgentParts(
            format="qgf",
            policy=_mlp_trunk_and_head(policy, "policy"),
            policy_norm_last_hidden=False,
            critic=_value_net(_node(agent, "critic", "params"), "critic"),
            target_critic=_value_net(_node(agent, "target_critic", "params"), "target_critic"),
            value=None if value is None else _value_net(_node(value, "params"), "value"),
            onestep=None,
            norm_position="before_activation",
            step=_step(agent["policy"]),
        )
    if "network" in agent:
        params = _node(agent, "network", "params")
        if not isinstance(params, Mapping):
            raise AgentImportError("network/params is not a parameter tree")
        modules = set(params)
        encoders = sorted(m for m in modules if "encoder" in m)
        if encoders:
            raise AgentImportError(
                f"the agent has observation encoders ({', '.join(encoders)}): image-based "
                "agents do not import"
            )
        need = {"modules_actor_bc_flow", "modules_critic", "modules_target_critic"}
        if not need <= modules:
            raise AgentImportError(
                f"network/params lacks {sorted(need - modules)} (found {sorted(modules)}): not "
                "an FQL agent"
            )
        policy, layout = _actor(params["modules_actor_bc_flow"], "modules_actor_bc_flow")
        onestep = None
        if "modules_actor_onestep_flow" in params:
            onestep, layout2 = _actor(
                params["modules_actor_onestep_flow"], "modules_actor_onestep_flow"
            )
            if layout2 != layout:
                raise AgentImportError("the BC flow and the one-step policy have other layouts")
        value = params.get("modules_value")
        return AgentParts(
            format="fql" if layout == "fql" else "fql-qgf",
            policy=policy,
            policy_norm_last_hidden=layout == "fql",
            critic=_value_net(params["modules_critic"], "modules_critic"),
            target_critic=_value_net(params["modules_target_critic"], "modules_target_critic"),
            value=None if value is None else _value_net(value, "modules_value"),
            onestep=onestep,
            norm_position="after_activation" if layout == "fql" else "before_activation",
            step=_step(agent["network"]),
        )
    raise AgentImportError(
        f"unknown agent layout: top-level keys {sorted(agent)}; expected the QGF release's "
        "(policy, critic, target_critic, value) or FQL's (network)"
    )


# ----------------------------------------------------------------------------- architecture


@dataclass
class ImportOptions:
    """What shapes cannot tell; None takes the run's flags.json, then the reference default.

    Attributes:
        flow_steps: Euler steps T the policy was trained with.
        q_agg: ``min`` or ``mean`` over Q heads, for guidance and best-of-N.
        activation: a flax activation name (``gelu`` is flax's tanh approximation) or one of
            ``core.models.ACTIVATIONS``.
    """

    flow_steps: int | None = None
    q_agg: str | None = None
    activation: str | None = None


@dataclass
class Inferred:
    """The architecture read off an agent file, and where each setting came from."""

    config: CheckpointConfig
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)


def _agent_flags(flags: Mapping[str, Any]) -> dict[str, Any]:
    agent = flags.get("agent")
    return dict(agent) if isinstance(agent, Mapping) else {}


def _setting(
    name: str, given: Any, agent_flags: Mapping[str, Any], keys: tuple[str, ...], default: Any
) -> tuple[Any, str]:
    if given is not None:
        return given, "flag"
    for key in keys:
        if agent_flags.get(key) is not None:
            return agent_flags[key], f"flags.json agent.{key}"
    return default, "reference default"


def _activation(name: Any) -> str:
    if isinstance(name, str) and name in FLAX_ACTIVATIONS:
        return FLAX_ACTIVATIONS[name]
    if isinstance(name, str) and name in ACTIVATIONS:
        return name
    raise AgentImportError(
        f"activation {name!r} is not supported (flax names: {sorted(FLAX_ACTIVATIONS)}; "
        f"or one of {list(ACTIVATIONS)})"
    )


def _norm_layers(mlp: FlaxMLP, hidden: int, last_hidden: bool, what: str) -> bool:
    """Whether an MLP with ``hidden`` hidden layers has LayerNorm, checked against the count
    its layout implies (all hidden layers, or all but the last)."""
    with_norm = hidden if last_hidden else hidden - 1
    if len(mlp.norm) == 0 and with_norm > 0:
        return False
    if len(mlp.norm) != with_norm:
        raise AgentImportError(
            f"{what} has {len(mlp.norm)} LayerNorm layers for {hidden} hidden layers; its "
            f"layout has {with_norm} or none"
        )
    for i, (scale, _) in enumerate(mlp.norm):
        if scale.shape[-1] != mlp.widths[i]:
            raise AgentImportError(f"{what}: LayerNorm_{i} does not follow Dense_{i}")
    return True


def infer_config(
    parts: AgentParts,
    env: str,
    obs_dim: int,
    action_dim: int,
    options: ImportOptions,
    flags: Mapping[str, Any],
) -> Inferred:
    """The ``CheckpointConfig`` of an agent for ``env`` (whose spaces are ``obs_dim`` and
    ``action_dim``): widths, ensemble size, LayerNorm, chunk horizon and time input from the
    shapes, the rest from ``options``, the run's flags, or the defaults.

    Raises:
        AgentImportError: the shapes do not fit the env, or each other.
    """
    from core.envs import parse_name

    agent_flags = _agent_flags(flags)
    family = "qgf" if parts.format == "qgf" else "fql"
    defaults = DEFAULTS[family]
    settings: dict[str, dict[str, Any]] = {}

    def setting(name: str, given: Any, keys: tuple[str, ...]) -> Any:
        value, origin = _setting(name, given, agent_flags, keys, defaults[name])
        settings[name] = {"value": value, "from": origin}
        return value

    flow_steps = setting("flow_steps", options.flow_steps, ("denoise_steps", "flow_steps"))
    q_agg = setting("q_agg", options.q_agg, ("q_aggregation", "q_agg"))
    activation = _activation(setting("activation", options.activation, ("activation",)))
    settings["activation"]["torch"] = activation
    if not isinstance(flow_steps, int) or isinstance(flow_steps, bool) or flow_steps < 1:
        raise AgentImportError(f"flow steps must be an integer >= 1, got {flow_steps!r}")
    if q_agg not in AGGREGATIONS:
        raise AgentImportError(f"Q aggregation must be one of {AGGREGATIONS}, got {q_agg!r}")
    if agent_flags.get("value_network_class", "MLP") != "MLP":
        raise AgentImportError(
            f"the run's critic is a {agent_flags['value_network_class']} "
            "(flags.json agent.value_network_class): only MLP critics import"
        )
    if agent_flags.get("encoder"):
        raise AgentImportError(
            f"the run uses the observation encoder {agent_flags['encoder']!r}: image-based "
            "agents do not import"
        )

    # The flat action: the policy's output width; a chunk of H env actions.
    chunk = parts.policy.widths[-1]
    if chunk % action_dim:
        raise AgentImportError(
            f"the policy outputs {chunk} dims, not a whole number of {env}'s {action_dim}-dim "
            "actions"
        )
    horizon = chunk // action_dim
    time_dim = parts.policy.in_dim - obs_dim - chunk
    if time_dim not in (SINUSOIDAL_DIM, 1):
        raise AgentImportError(
            f"the policy takes {parts.policy.in_dim} inputs; {env} has {obs_dim}-dim "
            f"observations and the policy {chunk}-dim actions, which leaves {time_dim} for "
            f"time (expected {SINUSOIDAL_DIM} sinusoidal or 1 raw): the agent was trained on "
            "another env"
        )
    for name, net in (("critic", parts.critic), ("target critic", parts.target_critic)):
        if net.in_dim != obs_dim + chunk:
            raise AgentImportError(
                f"the {name} takes {net.in_dim} inputs, expected {obs_dim} + {chunk} "
                f"(observation + action chunk of {env})"
            )
        if net.widths[-1] != 1 or net.stacked() is None:
            raise AgentImportError(f"the {name} is not an ensemble of scalar Q heads")
    if parts.value is not None and (parts.value.in_dim != obs_dim or parts.value.widths[-1] != 1):
        raise AgentImportError(f"V takes {parts.value.in_dim} inputs, expected {obs_dim}")
    if parts.onestep is not None and (
        parts.onestep.in_dim != obs_dim + chunk or parts.onestep.widths[-1] != chunk
    ):
        raise AgentImportError("the one-step policy's shapes do not match the BC flow's")

    hidden = parts.policy.widths[:-1]
    critic_hidden = parts.critic.widths[:-1]
    if parts.target_critic.widths != parts.critic.widths:
        raise AgentImportError("the critic and the target critic have other widths")
    if parts.value is not None and parts.value.widths[:-1] != critic_hidden:
        raise AgentImportError(
            f"V has widths {parts.value.widths[:-1]}, the Q heads {critic_hidden}: this "
            "checkpoint format needs them equal"
        )
    if parts.onestep is not None and parts.onestep.widths[:-1] != hidden:
        raise AgentImportError("the one-step policy's widths differ from the BC flow's")
    layer_norm = _norm_layers(parts.policy, len(hidden), parts.policy_norm_last_hidden, "policy")
    if parts.onestep is not None:
        _norm_layers(parts.onestep, len(hidden), parts.policy_norm_last_hidden, "one-step policy")
    critic_norm = _norm_layers(parts.critic, len(critic_hidden), True, "critic")
    if parts.value is not None and _norm_layers(parts.value, len(critic_hidden), True, "V") != (
        critic_norm
    ):
        raise AgentImportError("V and the Q heads differ in LayerNorm")
    ensemble = parts.critic.stacked()

    parsed = parse_name(env)
    config = CheckpointConfig(
        env=parsed.name,
        dataset=parsed.dataset_name,
        task=parsed.task_id,
        obs_dim=obs_dim,
        action_dim=action_dim,
        horizon=horizon,
        hidden=hidden,
        layer_norm=layer_norm,
        time_dim=time_dim,
        q_ensemble=int(ensemble or 1),
        flow_steps=flow_steps,
        training_steps=int(parts.step or 0),
        data_fingerprint={},
        activation=activation,
        norm_position=parts.norm_position,
        layer_norm_eps=FLAX_LAYER_NORM_EPS,
        policy_norm_last_hidden=parts.policy_norm_last_hidden,
        time_embedding="sinusoidal" if time_dim == SINUSOIDAL_DIM else "raw",
        critic_hidden=critic_hidden,
        critic_layer_norm=critic_norm,
        value_network=parts.value is not None,
        onestep_policy=parts.onestep is not None,
        q_aggregate=q_agg,
    )
    config.validate()
    return Inferred(config, settings)


def build_networks(
    parts: AgentParts, config: CheckpointConfig
) -> tuple[VelocityField, Critic, Critic, OneStepPolicy | None]:
    """``(policy, critic, target_critic, onestep)`` with the file's parameters."""
    policy = config.build_policy()
    load_mlp(policy.mlp.net, parts.policy, "policy")
    critics = []
    for source in (parts.critic, parts.target_critic):
        critic = config.build_critic()
        load_mlp(critic.q_ensemble.net, source, "Q ensemble")
        if parts.value is not None:
            assert isinstance(critic.value, MLP)
            load_mlp(critic.value.net, parts.value, "V")
        critics.append(critic)
    onestep = config.build_onestep()
    if onestep is not None:
        assert parts.onestep is not None
        load_mlp(onestep.mlp.net, parts.onestep, "one-step policy")
    for net in (policy, *critics, onestep):
        if net is not None:
            net.eval().requires_grad_(False)
    return policy, critics[0], critics[1], onestep


# ----------------------------------------------------------------------------- the import


@dataclass
class ImportReport:
    """What ``import_agent`` did: the file it took, the checkpoint, and how it was read."""

    source: Path
    out: Path
    config: CheckpointConfig
    notes: list[str]


def _dataset_sample(
    data: str | Path | None, env: str, obs_dim: int, action_dim: int, seed: int = 0
) -> tuple[DatasetSample, dict[str, Any]]:
    """The compact sample of ``data`` (an OGBench ``.npz``), or an empty one."""
    if data is None:
        empty = DatasetSample(
            np.zeros((0, obs_dim), np.float32), np.zeros((0, action_dim), np.float32)
        )
        return empty, {}
    from core.data import compact_sample, load_dataset
    from core.training import data_fingerprint

    dataset = load_dataset(env, path=data)
    sample = compact_sample(dataset, DATA_SAMPLE_ROWS, seed)
    fingerprint = data_fingerprint(
        {
            k: getattr(dataset, k)
            for k in ("observations", "actions", "rewards", "masks", "terminals")
        },
        sha256_file(data) if Path(data).is_file() else None,
    )
    return DatasetSample(sample["observations"], sample["actions"]), fingerprint


def import_agent(
    src: str | Path,
    out: str | Path,
    env: str | None = None,
    options: ImportOptions | None = None,
    data: str | Path | None = None,
) -> ImportReport:
    """Turn a QGF-release or FQL ``params_<step>.pkl`` (or the newest one of a run
    directory) into a checkpoint directory at ``out``.

    Args:
        src: the parameter file or a run directory.
        out: the checkpoint directory to write (atomically).
        env: the single-task env the agent acts in; None takes the run's flags.json.
        options: what shapes cannot tell (see ``ImportOptions``).
        data: an OGBench dataset file for the distance-to-data sample; without it the
            checkpoint has an empty sample and distances show as unavailable.

    Raises:
        AgentImportError: anything that stops the import, named.
    """
    from core.envs import make_env, parse_name

    options = options or ImportOptions()
    params_file, file_step = find_params_file(src)
    notes = []
    if Path(src).is_dir():
        notes.append(f"took {params_file.name}, the newest parameter file in {src}")
    flags = read_run_flags(params_file)
    if flags:
        notes.append(f"read the run's settings from {params_file.parent / 'flags.json'}")
    origin = "" if env else f"{params_file.parent / 'flags.json'} env_name: "
    env = env or flags.get("env_name")
    if not env:
        raise AgentImportError("name the env the agent acts in (--env); no flags.json says")
    if not isinstance(env, str):
        raise AgentImportError(f"{origin}the env name is a {type(env).__name__}, not a string")
    try:
        env = parse_name(env).name
    except ValueError as e:
        raise AgentImportError(f"{origin}{e}") from e
    try:
        tree = safe_pickle.load(params_file)
    except safe_pickle.UnsafePickleError as e:
        raise AgentImportError(f"{params_file}: {e}") from e
    except OSError as e:
        raise AgentImportError(f"cannot read {params_file}: {e}") from e
    space = make_env(env)
    obs_dim = int(np.prod(space.observation_space.shape))
    action_dim = int(np.prod(space.action_space.shape))
    try:
        parts = read_agent_parts(tree)
        inferred = infer_config(parts, env, obs_dim, action_dim, options, flags)
        config = inferred.config
        policy, critic, target_critic, onestep = build_networks(parts, config)
    except AgentImportError as e:
        raise AgentImportError(f"{params_file}: {e}") from e
    sample, fingerprint = _dataset_sample(data, env, obs_dim, action_dim)
    if data is None:
        notes.append("no --data: distance to the data will show as unavailable")
    config.data_fingerprint = fingerprint
    config.source = {
        "format": {"qgf": "qgf-release", "fql": "fql", "fql-qgf": "qgf-release-fql"}[parts.format],
        "file": str(params_file.resolve()),
        "sha256": sha256_file(params_file),
        "file_step": file_step,
        "train_state_step": parts.step,
        "inferred": {
            "hidden": config.hidden,
            "critic_hidden": config.critic_hidden,
            "q_ensemble": config.q_ensemble,
            "policy_layer_norm": config.layer_norm,
            "critic_layer_norm": config.critic_layer_norm,
            "horizon": config.horizon,
            "time_embedding": config.time_embedding,
            "value_network": config.value_network,
            "onestep_policy": config.onestep_policy,
        },
        "settings": inferred.settings,
        "guidance_critic": "target_critic",
        "data": None if data is None else str(Path(data).resolve()),
    }
    save_checkpoint(out, config, policy, critic, target_critic, sample, onestep=onestep)
    return ImportReport(params_file, Path(out), config, notes)


def is_agent_source(path: str | Path) -> bool:
    """Whether ``path`` is something to import (a ``.pkl``, or a run directory with a
    ``params_<step>.pkl`` and no checkpoint config) rather than a checkpoint directory."""
    path = Path(path)
    if path.is_file():
        return path.suffix == ".pkl"
    return (
        path.is_dir()
        and not (path / "config.json").exists()
        and any(PARAMS_FILE.match(p.name) for p in path.iterdir())
    )


def default_cache_dir() -> Path:
    """Where imports made on the fly are kept: ``$XDG_CACHE_HOME/qgf/imports``."""
    import os

    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "qgf" / "imports"


def cached_import(
    src: str | Path,
    env: str | None = None,
    options: ImportOptions | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[Path, list[str]]:
    """Import ``src`` into a cache directory keyed by the file's sha256, the env and the
    options, or reuse the import made before: ``(checkpoint, notes)``."""
    import hashlib

    from core.checkpoints import read_config

    options = options or ImportOptions()
    params_file, _ = find_params_file(src)
    key = json.dumps([sha256_file(params_file), env, options.__dict__], sort_keys=True)
    out = Path(cache_dir or default_cache_dir()) / hashlib.sha256(key.encode()).hexdigest()[:16]
    if out.is_dir():
        try:
            read_config(out)
            return out, [f"using the import of {params_file} cached in {out}"]
        except CheckpointError:
            pass  # a damaged cache entry is made again
    report = import_agent(src, out, env, options)
    return out, [*report.notes, f"imported {report.source} into {out}"]
