"""`qgf import` against the authors' own code.

The fixtures in tests/fixtures/reference were made by tests/fixtures/make_reference.py from
the QGF release and FQL themselves (their own create, update and save_agent, and their own
outputs on fixed inputs and noise). Nothing here needs jax.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from core.agent_import import AgentImportError, ImportOptions, import_agent
from core.checkpoints import (
    CheckpointError,
    NoDatasetSample,
    load_agent,
    load_dataset_sample,
    load_state,
    read_config,
    sha256_file,
)
from core.guidance import euler, guided_sample

FIXTURES = Path(__file__).parent / "fixtures" / "reference"
# The same script under the QGF release's own pins (jax 0.4.30, flax 0.8.5): its arrays carry
# an abstract-value state that jax 0.10 cannot read back, which the importer ignores.
FIXTURES_JAX0430 = FIXTURES.parent / "reference_jax0430"
ENV = "cube-single-play-singletask-task2-v0"
CASES = ("qgf_single", "qgf_chunked", "fql", "fql_qgf_release", "jax0430/qgf_chunked")
CASES += ("jax0430/fql_qgf_release",)
# Worst error allowed: network outputs, and actions after 10 guided Euler steps.
NET_TOL, ACTION_TOL = 1e-5, 1e-4

pytestmark = pytest.mark.slow  # each import makes an OGBench env for its spaces


def _case_dir(case: str) -> Path:
    if case.startswith("jax0430/"):
        return FIXTURES_JAX0430 / case.removeprefix("jax0430/")
    return FIXTURES / case


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("imported")
    return {
        case: import_agent(_case_dir(case) / "params_5.pkl", root / case, ENV).out for case in CASES
    }


def _reference(case: str) -> dict[str, torch.Tensor]:
    with np.load(_case_dir(case) / "reference.npz") as d:
        return {k: torch.from_numpy(d[k]) for k in d.files}


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


@pytest.mark.parametrize("case", CASES)
def test_networks_match_the_authors_code(imported, case):
    ref = _reference(case)
    agent = load_agent(imported[case])
    state = load_state(imported[case])
    online = agent.config.build_critic()
    online.load_state_dict(state.weights["critic"])
    obs = ref["obs"]
    with torch.no_grad():
        assert _max_err(agent.policy(obs, ref["a_t"], ref["t"]), ref["velocity"]) < NET_TOL
        assert _max_err(agent.critic.q_all(obs, ref["a"]), ref["q_target"]) < NET_TOL
        assert _max_err(online.q_all(obs, ref["a"]), ref["q_critic"]) < NET_TOL
        if "v" in ref:
            assert _max_err(agent.critic.v(obs), ref["v"]) < NET_TOL
        else:
            assert not agent.critic.has_value
            with pytest.raises(ValueError, match="no V network"):
                agent.critic.v(obs)


@pytest.mark.parametrize("case", ("qgf_single", "qgf_chunked", "jax0430/qgf_chunked"))
def test_guided_actions_match_the_qgf_release_sample_actions(imported, case):
    ref = _reference(case)
    agent = load_agent(imported[case])
    keys = sorted(k for k in ref if k.startswith("sample_") and k.endswith("_actions"))
    # qgf, qgf_jacobian, ood x weights 0, 0.03, 1 x best-of 1, 4.
    assert len(keys) == 18
    for key in keys:
        stem = key.removeprefix("sample_").removesuffix("_actions")
        estimator, w, n = stem.rsplit("_", 2)
        trace = guided_sample(
            agent.policy,
            agent.critic,
            ref["obs"],
            estimator=estimator,
            weight=float(w[1:]),
            steps=agent.config.flow_steps,
            noise=ref[f"sample_{stem}_noise"],
            best_of=int(n[1:]),
        )
        assert _max_err(trace.actions, ref[key]) < ACTION_TOL, key


@pytest.mark.parametrize("case", ("fql", "fql_qgf_release", "jax0430/fql_qgf_release"))
def test_flow_and_one_step_actions_match_fql(imported, case):
    ref = _reference(case)
    agent = load_agent(imported[case])
    assert agent.onestep is not None
    with torch.no_grad():
        flow = euler(agent.policy, ref["obs"], ref["flow_noise"], agent.config.flow_steps)
        onestep = agent.onestep(ref["obs"], ref["flow_noise"]).clamp(-1, 1)
    assert _max_err(flow, ref["flow_actions"]) < ACTION_TOL
    assert _max_err(onestep, ref["onestep_actions"]) < ACTION_TOL
    # Unguided sampling through the sampler is the same Euler loop.
    trace = guided_sample(
        agent.policy, agent.critic, ref["obs"], "none", 0.0, 10, noise=ref["flow_noise"]
    )
    assert _max_err(trace.actions, ref["flow_actions"]) < ACTION_TOL


def test_architecture_is_inferred_from_the_shapes(imported):
    expect = {
        # case: (horizon, time, norm position, policy LN, V, one-step, Q aggregation)
        "qgf_single": (1, "sinusoidal", "before_activation", True, True, False, "min"),
        "qgf_chunked": (5, "sinusoidal", "before_activation", True, True, False, "min"),
        "fql": (1, "raw", "after_activation", False, False, True, "mean"),
        "fql_qgf_release": (5, "raw", "before_activation", False, True, True, "mean"),
    }
    for case, (horizon, time, norm, ln, value, onestep, agg) in expect.items():
        c = read_config(imported[case])
        meta = json.loads((FIXTURES / case / "reference.json").read_text())
        assert (c.horizon, c.time_embedding, c.norm_position, c.layer_norm) == (
            horizon,
            time,
            norm,
            ln,
        ), case
        assert (c.value_network, c.onestep_policy, c.q_aggregate) == (value, onestep, agg), case
        assert c.hidden == c.critic_hidden == [32, 32, 32, 32] and c.q_ensemble == 2
        assert c.critic_layer_norm is True and c.layer_norm_eps == 1e-6
        assert c.activation == "gelu_tanh" and c.flow_steps == 10
        assert c.policy_norm_last_hidden is (case == "fql")
        assert c.obs_dim == meta["obs_dim"] and c.action_dim == meta["action_dim"]
        assert c.format_version == 2


def test_provenance_is_recorded(imported):
    c = read_config(imported["qgf_chunked"])
    src = FIXTURES / "qgf_chunked" / "params_5.pkl"
    assert c.source["format"] == "qgf-release"
    assert c.source["sha256"] == sha256_file(src)
    assert c.source["file_step"] == 5 and c.source["train_state_step"] == c.training_steps
    assert c.source["inferred"]["horizon"] == 5
    assert c.source["settings"]["flow_steps"] == {"value": 10, "from": "reference default"}
    assert c.source["guidance_critic"] == "target_critic"
    assert read_config(imported["fql"]).source["format"] == "fql"
    assert read_config(imported["fql_qgf_release"]).source["format"] == "qgf-release-fql"


def test_without_data_distances_are_unavailable_not_wrong(imported):
    with pytest.raises(NoDatasetSample, match="no dataset sample"):
        load_dataset_sample(imported["fql"])


def test_a_run_directory_gives_its_newest_file_and_its_flags(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for step in (5, 40, 300):
        shutil.copy(FIXTURES / "qgf_single" / "params_5.pkl", run / f"params_{step}.pkl")
    (run / "flags.json").write_text(
        json.dumps({"env_name": ENV, "agent": {"q_aggregation": "mean", "denoise_steps": 16}})
    )
    report = import_agent(run, tmp_path / "out")
    assert report.source.name == "params_300.pkl"
    assert any("params_300.pkl" in note for note in report.notes)
    c = report.config
    assert (c.q_aggregate, c.flow_steps, c.env) == ("mean", 16, ENV)
    assert c.source["settings"]["q_agg"]["from"] == "flags.json agent.q_aggregation"
    # A flag beats flags.json.
    c = import_agent(run, tmp_path / "out2", options=ImportOptions(q_agg="min")).config
    assert c.q_aggregate == "min" and c.source["settings"]["q_agg"]["from"] == "flag"
    assert load_agent(tmp_path / "out2").critic.aggregate == "min"


def _tree(case: str):
    from core import safe_pickle

    return safe_pickle.load(FIXTURES / case / "params_5.pkl")


def _write(tmp_path: Path, tree) -> Path:
    path = tmp_path / "params_1.pkl"
    path.write_bytes(pickle.dumps(tree, protocol=4))
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t["agent"].pop("policy"), "unknown agent layout"),
        (lambda t: t.pop("agent"), "has no 'agent'"),
        (
            lambda t: t["agent"]["critic"]["params"].__setitem__("encoder", {}),
            "observation encoder",
        ),
        (
            lambda t: t["agent"]["policy"]["params"]["MLP_0"].__setitem__("Conv_0", {}),
            "do(es)? not know",
        ),
        (
            lambda t: t["agent"]["critic"]["params"]["value_net"]["Dense_0"].__setitem__(
                "kernel", np.zeros((2, 40, 32), np.float32)
            ),
            "critic takes 40 inputs",
        ),
    ],
)
def test_unsupported_agents_are_named_errors(tmp_path, edit, message):
    tree = _tree("qgf_single")
    edit(tree)
    with pytest.raises(AgentImportError, match=message):
        import_agent(_write(tmp_path, tree), tmp_path / "out", ENV)
    assert not (tmp_path / "out").exists()


def test_fql_encoders_and_bronet_flags_are_refused(tmp_path):
    tree = _tree("fql")
    tree["agent"]["network"]["params"]["modules_actor_bc_flow_encoder"] = {}
    with pytest.raises(AgentImportError, match="image-based"):
        import_agent(_write(tmp_path, tree), tmp_path / "out", ENV)
    path = _write(tmp_path, _tree("qgf_single"))
    (tmp_path / "flags.json").write_text(json.dumps({"agent": {"value_network_class": "BroNet"}}))
    with pytest.raises(AgentImportError, match="BroNet"):
        import_agent(path, tmp_path / "out", ENV)


def test_env_dims_must_match(tmp_path):
    src = FIXTURES / "qgf_chunked" / "params_5.pkl"
    with pytest.raises(AgentImportError, match="trained on another env"):
        import_agent(src, tmp_path / "out", "cube-double-play-singletask-v0")
    with pytest.raises(AgentImportError, match="no agent file"):
        import_agent(tmp_path / "missing.pkl", tmp_path / "out", ENV)
    with pytest.raises(AgentImportError, match="name the env"):
        import_agent(src, tmp_path / "out")
    with pytest.raises(AgentImportError, match="activation"):
        import_agent(src, tmp_path / "out", ENV, ImportOptions(activation="tanhshrink"))


def test_imported_checkpoints_refuse_tampering(imported, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(imported["qgf_chunked"], out)
    config = json.loads((out / "config.json").read_text())
    config["norm_position"] = "sideways"
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="norm_position"):
        read_config(out)


def test_view_imports_on_the_fly_into_a_cache(tmp_path):
    from core.agent_import import cached_import, is_agent_source

    src = FIXTURES / "fql" / "params_5.pkl"
    assert is_agent_source(src) and is_agent_source(src.parent)
    assert not is_agent_source(Path(__file__).parent.parent / "checkpoints" / "cube-single-task2")
    first, notes = cached_import(src, ENV, cache_dir=tmp_path)
    assert read_config(first).source["sha256"] == sha256_file(src)
    again, notes = cached_import(src, ENV, cache_dir=tmp_path)
    assert again == first and "cached" in notes[0]
    other, _ = cached_import(src, ENV, ImportOptions(q_agg="min"), cache_dir=tmp_path)
    assert other != first and read_config(other).q_aggregate == "min"


def test_a_session_plays_an_imported_fql_agent_and_keeps_it_in_a_timeline(imported, tmp_path):
    from viewer.session import Session, Settings
    from viewer.timeline_file import open_session, save_timeline

    settings = Settings(env_name=ENV, steps=4, candidates=3, weight=0.03)
    s = Session(imported["fql"], settings=settings)
    try:
        assert s.onestep is not None and not s.critic.has_value
        for _ in range(3):
            s.step()
        assert np.isnan(s.current.v)  # V is unavailable, never invented
        assert np.isfinite(s.current.q)
        opened = open_session(save_timeline(s, tmp_path / "fql.timeline.safetensors"))
        try:
            assert opened.config.onestep_policy and opened.onestep is not None
            assert opened.critic.aggregate == "mean" and not opened.critic.has_value
            assert opened.policy.time_embedding == "raw"
            assert opened.replay().exact
        finally:
            opened.close()
    finally:
        s.close()


def test_diagnose_without_a_dataset_sample_shows_distances_as_unavailable(imported, tmp_path):
    from core.report import diagnose_checkpoint
    from core.report_figures import write_report

    report = diagnose_checkpoint(
        imported["fql"],
        states=6,
        estimators=["none", "qgf"],
        best_of=3,
        sweep=[0.1],
        perturbations=1,
        seed=1,
    )
    assert report.manifold["available"] is False and "no dataset sample" in report.manifold["why"]
    assert report.state_source.startswith("env rollouts") and report.states == 6
    assert report.rows == []
    for r in report.results:
        assert np.isnan(r.distance).all() and np.isnan(r.summary()["off_manifold_fraction"])
        assert np.isfinite(r.q_final).all()
    paths = write_report(report, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["per_state"]["qgf"]["off_manifold"] == [None] * 6  # unknown, never False
    assert {"distance", "q", "weights"} <= set(paths)
