"""core.files: one atomic write for every output file."""

import json
import os
from pathlib import Path

import pytest

from core.files import atomic_write, default_mode, write_json


def test_writes_with_open_permissions_and_leaves_nothing_else(tmp_path: Path) -> None:
    seen = []

    def write(tmp: Path) -> None:
        seen.append(tmp)
        tmp.write_text("hello")

    out = atomic_write(tmp_path / "sub" / "a.png", write)
    assert out.read_text() == "hello"
    # The temporary name keeps the extension (matplotlib picks the format from it).
    assert seen[0].suffix == ".png" and seen[0].parent == out.parent
    assert out.stat().st_mode & 0o777 == default_mode()  # not mkstemp's private 0600
    assert os.listdir(out.parent) == ["a.png"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = write_json(tmp_path / "r.json", {"a": 1})

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, fail)
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["r.json"]
