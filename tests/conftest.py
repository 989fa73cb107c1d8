"""Shared test setup.

Torch runs on one CPU thread in tests. On the project's 2-core machines, shared with data
generation and training, two intra-op threads made small-tensor tests 20-400x slower (each
parallel region waits for a core that another process holds; measured on
tests/test_guidance.py: 0.18 s with one thread, 3.7-72 s with two), and no test depends on
the thread count.

``MUJOCO_GL`` defaults to ``egl`` here, before any test module imports mujoco (which reads it
once, at import), so test modules import normally; a caller's own choice is kept.
"""

import os

import torch

os.environ.setdefault("MUJOCO_GL", "egl")

torch.set_num_threads(1)
