"""Writing output files atomically, one way for every tool.

``atomic_write(path, write)`` has ``write`` fill a temporary file beside ``path``
(``.<name>.<random>.tmp<suffix>``, so a writer that goes by the extension, like matplotlib,
still sees it), flushes it to disk, gives it the permissions a plain ``open()`` would
(``0666 & ~umask``: ``mkstemp``'s private 0600 would otherwise leak into the output), and
renames it onto ``path``. A crash leaves either the old file or the new one, never half of
one; on any error the temporary file is removed and ``path`` is left as it was.

Videos (``core.video``) stream to ffmpeg and keep their own policy for interrupted files;
checkpoint directories (``core.checkpoints``) are swapped as a whole.

A hostile file system (a read-only mount, a full disk, no permission) is one ``OutputError``
naming the path and the reason. ``check_output_dir`` finds what can be known before any work
starts: it writes one byte to a probe file, which a read-only mount, a directory the user
cannot write (root included: a permission check alone would pass for root) and a full disk
all refuse. A disk that fills up during the work fails at the write itself, and
``atomic_write`` then removes its temporary file: never a partial file under a final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


class OutputError(OSError):
    """An output cannot be written (read-only, no space left, no permission); the message is
    one line naming the path and the reason."""


# safetensors reports a failed write as its own error, with the OS error number in the text.
_OS_ERROR_NUMBER = re.compile(r"\(os error (\d+)\)")


def write_failure(path: str | os.PathLike, error: BaseException) -> OutputError | None:
    """``error`` as an ``OutputError`` naming ``path`` when the system refused a write (an
    ``OSError``, or a writer's error that carries an OS error number, as safetensors'
    does); None for any other error, which is a bug or bad data rather than the disk."""
    if isinstance(error, OutputError):
        return error
    if isinstance(error, OSError) and error.errno is not None:
        number = error.errno
    else:
        found = _OS_ERROR_NUMBER.search(str(error))
        if found is None:
            return None
        number = int(found.group(1))
    failure = OutputError(f"cannot write {path}: {os.strerror(number).lower()}")
    failure.errno = number
    return failure


def check_output_dir(directory: str | os.PathLike) -> Path:
    """Make ``directory`` (and its parents) if missing and prove that files can be written
    there, by writing and removing a one-byte probe file. Returns the directory; on failure
    the directories it made are removed again.

    Raises:
        OutputError: naming the directory and the reason (read-only file system, no space
            left on device, permission denied, not a directory).
    """
    directory = Path(directory).expanduser()
    made = [p for p in (directory, *directory.parents) if not p.exists()]  # deepest first
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".qgf-probe-", dir=directory)
        try:
            os.write(fd, b"\0")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        for p in made:
            with contextlib.suppress(OSError):
                p.rmdir()
        failure = write_failure(directory, e)
        if failure is None:
            raise
        raise failure from None
    return directory


def default_mode() -> int:
    """The permissions a new file gets from ``open()`` under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then move it onto ``path``
    (the parent directory is made when missing; what ``write`` returns is ignored). Returns
    ``path``.

    Raises:
        OutputError: the file system refused (read-only, full, no permission).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent
        )
    except OSError as e:
        raise (write_failure(path, e) or e) from None
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        failure = write_failure(path, e)
        if failure is None:
            raise
        raise failure from e
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
