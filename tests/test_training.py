import csv
import json

import numpy as np
import pytest
import torch

from core.checkpoints import load_checkpoint, load_dataset_sample, read_config
from core.guidance import guided_sample
from core.training import (
    Learner,
    TrainConfig,
    chunk_transitions,
    env_task,
    expectile_loss,
    train,
)


def toy_dataset(n_traj: int = 4, length: int = 50, obs_dim: int = 6, seed: int = 0) -> dict:
    """Trajectories in OGBench's regular layout; the task is solved (mask 0) at step 30."""
    rng = np.random.default_rng(seed)
    n = n_traj * length
    obs = rng.normal(size=(n + n_traj, obs_dim)).astype(np.float32)
    keep = np.ones(n + n_traj, bool)
    keep[length :: length + 1] = False  # each trajectory's final state has no action
    next_keep = np.roll(keep, 1)
    next_keep[0] = False
    solved = np.tile(np.arange(length) >= 30, n_traj)
    terminals = np.tile(np.arange(length) == length - 1, n_traj).astype(np.float32)
    return {
        "observations": obs[keep],
        "actions": rng.uniform(-1.2, 1.2, (n, 5)).astype(np.float32),
        "next_observations": obs[next_keep],
        "rewards": solved.astype(np.float32) - 1.0,
        "masks": 1.0 - solved.astype(np.float32),
        "terminals": terminals,
    }


def read_log(checkpoint) -> list[dict]:
    with open(checkpoint / "train_log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_env_task():
    assert env_task("cube-single-play-singletask-task2-v0") == ("cube-single-play-v0", 2)
    assert env_task("scene-play-singletask-task5-v0") == ("scene-play-v0", 5)
    assert env_task("cube-single-play-v0") == ("cube-single-play-v0", None)


def test_chunks_stay_in_one_trajectory_and_sum_discounted_rewards():
    # Two trajectories of 4 rows; the task is solved at row 2 of the first one.
    ds = {
        "observations": np.arange(8, dtype=np.float32)[:, None],
        "actions": np.tile(np.array([[2.0, -2.0, 0.5, 0.0, 0.0]], np.float32), (8, 1)),
        "next_observations": np.arange(1, 9, dtype=np.float32)[:, None] + 100,
        "rewards": np.array([-1, -1, 0, -1, -1, -1, -1, -1], np.float32),
        "masks": np.array([1, 1, 0, 1, 1, 1, 1, 1], np.float32),
        "terminals": np.array([0, 0, 0, 1, 0, 0, 0, 1], np.float32),
    }
    g = 0.5
    data = chunk_transitions(ds, horizon=3, discount=g, action_clip=0.9)
    # Valid starts: 0, 1 (first trajectory), 4, 5 (second); 2, 3, 6, 7 would cross an end.
    assert data.observations[:, 0].tolist() == [0, 1, 4, 5]
    assert data.next_observations[:, 0].tolist() == [103, 104, 107, 108]
    assert data.actions.shape == (4, 15) and data.actions.abs().max() == pytest.approx(0.9)
    # Start 0: rewards -1, -1, 0 and the task is solved at row 2 (mask 0): no bootstrap.
    # Start 1: -1 + g * 0, then row 2's mask stops the sum.
    expected_r = [-1 - g, -1 + 0.0, -1 - g - g**2, -1 - g - g**2]
    expected_m = [0.0, 0.0, g**3, g**3]
    assert data.rewards.tolist() == pytest.approx(expected_r)
    assert data.bootstrap.tolist() == pytest.approx(expected_m)
    one = chunk_transitions(ds, horizon=1, discount=g, action_clip=1.0)
    assert len(one) == 8 and one.rewards.tolist() == ds["rewards"].tolist()
    assert one.bootstrap.tolist() == pytest.approx((g * ds["masks"]).tolist())


def test_expectile_loss_is_asymmetric():
    diff = torch.tensor([2.0, -2.0])
    assert expectile_loss(diff, 0.9).tolist() == pytest.approx([3.6, 0.4])


def test_config_rejects_unknown_settings():
    with pytest.raises(ValueError, match="unknown training settings: gamma"):
        TrainConfig.from_dict({"gamma": 0.9})
    assert TrainConfig.from_dict({"hidden": [8, 8]}).hidden == (8, 8)


def test_learner_losses_are_namespaced_and_target_moves_slowly():
    config = TrainConfig(hidden=(16, 16), tau=0.1)
    data = chunk_transitions(toy_dataset(), 1, config.discount, config.action_clip)
    learner = Learner(config, obs_dim=6, action_dim=5)
    g = torch.Generator().manual_seed(0)
    before = [p.clone() for p in learner.target_critic.parameters()]
    info = learner.update(data.sample(32, g), g)
    assert set(info) >= {"flow/loss", "value/loss", "critic/loss", "critic/q_mean"}
    after = list(learner.target_critic.parameters())
    online = list(learner.critic.parameters())
    for b, a, o in zip(before, after, online, strict=True):
        assert torch.allclose(a, 0.9 * b + 0.1 * o, atol=1e-6)
    assert all(not p.requires_grad for p in learner.target_critic.parameters())


def test_tiny_train_saves_reloads_samples_and_resumes(tmp_path):
    torch.set_num_threads(1)
    ds = toy_dataset()
    out, logs = tmp_path / "ck", tmp_path / "logs"
    config = TrainConfig(
        hidden=(32, 32), steps=200, batch_size=64, log_every=50, save_every=100, eval_every=0
    )
    result = train(config, ds, out, log_dir=logs, progress=False, data_sha256="abc")
    assert result.steps == 200 and result.steps_per_s > 0
    rows = read_log(out)
    assert [int(r["step"]) for r in rows] == [50, 100, 150, 200]
    # Flow matching learns something even in 200 steps: the loss goes down.
    assert float(rows[-1]["flow/loss"]) < float(rows[0]["flow/loss"])

    policy, critic, ck = load_checkpoint(out, expect_env=config.env)
    assert ck.training_steps == 200 and ck.obs_dim == 6 and ck.horizon == 1
    assert ck.data_fingerprint["file_sha256"] == "abc"
    assert ck.data_fingerprint["transitions"] == 200
    trace = guided_sample(policy, critic, torch.randn(3, 6), "qgf", weight=0.05, steps=10)
    assert trace.actions.shape == (3, 5) and torch.isfinite(trace.actions).all()
    assert load_dataset_sample(out).observations.shape == (200, 6)

    # Resuming continues from step 200 with the saved optimizer and logs.
    config.steps = 250
    resumed = train(config, ds, out, log_dir=logs, progress=False, data_sha256="abc")
    assert resumed.steps == 250 and read_config(out).training_steps == 250
    rows = read_log(out)
    assert [int(r["step"]) for r in rows] == [50, 100, 150, 200, 250]

    # Other data in the same directory is not silently mixed in.
    with pytest.raises(ValueError, match="trained on other data"):
        train(config, toy_dataset(seed=1), out, log_dir=logs, progress=False)


def test_chunked_training_reloads_with_chunk_sized_actions(tmp_path):
    torch.set_num_threads(1)
    config = TrainConfig(
        hidden=(16,), steps=20, batch_size=16, horizon=3, log_every=10, eval_every=0
    )
    train(config, toy_dataset(), tmp_path / "ck", log_dir=tmp_path / "logs", progress=False)
    policy, critic, ck = load_checkpoint(tmp_path / "ck")
    assert ck.horizon == 3 and policy.action_dim == 15
    trace = guided_sample(policy, critic, torch.randn(2, 6), "qgf", weight=0.1)
    assert trace.actions.shape == (2, 15)


@pytest.mark.slow
def test_train_and_eval_commands_on_a_generated_dataset(tmp_path, capsys):
    from core.cli import main
    from core.data import GenerationConfig, generate_dataset

    gen = GenerationConfig("cube-single-play-v0", episodes=2, val_episodes=1, max_episode_steps=40)
    generate_dataset(gen, tmp_path / "data", workers=1, progress=False)
    data = tmp_path / "data" / "cube-single-play-v0.npz"
    out = tmp_path / "ck"
    common = ["--data", str(data), "--out", str(out), "--threads", "1", "--no-progress"]
    args = ["train", *common, "--steps", "30", "--hidden", "16,16", "--log-every", "10"]
    assert main([*args, "--eval-every", "0", "--log-dir", str(tmp_path / "logs")]) == 0
    policy, critic, config = load_checkpoint(out, expect_env="cube-single-play-singletask-task2-v0")
    assert config.training_steps == 30 and config.obs_dim == 28 and config.hidden == [16, 16]
    assert len(config.data_fingerprint["file_sha256"]) == 64
    assert config.data_fingerprint["transitions"] == 78  # 2 x 40 rows, last of each dropped
    assert load_dataset_sample(out).actions.shape == (78, 5)
    evaluation = ["eval", str(out), "--weights", "0,0.1", "--episodes", "2", "--envs", "2"]
    assert main([*evaluation, "--max-episode-steps", "5", "--no-progress"]) == 0
    assert "qgf" in capsys.readouterr().out
    assert (out / "eval.json").is_file() and (out / "eval.png").is_file()
    load_checkpoint(out)  # eval.json and eval.png are not hashed parts: still valid


def test_a_failing_periodic_evaluation_is_recorded_and_training_goes_on(tmp_path):
    torch.set_num_threads(1)
    calls = []

    def broken(policy, critic, step):
        calls.append(step)
        raise NameError("name 'helper' is not defined")

    config = TrainConfig(hidden=(16,), steps=20, batch_size=16, log_every=10, eval_every=10)
    out = tmp_path / "ck"
    result = train(
        config, toy_dataset(), out, log_dir=tmp_path / "logs", progress=False, evaluate=broken
    )
    assert result.steps == 20 and calls == [10, 20]
    evals = json.loads((out / "train_eval.json").read_text())
    assert evals == [
        {"step": 10, "error": "NameError: name 'helper' is not defined"},
        {"step": 20, "error": "NameError: name 'helper' is not defined"},
    ]


def _steps(path) -> list[int]:
    with open(path, newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def test_resume_is_bit_equal_and_the_live_log_has_each_step_once(tmp_path):
    """A run stopped after its last save (the steps after it lost, as a kill loses them)
    resumes to the weights and optimizer state of an uninterrupted run, and the live log
    holds each logged step once: the rows of the lost steps are dropped, not repeated."""
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    ds = toy_dataset()
    config = TrainConfig(
        hidden=(8,), steps=40, batch_size=16, log_every=10, save_every=20, eval_every=0
    )
    whole = tmp_path / "whole"
    train(config, ds, whole, log_dir=tmp_path / "whole-logs", progress=False)
    out, logs = tmp_path / "ck", tmp_path / "logs"
    config.steps = 20
    train(config, ds, out, log_dir=logs, progress=False)
    with open(logs / "log.csv", "a") as f:  # a row the killed run logged after its save
        f.write("30\n")
    config.steps = 40
    train(config, ds, out, log_dir=logs, progress=False)
    assert _steps(logs / "log.csv") == [10, 20, 30, 40] == _steps(out / "train_log.csv")
    for name in ("weights.safetensors", "optimizer.safetensors"):
        a, b = load_file(whole / name), load_file(out / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
