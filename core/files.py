"""Writing output files atomically, one way for every tool.

``atomic_write(path, write)`` has ``write`` fill a temporary file beside ``path``
(``.<name>.<random>.tmp<suffix>``, so a writer that goes by the extension, like matplotlib,
still sees it), flushes it to disk, gives it the permissions a plain ``open()`` would
(``0666 & ~umask``: ``mkstemp``'s private 0600 would otherwise leak into the output), and
renames it onto ``path``. A crash leaves either the old file or the new one, never half of
one; on any error the temporary file is removed and ``path`` is left as it was.

Videos (``core.video``) stream to ffmpeg and keep their own policy for interrupted files;
checkpoint directories (``core.checkpoints``) are swapped as a whole.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def default_mode() -> int:
    """The permissions a new file gets from ``open()`` under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then move it onto ``path``
    (the parent directory is made when missing; what ``write`` returns is ignored). Returns
    ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """``data`` as indented JSON (and a final newline) at ``path``, atomically."""
    text = json.dumps(data, indent=2) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def read_json_object(path: str | os.PathLike, error: type[Exception] = ValueError) -> dict:
    """The JSON object in the file at ``path``; ``error`` (named with the path) when the file
    is not JSON, not UTF-8, nests deeper than the parser's recursion, or holds something
    other than an object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path} is not valid JSON: {e}") from e
    except RecursionError as e:
        raise error(f"{path} is not valid JSON: it nests too deeply") from e
    if not isinstance(data, dict):
        raise error(f"{path} does not hold a JSON object")
    return data
