import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_config

from core.checkpoints import (
    CONFIG_FILE,
    SAMPLE_FILE,
    WEIGHTS_FILE,
    CheckpointConfig,
    CheckpointError,
    DatasetSample,
    load_agent,
    load_checkpoint,
    load_dataset_sample,
    load_state,
    optimizer_from_tensors,
    optimizer_to_tensors,
    read_config,
    save_checkpoint,
    sha256_file,
)
from core.guidance import guided_sample

ENV = "cube-single-play-singletask-task2-v0"


def make_config(**overrides) -> CheckpointConfig:
    values = dict(
        obs_dim=7,
        flow_steps=10,
        training_steps=3,
        data_fingerprint={"arrays_sha256": "x"},
    )
    values.update(overrides)
    return tiny_config(**values)


def write(path: Path, optimizer: bool = False, **overrides):
    torch.manual_seed(0)
    config = make_config(**overrides)
    policy, critic, target = config.build_policy(), config.build_critic(), config.build_critic()
    sample = DatasetSample(
        np.random.rand(11, config.obs_dim).astype(np.float32),
        np.random.rand(11, config.action_dim).astype(np.float32),
    )
    opt_state = None
    if optimizer:
        opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
        policy(torch.zeros(2, 7), torch.zeros(2, config.chunk_dim), torch.zeros(2)).sum().backward()
        opt.step()
        opt_state = optimizer_to_tensors(opt)
    save_checkpoint(path, config, policy, critic, target, sample, optimizer=opt_state)
    return policy, critic, target, opt_state


def test_round_trip_plugs_into_guided_sample_with_the_target_critic(tmp_path):
    ck = tmp_path / "ck"
    policy, critic, target, _ = write(ck)
    p2, q2, config = load_checkpoint(ck, "cpu", expect_env=ENV)
    obs, a = torch.randn(4, 7), torch.randn(4, 5)
    t = torch.full((4,), 0.3)
    assert torch.equal(p2(obs, a, t), policy(obs, a, t))
    assert torch.equal(q2(obs, a), target(obs, a))  # the target critic, min over heads
    assert not torch.equal(q2(obs, a), critic(obs, a))
    assert config.env == ENV and config.obs_dim == 7 and config.training_steps == 3
    assert config.code_version and config.files[WEIGHTS_FILE] == sha256_file(ck / WEIGHTS_FILE)
    trace = guided_sample(p2, q2, obs, estimator="qgf", weight=0.1, steps=4)
    assert trace.actions.shape == (4, 5) and trace.grad.abs().sum() > 0
    sample = load_dataset_sample(ck)
    assert sample.observations.shape == (11, 7) and sample.actions.shape == (11, 5)


def test_chunked_checkpoint_has_chunk_sized_actions(tmp_path):
    write(tmp_path / "ck", horizon=3)
    policy, critic, config = load_checkpoint(tmp_path / "ck")
    assert policy.action_dim == 15 == config.chunk_dim and critic.action_dim == 15


def test_optimizer_state_round_trips(tmp_path):
    ck = tmp_path / "ck"
    _, _, _, (tensors, meta) = write(ck, optimizer=True)
    state = load_state(ck)
    restored = optimizer_from_tensors(state.optimizer, state.optimizer_meta)
    original = optimizer_from_tensors(tensors, meta)
    assert restored["param_groups"] == json.loads(json.dumps(original["param_groups"]))
    for idx, values in original["state"].items():
        for key, value in values.items():
            assert torch.equal(torch.as_tensor(restored["state"][idx][key]), value)


def test_other_env_is_refused(tmp_path):
    write(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="scene-play-singletask-task2-v0"):
        load_checkpoint(tmp_path / "ck", expect_env="scene-play-singletask-task2-v0")


def test_other_shapes_are_refused(tmp_path):
    ck = tmp_path / "ck"
    write(ck)
    data = json.loads((ck / CONFIG_FILE).read_text())
    data["obs_dim"] = 9
    (ck / CONFIG_FILE).write_text(json.dumps(data))
    with pytest.raises(
        CheckpointError, match=r"policy.mlp.net.0.weight has shape \[16, 28\].*needs \[16, 30\]"
    ):
        load_checkpoint(ck)


def test_truncated_weights_are_refused(tmp_path):
    ck = tmp_path / "ck"
    write(ck)
    data = (ck / WEIGHTS_FILE).read_bytes()
    (ck / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="weights.safetensors.*sha256"):
        load_checkpoint(ck)


def test_tampered_sample_is_refused(tmp_path):
    ck = tmp_path / "ck"
    write(ck)
    data = bytearray((ck / SAMPLE_FILE).read_bytes())
    data[-1] ^= 0xFF
    (ck / SAMPLE_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="dataset_sample.safetensors.*sha256"):
        load_checkpoint(ck)


@pytest.mark.parametrize("part", [WEIGHTS_FILE, SAMPLE_FILE, CONFIG_FILE])
def test_missing_part_is_named(tmp_path, part):
    ck = tmp_path / "ck"
    write(ck)
    (ck / part).unlink()
    with pytest.raises(CheckpointError, match=f"missing {part}"):
        load_checkpoint(ck)


def test_not_a_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        load_checkpoint(tmp_path / "nowhere")


def test_malformed_config_is_refused(tmp_path):
    ck = tmp_path / "ck"
    write(ck)
    (ck / CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_config(ck)
    (ck / CONFIG_FILE).write_text(json.dumps({"format_version": 1, "env": ENV}))
    with pytest.raises(CheckpointError, match="lacks required keys: .*obs_dim"):
        read_config(ck)


class _Bomb:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_file_dropped_in_is_refused_without_running(tmp_path):
    ck = tmp_path / "ck"
    write(ck)
    marker = tmp_path / "ran"
    (ck / WEIGHTS_FILE).unlink()
    (ck / "weights.pt").write_bytes(pickle.dumps(_Bomb(marker)))
    with pytest.raises(CheckpointError, match=r"pickle-based file\(s\) weights.pt"):
        load_checkpoint(ck)
    assert not marker.exists()


def test_pickle_disguised_as_safetensors_is_refused_without_running(tmp_path):
    ck = tmp_path / "ck"
    write(ck)
    marker = tmp_path / "ran"
    (ck / WEIGHTS_FILE).write_bytes(pickle.dumps(_Bomb(marker)))
    # Even with the recorded sha256 updated to match, the file is not safetensors.
    data = json.loads((ck / CONFIG_FILE).read_text())
    data["files"][WEIGHTS_FILE] = sha256_file(ck / WEIGHTS_FILE)
    (ck / CONFIG_FILE).write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(ck)
    assert not marker.exists()
    # The control: the same bytes really would run when unpickled.
    pickle.loads((ck / WEIGHTS_FILE).read_bytes())
    assert marker.exists()


def test_save_replaces_atomically_and_leaves_no_temporaries(tmp_path):
    ck = tmp_path / "ck"
    write(ck, training_steps=1)
    write(ck, training_steps=2)
    assert read_config(ck).training_steps == 2
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_failed_save_keeps_the_old_checkpoint(tmp_path):
    ck = tmp_path / "ck"
    write(ck, training_steps=1)
    config = make_config(training_steps=2)
    p, c = config.build_policy(), config.build_critic()
    sample = DatasetSample(np.zeros((1, 7), np.float32), np.zeros((1, 5), np.float32))
    with pytest.raises(ValueError, match="plain, free file name"):
        save_checkpoint(ck, config, p, c, c, sample, extras={"../escape": b""})
    assert read_config(ck).training_steps == 1
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_refuses_to_replace_a_directory_that_is_not_a_checkpoint(tmp_path):
    target = tmp_path / "important"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    config = make_config()
    p, c = config.build_policy(), config.build_critic()
    sample = DatasetSample(np.zeros((1, 7), np.float32), np.zeros((1, 5), np.float32))
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        save_checkpoint(target, config, p, c, c, sample)
    assert (target / "notes.txt").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["important"]


def test_format_1_checkpoints_read_with_the_recipe_they_had(tmp_path):
    """The shipped checkpoints are format 1: they read, with every later switch at the
    value format 1 meant; saved again, a checkpoint is format 2."""
    shipped = Path(__file__).resolve().parent.parent / "checkpoints" / "cube-single-task2"
    raw = json.loads((shipped / "config.json").read_text())
    assert raw["format_version"] == 1 and "norm_position" not in raw
    agent = load_agent(shipped)
    c = agent.config
    assert (c.activation, c.norm_position, c.layer_norm_eps) == ("gelu", "after_activation", 1e-5)
    assert c.time_embedding == "sinusoidal" and c.policy_norm_last_hidden
    assert c.value_network and not c.onestep_policy and c.q_aggregate == "min"
    assert agent.critic.has_value and agent.onestep is None and agent.critic.aggregate == "min"
    write(tmp_path / "ck")
    assert read_config(tmp_path / "ck").format_version == 2


def test_format_2_switches_round_trip_with_a_one_step_policy(tmp_path):
    overrides = dict(
        activation="gelu_tanh",
        norm_position="before_activation",
        layer_norm_eps=1e-6,
        policy_norm_last_hidden=False,
        time_embedding="raw",
        time_dim=1,
        critic_hidden=[12, 12, 12],
        critic_layer_norm=True,
        layer_norm=False,
        value_network=False,
        onestep_policy=True,
        q_aggregate="mean",
        source={"format": "test"},
    )
    torch.manual_seed(0)
    config = make_config(**overrides)
    policy, critic, onestep = config.build_policy(), config.build_critic(), config.build_onestep()
    sample = DatasetSample(np.zeros((3, 7), np.float32), np.zeros((3, 5), np.float32))
    save_checkpoint(tmp_path / "ck", config, policy, critic, critic, sample, onestep=onestep)
    agent = load_agent(tmp_path / "ck")
    assert agent.config.source == {"format": "test"} and agent.critic.aggregate == "mean"
    assert not agent.critic.has_value and agent.policy.time_embedding == "raw"
    obs, a = torch.randn(4, 7), torch.randn(4, 5)
    t = torch.rand(4)
    with torch.no_grad():
        assert torch.equal(agent.policy(obs, a, t), policy(obs, a, t))
        assert torch.equal(agent.critic(obs, a), critic(obs, a))
        assert torch.equal(agent.onestep(obs, a), onestep(obs, a))
    with pytest.raises(ValueError, match="one-step"):
        save_checkpoint(tmp_path / "x", config, policy, critic, critic, sample)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("format_version", 3, "format_version 3"),
        ("activation", "tanh", "activation"),
        ("q_aggregate", "max", "q_aggregate"),
        ("hidden", [16, "x"], "hidden"),
        ("time_embedding", "raw", "raw time needs time_dim 1"),
    ],
)
def test_bad_config_fields_are_named(tmp_path, field, value, message):
    write(tmp_path / "ck")
    path = tmp_path / "ck" / "config.json"
    config = json.loads(path.read_text())
    config[field] = value
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        read_config(tmp_path / "ck")


def test_a_save_killed_between_its_renames_is_put_back(tmp_path):
    """Killed after moving the old checkpoint aside and before renaming the new one in: the
    complete new one is put back; incomplete leftovers are removed."""
    from core.checkpoints import recover_checkpoint

    ck = tmp_path / "ck"
    write(ck, training_steps=1)
    os.rename(ck, tmp_path / ".ck.old-a1")
    write(tmp_path / "new", training_steps=2)
    os.rename(tmp_path / "new", tmp_path / ".ck.tmp-b2")
    (tmp_path / ".ck.tmp-c3").mkdir()  # a save killed while writing: no config.json yet
    (tmp_path / ".other.tmp-d4").mkdir()  # another checkpoint's: left alone
    assert recover_checkpoint(ck)
    assert read_config(ck).training_steps == 2
    assert sorted(os.listdir(tmp_path)) == [".other.tmp-d4", "ck"]
    assert not recover_checkpoint(ck)  # nothing to do


def test_only_the_old_checkpoint_left_is_put_back(tmp_path):
    from core.checkpoints import recover_checkpoint

    write(tmp_path / "ck", training_steps=1)
    os.rename(tmp_path / "ck", tmp_path / ".ck.old-a1")
    assert recover_checkpoint(tmp_path / "ck")
    assert read_config(tmp_path / "ck").training_steps == 1


def test_ctrl_c_between_the_renames_comes_after_the_new_checkpoint_is_in(tmp_path, monkeypatch):
    """Ctrl-C right after the old checkpoint is moved aside is held until the swap is done:
    the interrupted save leaves the new checkpoint and nothing else."""
    import signal

    ck = tmp_path / "ck"
    write(ck, training_steps=1)
    real_rename = os.rename

    def rename(src, dst):
        real_rename(src, dst)
        if ".old-" in os.fspath(dst):
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(os, "rename", rename)
    # SIGINT as in a terminal, even where the test process inherited it ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            write(ck, training_steps=2)
    finally:
        signal.signal(signal.SIGINT, previous)
    monkeypatch.undo()
    assert read_config(ck).training_steps == 2
    assert sorted(os.listdir(tmp_path)) == ["ck"]
