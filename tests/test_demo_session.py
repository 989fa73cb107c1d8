"""viewer/demo_session.py: the live demo's panes, in lockstep, with no window."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import time_limit

from viewer.demo_session import (
    WEIGHT_GRID,
    DemoSession,
    PaneSpec,
    PresetError,
    default_preset,
    load_preset,
    step_weight,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PRESETS = sorted((ROOT / "presets").glob("*.toml"))


def small(preset, **changes):
    """The preset with a cheap sampler (T = 3, N = 4), for tests."""
    return replace(preset, steps=3, candidates=4, **changes)


@pytest.fixture(scope="module")
def demo() -> DemoSession:
    d = DemoSession(small(default_preset(), seeds=(0, 1, 2)))
    yield d
    d.close()


def truncate_after(demo: DemoSession, steps: int) -> None:
    """Make every pane's episode end (time limit) after ``steps`` env steps."""
    for pane in demo.panes:
        time_limit(pane.env)._max_episode_steps = steps


def same_start(a, b) -> None:
    """Both panes at the same state: observation, joint positions and velocities."""
    np.testing.assert_array_equal(a.obs, b.obs)
    da, db = a.env.unwrapped._data, b.env.unwrapped._data
    np.testing.assert_array_equal(da.qpos, db.qpos)
    np.testing.assert_array_equal(da.qvel, db.qvel)


def test_panes_start_from_the_same_state_with_the_same_noise(demo):
    demo.reset(0)
    frame = demo.frame()
    assert [v.step for v in frame.panes] == [0, 0]
    a, b = demo.panes
    same_start(a, b)
    assert torch.equal(a.noise, b.noise)
    assert a.spec.weight == 0 and b.spec.weight > 0 and b.spec.live
    # Same noise, other weight: the candidates differ only by the guidance.
    assert not torch.equal(a.trace.final, b.trace.final)


def test_panes_step_in_lockstep_with_one_sample_call_per_step(demo):
    demo.reset(0)
    calls = demo.sample_calls
    for k in range(1, 6):
        demo.step()
        assert [p.index for p in demo.panes] == [k, k]
        assert [v.step for v in demo.frame().panes] == [k, k]
        a, b = demo.panes
        assert torch.equal(a.noise, b.noise)
        # The noise of step k is step_noise(seed, k): the same whatever the weight.
        from core.step import step_noise

        expect = step_noise(demo.seed, k, demo.preset.candidates, a.agent.policy.action_dim)
        assert torch.equal(a.noise, expect)
    # w = 0 and the live pane share networks: one batched guided_sample call per step.
    assert demo.sample_calls - calls == 5


def test_slider_changes_only_the_live_pane(demo):
    demo.reset(0)
    demo.step()
    left, right = demo.panes
    before_left, before_right = left.trace, right.trace
    noise = right.noise
    version = demo.version
    demo.set_weight(0.3)
    assert demo.version > version
    assert left.trace is before_left and left.spec.weight == 0
    assert right.spec.weight == 0.3 and right.trace is not before_right
    assert torch.equal(right.noise, noise)  # same noise, re-sampled at the new weight
    assert torch.allclose(right.trace.weight, torch.tensor(0.3))
    assert demo.frame().panes[1].caption == "qgf  w = 0.3"
    demo.set_estimator("ood")
    assert right.spec.estimator == "ood" and left.spec.estimator == "qgf"
    with pytest.raises(ValueError, match="unknown estimator"):
        demo.set_estimator("nope")
    with pytest.raises(ValueError, match="weight"):
        demo.set_weight(-1)
    demo.set_estimator("qgf")
    demo.set_weight(0.03)


def test_auto_loop_advances_the_seed_and_counts_successes(demo):
    demo.reset(0)
    truncate_after(demo, 3)
    try:
        episode = demo.episode
        for _ in range(3):
            demo.step()
        assert demo.all_done and all(p.done for p in demo.frame().panes)
        assert [p.tally.episodes for p in demo.panes] == [1, 1]
        # The last frame holds a moment, then every pane resets from the next seed.
        for _ in range(demo.hold_ticks):
            demo.step()
            assert demo.all_done and demo.seed_index == 0
        demo.step()
        assert demo.seed_index == 1 and demo.seed == 1 and demo.episode == episode + 1
        assert [p.index for p in demo.panes] == [0, 0] and not demo.all_done
        same_start(*demo.panes)
        left = demo.frame().panes[0]
        assert left.episodes == 1 and left.wins == 0
        demo.next_episode()
        demo.next_episode()
        assert demo.seed_index == 0  # the seed list loops
    finally:
        truncate_after(demo, 200)


def test_groups_by_networks_and_estimator():
    preset = load_preset(ROOT / "presets" / "cube-single-estimators.toml")
    d = DemoSession(small(preset, seeds=(0,)))
    try:
        calls = d.sample_calls
        d.step()
        # qgf, qgf_jacobian, ood: one call each; the best-of-N qgf pane joins qgf's.
        assert d.sample_calls - calls == 3
        assert len({p.index for p in d.panes}) == 1
        best = d.panes[3]
        assert best.executed == int(best.trace.q_final.argmax())
        assert [v.caption for v in d.frame().panes] == [
            "qgf  w = 0.03",
            "qgf_jacobian  w = 0.03",
            "ood  w = 0.03",
            "qgf  w = 0.03  best-of-N",
        ]
    finally:
        d.close()


def test_weight_grid_steps():
    assert step_weight(0.03, 1) == 0.05 and step_weight(0.03, -1) == 0.02
    assert step_weight(0.04, 1) == 0.05 and step_weight(0.04, -1) == 0.03
    assert step_weight(0.0, -1) == 0.0 and step_weight(1.0, 1) == 1.0
    assert step_weight(0.0, 1) == WEIGHT_GRID[1]


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_shipped_presets_load(path):
    preset = load_preset(path)
    assert preset.checkpoint is not None and (preset.checkpoint / "config.json").exists()
    assert 1 <= len(preset.panes) <= 4 and preset.live is not None


def test_every_shipped_checkpoint_has_a_preset():
    shipped = {p.name for p in (ROOT / "checkpoints").iterdir() if (p / "config.json").exists()}
    covered = {load_preset(p).checkpoint.name for p in PRESETS}
    assert shipped <= covered


BAD = [
    ("speed = 'fast'\n[[pane]]\nweight = 0", "'speed'"),
    ("[[pane]]\nweight = -0.1", r"'pane\[0\].weight'"),
    ("[[pane]]\nweight = 0\n[[pane]]\nestimator = 'magic'", r"'pane\[1\].estimator'.*magic"),
    ("[[pane]]\nweight = 0\ncolour = 'red'", r"'pane\[0\].colour'"),
    ("seeds = []\n[[pane]]\nweight = 0", "'seeds'"),
    ("camera = 'drone'\n[[pane]]\nweight = 0", "'camera'"),
    ("steps = 0\n[[pane]]\nweight = 0", "'steps'"),
    ("zoom = 2\n[[pane]]\nweight = 0", "'zoom'"),
    ("seeds = [0]", "'pane'"),
    ("[[pane]]\n" * 5, "'pane'.*1 to 4"),
    ("[[pane]]\nlive = true\n[[pane]]\nlive = true", "'pane'.*one pane"),
    ("[[pane]]\nlive = 'yes'", r"'pane\[0\].live'"),
    ("checkpoint = 'nowhere'\n[[pane]]\nweight = 0", "'checkpoint'.*nowhere"),
    ("[[pane]]\ncheckpoint = '../checkpoints/scene-task2'", r"'pane\[0\].checkpoint'.*same env"),
    ("[[pane]\nweight = 0", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m for _, m in BAD])
def test_a_bad_preset_is_refused_naming_the_field(tmp_path, text, message):
    (tmp_path / "presets").mkdir()
    path = tmp_path / "presets" / "bad.toml"
    path.write_text(f"checkpoint = '{ROOT / 'checkpoints' / 'cube-single-task2'}'\n" + text)
    if text.startswith("checkpoint"):
        path.write_text(text)
    if "scene-task2" in text:
        path.write_text(text.replace("../checkpoints", str(ROOT / "checkpoints")))
    with pytest.raises(PresetError, match=message):
        load_preset(path)


def test_a_missing_preset_file_is_refused(tmp_path):
    with pytest.raises(PresetError, match="cannot read"):
        load_preset(tmp_path / "none.toml")


def test_pane_caption():
    assert PaneSpec(weight=0).caption() == "unguided  w = 0"
    assert PaneSpec(weight=0.1, estimator="ood", pick_best=True).caption() == (
        "ood  w = 0.1  best-of-N"
    )
    assert PaneSpec(label="mine").caption() == "mine"


def test_debugger_session_is_at_the_live_panes_state(demo):
    demo.reset(0)
    for _ in range(3):
        demo.step()
    demo.set_weight(0.1)
    demo.step()
    demo.step()
    live = demo.live
    session = demo.debugger_session()
    try:
        # The episode replayed by the debugger's rule, the presenter's change at its step,
        # and the pane's exact state at the current one.
        assert session.step_index == live.index == 5
        np.testing.assert_array_equal(session.current.obs, live.obs)
        assert [r.settings.weight for r in session.history] == [0.03] * 3 + [0.1] * 2
        assert session.settings.weight == 0.1 and session.settings.seed == demo.seed
        assert torch.equal(session.current.sample.noise, live.noise)
        executed = session.current.sample.executed
        np.testing.assert_allclose(
            session.current.sample.guided.final[executed].numpy(), live.chunk.reshape(-1),
            atol=1e-5,
        )  # fmt: skip
    finally:
        session.close()
        demo.set_weight(0.03)
