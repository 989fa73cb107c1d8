"""Tests for core/report.py and `qgf diagnose`: the report's numbers and figures are what an
independent recomputation from the sampler says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_config
from matplotlib.image import imread

from core.checkpoints import (
    DatasetSample,
    load_checkpoint,
    load_dataset_sample,
    save_checkpoint,
)
from core.cli import main as cli_main
from core.guidance import guided_sample
from core.manifold import DataManifold
from core.report import DATA, ORACLE, default_weight, diagnose_checkpoint, pick_states
from core.report_figures import (
    figure_distance,
    figure_noise_sensitivity,
    figure_q,
    figure_weights,
    write_report,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ENV = "cube-single-play-singletask-task2-v0"


def _shipped(env: str = DEFAULT_ENV) -> Path | None:
    """The shipped checkpoint for ``env`` under checkpoints/, found by its config."""
    for config in sorted((ROOT / "checkpoints").glob("*/config.json")):
        if json.loads(config.read_text()).get("env") == env:
            return config.parent
    return None


SHIPPED = _shipped()


def _tiny_checkpoint(path: Path, horizon: int = 1) -> Path:
    torch.manual_seed(0)
    config = tiny_config(
        obs_dim=6,
        action_dim=2,
        horizon=horizon,
        hidden=[32, 32],
        data_fingerprint={"arrays_sha256": "synthetic"},
    )
    rng = np.random.default_rng(0)
    obs = np.cumsum(rng.normal(scale=0.3, size=(600, 6)), axis=0).astype(np.float32)
    act = np.tanh(rng.normal(size=(600, 2))).astype(np.float32)
    policy, critic, target = config.build_policy(), config.build_critic(), config.build_critic()
    save_checkpoint(path, config, policy, critic, target, DatasetSample(obs, act))
    return path


SETTINGS = dict(
    states=12,
    estimators=["none", "qgf", "ood"],
    weight=1.5,
    best_of=4,
    k=8,
    seed=3,
    sweep=[0.2],
    eps=0.1,
    perturbations=2,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    ck = _tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny")
    report = diagnose_checkpoint(ck, **SETTINGS)
    out = tmp_path_factory.mktemp("out")
    paths = write_report(report, out)
    return ck, report, paths, json.loads(paths["json"].read_text())


def test_report_numbers_are_what_the_sampler_says(tiny):
    ck, report, _, data = tiny
    policy, critic, config = load_checkpoint(ck)
    sample = load_dataset_sample(ck)
    rows = data["rows"]
    obs = torch.tensor(sample.observations[rows])
    s, n, width = len(rows), SETTINGS["best_of"], config.chunk_dim
    # The noise the module docstring promises, drawn here independently.
    gen = torch.Generator().manual_seed(SETTINGS["seed"])
    noise = torch.randn(s * n, width, generator=gen).view(s, n, width)

    trace = guided_sample(
        policy, critic, obs, "qgf", weight=1.5, steps=config.flow_steps, noise=noise[:, 0]
    )
    with torch.no_grad():
        q_qgf = critic(obs, trace.actions).numpy()
    np.testing.assert_allclose(data["per_state"]["qgf"]["q_final"], q_qgf, rtol=1e-5, atol=1e-6)
    assert data["summary"]["qgf"]["q_final"]["mean"] == pytest.approx(q_qgf.mean(), abs=1e-5)

    # Oracle: every candidate of every state sampled alone, unguided; keep the best Q.
    best = []
    for i in range(s):
        cand = guided_sample(
            policy, critic, obs[i : i + 1].expand(n, -1), "none", weight=0.0,
            steps=config.flow_steps, noise=noise[i],
        )  # fmt: skip
        with torch.no_grad():
            best.append(critic(obs[i : i + 1].expand(n, -1), cand.actions).max().item())
    np.testing.assert_allclose(data["per_state"][ORACLE]["q_final"], best, rtol=1e-5, atol=1e-6)
    assert data["oracle_q_by_n"][-1] == pytest.approx(np.mean(best), abs=1e-5)
    # n = 1 is the unguided sample from candidate 0's noise: the `none` estimator exactly.
    assert data["oracle_q_by_n"][0] == pytest.approx(
        data["summary"]["none"]["q_final"]["mean"], abs=1e-6
    )
    gap = np.array(data["per_state"]["qgf"]["q_final"]) - np.array(best)
    assert data["summary"]["qgf"]["q_minus_oracle"]["mean"] == pytest.approx(gap.mean(), abs=1e-5)

    # Distances: the same manifold rebuilt from the sample (its own tests check it against
    # brute force), queried with the recomputed actions.
    manifold = DataManifold.from_sample(sample, k=SETTINGS["k"])
    found = manifold.query(obs, trace.actions)
    np.testing.assert_allclose(data["per_state"]["qgf"]["distance"], found.distance, rtol=1e-5)
    assert data["per_state"]["qgf"]["off_manifold"] == found.off_manifold.tolist()
    assert data["manifold"]["threshold"] == pytest.approx(manifold.threshold)
    # The dataset's own actions at held-out states: their distances are calibration values.
    assert set(rows) <= set(manifold.calibration_rows.tolist())
    own = np.array(data["per_state"][DATA]["distance"])[:, None]
    assert np.abs(own - manifold.calibration.numpy()[None, :]).min(axis=1).max() < 1e-5


def test_noise_sensitivity_is_the_cosine_of_qgf_gradients_recomputed_by_hand(tiny):
    ck, report, _, data = tiny
    policy, critic, config = load_checkpoint(ck)
    obs = torch.tensor(load_dataset_sample(ck).observations[data["rows"]])
    s, n, width, steps = len(obs), SETTINGS["best_of"], config.chunk_dim, config.flow_steps
    gen = torch.Generator().manual_seed(SETTINGS["seed"])
    a0 = torch.randn(s * n, width, generator=gen).view(s, n, width)[:, 0]
    # The perturbations are the first draw of a generator seeded with the report's seed.
    xi = torch.randn(2, s, width, generator=torch.Generator().manual_seed(SETTINGS["seed"]))
    k = steps // 2
    a_t = guided_sample(policy, critic, obs, "none", weight=0.0, steps=steps, noise=a0).a_t[k]
    t = torch.full((s,), k / steps)

    def qgf_gradient(a: torch.Tensor) -> torch.Tensor:
        """QGF by its definition: grad of Q at a_hat = clip(a + (1 - t) v), a_hat held fixed."""
        with torch.no_grad():
            a_hat = (a + (1 - k / steps) * policy(obs, a, t)).clamp(-1, 1)
        a_hat.requires_grad_(True)
        (grad,) = torch.autograd.grad(critic(obs, a_hat).sum(), a_hat)
        return grad

    g = qgf_gradient(a_t)
    cos = [
        torch.nn.functional.cosine_similarity(g, qgf_gradient(a_t + 0.1 * xi[p]), dim=-1)
        for p in range(2)
    ]
    want = float(torch.stack(cos).mean())
    assert data["summary"]["qgf"]["noise_sensitivity"][k] == pytest.approx(want, abs=1e-5)
    assert len(data["summary"]["ood"]["noise_sensitivity"]) == steps
    assert data["summary"]["none"]["noise_sensitivity"] == []  # G = 0: undefined
    line = next(
        li for li in figure_noise_sensitivity(report).axes[0].lines if li.get_label() == "qgf"
    )
    assert list(line.get_ydata()) == data["summary"]["qgf"]["noise_sensitivity"]


def test_flops_are_counted_and_ordered(tiny):
    _, report, _, data = tiny
    flops = {name: data["summary"][name]["flops_per_action"] for name in ("none", "qgf", ORACLE)}
    assert 0 < report.flops_unguided < flops["none"] < flops["qgf"] < flops[ORACLE]


def test_sweep_rows_at_the_report_weight_are_the_main_results(tiny):
    _, _, _, data = tiny
    assert {r["weight"] for r in data["sweep"]} == {0.2, 1.5}
    assert {r["estimator"] for r in data["sweep"]} == {"qgf", "ood"}  # none ignores w
    for r in data["sweep"]:
        if r["weight"] == 1.5:
            main = data["summary"][r["estimator"]]
            assert r["distance"] == main["distance"]
            assert r["q_minus_oracle"] == main["q_minus_oracle"]
            assert r["off_manifold_fraction"] == main["off_manifold_fraction"]


def test_estimators_differ_so_the_comparison_is_not_vacuous(tiny):
    _, _, _, data = tiny
    q = {name: np.array(data["per_state"][name]["q_final"]) for name in ("none", "qgf", "ood")}
    assert not np.allclose(q["none"], q["qgf"]) and not np.allclose(q["qgf"], q["ood"])


def test_figures_plot_the_report_numbers(tiny):
    _, report, paths, data = tiny
    fig = figure_q(report)
    ax_gap, ax_n = fig.axes
    np.testing.assert_allclose(ax_n.lines[0].get_ydata(), data["oracle_q_by_n"])
    by_label = {line.get_label(): line for line in ax_n.lines}
    for name in SETTINGS["estimators"]:
        want = data["summary"][name]["q_final"]["mean"]
        assert by_label[name].get_ydata()[0] == pytest.approx(want)

    fig = figure_distance(report)
    ax_o, ax_d = fig.axes
    means = next(line for line in ax_d.lines if line.get_label() == "mean").get_ydata()
    names = [t.get_text() for t in ax_d.get_xticklabels()]
    assert names == [*SETTINGS["estimators"], ORACLE, DATA]
    np.testing.assert_allclose(means, [data["summary"][n]["distance"]["mean"] for n in names])
    threshold = next(line for line in ax_d.lines if "threshold" in line.get_label())
    assert threshold.get_ydata()[0] == pytest.approx(data["manifold"]["threshold"])

    fig = figure_weights(report)
    for name in ("qgf", "ood"):
        line = next(li for li in fig.axes[1].lines if li.get_label() == name)
        assert list(line.get_xdata()) == [0.2, 1.5]
        rows = [r for r in data["sweep"] if r["estimator"] == name]
        assert list(line.get_ydata()) == [r["distance"]["mean"] for r in rows]

    for key in ("noise_sensitivity", "q", "distance", "weights"):
        image = imread(paths[key])
        assert image.shape[0] > 300 and image.shape[1] > 600
        assert image[..., :3].std() > 0.05  # not blank


def test_pick_states_prefers_held_out_rows():
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(200, 3))
    m = DataManifold.fit(obs, rng.normal(size=(200, 2)), k=4, holdout=0.1)
    rows, held = pick_states(m, obs, 15, seed=0)
    assert held.all() and set(rows.tolist()) <= set(m.calibration_rows.tolist())
    rows, held = pick_states(m, obs, 30, seed=0)
    assert len(set(rows.tolist())) == 30 and held.sum() == 20


def test_default_weight_comes_from_eval_json(tmp_path):
    assert default_weight(tmp_path) == 0.05
    (tmp_path / "eval.json").write_text(json.dumps({"summary": {"qgf": {"best_weight": 0.03}}}))
    assert default_weight(tmp_path) == 0.03


def test_chunked_checkpoint_compares_first_actions(tmp_path):
    ck = _tiny_checkpoint(tmp_path / "chunked", horizon=3)
    report = diagnose_checkpoint(ck, states=6, estimators=["qgf"], best_of=2, k=4, sweep=())
    assert report.manifold["compares"] == "the first 1 of 3 actions of each chunk"
    assert np.isnan(report.result(DATA).q_final).all()  # a single action has no chunk Q
    paths = write_report(report, tmp_path / "out")
    assert paths["q"].is_file()


def test_cli_writes_json_and_figures(tmp_path, capsys):
    ck = _tiny_checkpoint(tmp_path / "ck")
    out = tmp_path / "report"
    rc = cli_main(
        ["diagnose", str(ck), "--states", "8", "--estimators", "qgf,bptt", "--best-of", "2",
         "--sweep", "0.1", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "qgf" in printed and "bptt" in printed and "threshold" in printed
    data = json.loads((out / "diagnose.json").read_text())
    assert list(data["summary"]) == ["qgf", "bptt", ORACLE, DATA]
    assert (out / "q_final.png").is_file() and (out / "distance_to_data.png").is_file()


@pytest.mark.slow
@pytest.mark.skipif(SHIPPED is None, reason=f"no checkpoint for {DEFAULT_ENV} under checkpoints/")
def test_report_on_the_shipped_checkpoint(tmp_path):
    report = diagnose_checkpoint(SHIPPED, states=32, best_of=8, sweep=(0.3,))
    paths = write_report(report, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert len(data["rows"]) == 32 and set(paths) == {
        "json",
        "noise_sensitivity",
        "q",
        "distance",
        "weights",
    }
    for r in report.results:
        assert np.isfinite(r.distance).all() and r.nonfinite == 0
    # One number recomputed from the sampler: QGF's mean Q at the report's weight.
    policy, critic, config = load_checkpoint(SHIPPED)
    obs = torch.tensor(load_dataset_sample(SHIPPED).observations[data["rows"]])
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(32 * 8, config.chunk_dim, generator=gen).view(32, 8, -1)[:, 0]
    trace = guided_sample(
        policy, critic, obs, "qgf", weight=report.weight, steps=report.steps, noise=noise
    )
    assert data["summary"]["qgf"]["q_final"]["mean"] == pytest.approx(
        float(trace.q_final.mean()), abs=1e-4
    )
