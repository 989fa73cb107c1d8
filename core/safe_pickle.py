"""Reading the pickled parameter files of JAX agents without running anything in them.

A pickle is a program: unpickling may call any function it names. The files that JAX
codebases save with ``pickle.dump(flax.serialization.to_state_dict(agent))`` only ever name
array reconstructors, so this unpickler admits exactly those and refuses every other
global before anything is called:

=========================================  ================================================
global in the file                         what it becomes here
=========================================  ================================================
``jax._src.array._reconstruct_array``      a numpy array (no jax needed)
``numpy.core.multiarray._reconstruct``     ``numpy.ndarray`` only (no subclasses)
(also ``numpy._core...``)
``numpy.dtype``                            numeric and bool dtypes only
``numpy.core.multiarray.scalar``           a numpy scalar of such a dtype
``numpy.ndarray``                          itself, as the type argument of the above
``numpy.core.numeric._frombuffer``         a numpy array (protocol 5's in-band arrays)
``_codecs.encode``, ``builtins.bytes``      latin-1 bytes, and ``b""`` (protocol 2 writes
                                           bytes so)
``collections.OrderedDict``                ``dict``
=========================================  ================================================

Containers, strings and numbers need no global. Anything else (``os.system``,
``builtins.eval``, a flax or optax class...) raises ``UnsafePickleError`` naming it.

The whole file is read into memory first (its size is checked against a limit), so a
declared length larger than the file cannot make the reader allocate it: the stream simply
ends, which is reported as truncation.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

MAX_BYTES = 4 << 30  # 4 GiB: a 4 x 1024 QGF agent with optimizer state is ~0.2 GiB
# dtypes an array may have: numbers and bools; never objects, strings or structured records.
_DTYPE_KINDS = "biufc"


class UnsafePickleError(ValueError):
    """A pickle names something other than arrays and containers, or cannot be read."""


def _check_dtype(dtype: np.dtype) -> np.dtype:
    if dtype.kind not in _DTYPE_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise UnsafePickleError(f"refused array dtype {dtype!r}: only numeric arrays are admitted")
    return dtype


def _dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    if not isinstance(spec, str):
        raise UnsafePickleError(f"refused dtype spec {type(spec).__name__}: expected a string")
    try:
        dtype = np.dtype(spec)
    except TypeError as e:
        raise UnsafePickleError(f"refused dtype spec {spec!r}: {e}") from e
    return _check_dtype(dtype)


class _Array:
    """Stands for ``numpy.ndarray`` in the stream; building through it yields plain arrays."""


def _reconstruct(subtype: Any, shape: Any, dtype_char: Any) -> np.ndarray:
    if subtype is not _Array:
        raise UnsafePickleError(f"refused array subtype {subtype!r}: only numpy.ndarray")
    # An empty array whose state (shape, dtype, bytes) BUILD then sets; numpy checks there
    # that the bytes match the declared shape, so a huge declared shape fails without
    # allocating.
    return np.ndarray((0,), dtype=np.uint8)


def _scalar(dtype: Any, data: Any) -> Any:
    if not isinstance(dtype, np.dtype) or not isinstance(data, bytes):
        raise UnsafePickleError("refused numpy scalar: expected a dtype and bytes")
    _check_dtype(dtype)
    if len(data) != dtype.itemsize:
        raise UnsafePickleError(f"numpy scalar of {dtype} with {len(data)} bytes")
    return np.frombuffer(data, dtype=dtype)[0]


def _reconstruct_jax_array(fun: Any, args: Any, arr_state: Any, aval_state: Any) -> np.ndarray:
    # jax pickles an array as numpy's own reduction of its value plus abstract-value flags
    # (weak_type), which only matter to jax's type promotion.
    if fun is not _reconstruct or not isinstance(args, tuple):
        raise UnsafePickleError("refused jax array: not numpy's reconstruction")
    array = _reconstruct(*args)
    _set_array_state(array, arr_state)
    return array


def _set_array_state(array: np.ndarray, state: Any) -> None:
    if not (isinstance(state, tuple) and len(state) == 5):
        raise UnsafePickleError(
            "refused array state: expected (version, shape, dtype, order, data)"
        )
    _, shape, dtype, _, data = state
    if not isinstance(dtype, np.dtype):
        raise UnsafePickleError("refused array state: its dtype is not a dtype")
    _check_dtype(dtype)
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError("refused array state: data must be raw bytes")
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise UnsafePickleError(f"refused array state: bad shape {shape!r}")
    expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if expected != len(data):
        raise UnsafePickleError(
            f"array of shape {list(shape)} and dtype {dtype} needs {expected} bytes, "
            f"the file holds {len(data)}"
        )
    try:
        array.__setstate__(state)
    except (ValueError, TypeError) as e:
        raise UnsafePickleError(f"refused array state: {e}") from e


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    # Protocol 5 writes arrays as numpy's _frombuffer(bytes, dtype, shape, order).
    if not isinstance(dtype, np.dtype):
        raise UnsafePickleError("refused _frombuffer: its dtype is not a dtype")
    _check_dtype(dtype)
    if not isinstance(buffer, (bytes, bytearray, memoryview, pickle.PickleBuffer)):
        raise UnsafePickleError("refused _frombuffer: its data is not a buffer")
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise UnsafePickleError(f"refused _frombuffer: bad shape {shape!r}")
    data = bytes(memoryview(buffer))
    expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if expected != len(data):
        raise UnsafePickleError(
            f"array of shape {list(shape)} and dtype {dtype} needs {expected} bytes, "
            f"the file holds {len(data)}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if order == "F" else "C")


def _latin1(text: Any, encoding: Any = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("refused _codecs.encode other than of a string to latin-1")
    return text.encode("latin1")


def _bytes(*args: Any) -> bytes:
    # Protocol 2 writes b"" as bytes(); bytes(n) would allocate n bytes, so only that form.
    if args:
        raise UnsafePickleError("refused bytes(...) with arguments")
    return b""


_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_ADMITTED: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("jax._src.array", "_reconstruct_array"): _reconstruct_jax_array,
    ("numpy", "ndarray"): _Array,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1,
    ("__builtin__", "bytes"): _bytes,
    ("builtins", "bytes"): _bytes,
    ("collections", "OrderedDict"): dict,
    **{(m, "_reconstruct"): _reconstruct for m in _NUMPY_MODULES},
    **{(m, "scalar"): _scalar for m in _NUMPY_MODULES},
    **{(m, "_frombuffer"): _frombuffer for m in ("numpy.core.numeric", "numpy._core.numeric")},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = _ADMITTED.get((module, name))
        if found is None:
            raise UnsafePickleError(
                f"refused global {module}.{name}: this reader admits only arrays and containers"
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refused persistent reference: not a plain parameter file")


def _finish_arrays(obj: Any, max_depth: int = 64) -> Any:
    """Walk the loaded tree: numpy's BUILD set array states through ``__setstate__`` of an
    ``ndarray`` we made (fine), but a dtype built through the stream must be checked again
    after its state was set, and containers may not nest deeper than ``max_depth``."""
    stack = [(obj, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise UnsafePickleError(f"refused: containers nest deeper than {max_depth} levels")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
            for key in node:
                if not isinstance(key, (str, int)):
                    raise UnsafePickleError(f"refused dict key of type {type(key).__name__}")
        elif isinstance(node, (list, tuple)):
            stack.extend((v, depth + 1) for v in node)
        elif isinstance(node, np.ndarray):
            _check_dtype(node.dtype)
        elif isinstance(node, np.dtype):
            _check_dtype(node)
        elif not (node is None or isinstance(node, (bool, int, float, str, bytes, np.generic))):
            raise UnsafePickleError(f"refused object of type {type(node).__name__}")
    return obj


def loads(data: bytes) -> Any:
    """Unpickle ``data`` admitting only arrays and containers (see the module docstring).

    Raises:
        UnsafePickleError: a refused global, truncated or malformed data, or too deep.
    """
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError:
        raise
    except RecursionError as e:
        raise UnsafePickleError("refused: the pickle nests too deeply") from e
    except MemoryError as e:
        raise UnsafePickleError("refused: the pickle asks for more memory than it holds") from e
    except EOFError as e:
        raise UnsafePickleError("the pickle is truncated (it ends before its STOP)") from e
    except Exception as e:  # noqa: BLE001 - any failure of a malformed stream
        raise UnsafePickleError(f"the pickle is malformed ({type(e).__name__}: {e})") from e
    # Arrays of a dtype built through the stream are checked once more after BUILD.
    return _finish_arrays(obj)


def load(path: str | os.PathLike, max_bytes: int = MAX_BYTES) -> Any:
    """``loads`` of a file no bigger than ``max_bytes``."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise UnsafePickleError(f"{path} is {size} bytes, more than the {max_bytes} admitted")
    return loads(path.read_bytes())
