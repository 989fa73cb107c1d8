"""The examples in examples/ run as the README says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.checkpoints import load_agent

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bring_your_own_writes_a_checkpoint_that_acts_the_same(tmp_path):
    out = tmp_path / "my-agent"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "bring_your_own.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "same actions to 0.0e+00" in result.stdout
    agent = load_agent(out)
    assert not agent.critic.has_value and agent.config.activation == "gelu_tanh"
