"""The binary form of a search, both ways: ``application/octet-stream`` bodies.

JSON spends a bulk search's time turning floats into text and back, on both ends; a frame
carries the arrays as they lie in memory:

    magic   4 bytes: b"VSQ1" (a search request) or b"VSR1" (its answer)
    size    uint32, little-endian: the length of the header
    header  a UTF-8 JSON object, with "shape": [rows, columns] of the arrays that follow
    arrays  little-endian, row-major, nothing between them

A request's header holds the options of the JSON body (``k``, ``params``, ``filter``,
``min_sequence``...; not ``vectors``, ``ids`` or ``texts``) and ``"shape": [nq, d]``; its
array is the (nq, d) float32 queries. An answer's header holds the JSON answer without
``ids`` and ``scores`` (``coverage``, ``index_version``, ``metadata``...) and
``"shape": [nq, k]``; its arrays are the (nq, k) int64 ids (-1: no result) and the (nq, k)
float32 scores (NaN: no result). A request asks for a binary answer with
``Accept: application/octet-stream``; errors are JSON whatever was asked.

Example::

    body = encode(REQUEST, {"k": 10}, queries)          # queries: (nq, d) float32
    header, (xq,) = decode(body, REQUEST, [np.float32])
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

MEDIA_TYPE = "application/octet-stream"
REQUEST, ANSWER = b"VSQ1", b"VSR1"
_SIZE = struct.Struct("<I")
_PREFIX = len(REQUEST) + _SIZE.size


class FrameError(ValueError):
    """A body that is not a well-formed frame of the kind expected."""


def encode(magic: bytes, header: dict[str, Any], *arrays: np.ndarray) -> bytes:
    """A frame of ``header`` and ``arrays`` (each 2-d, all of the same shape, which the
    header records), little-endian."""
    shape = list(arrays[0].shape)
    if any(a.ndim != 2 or list(a.shape) != shape for a in arrays):
        raise ValueError(f"frame arrays must be 2-d of one shape, got {[a.shape for a in arrays]}")
    head = json.dumps({**header, "shape": shape}, allow_nan=False).encode()
    parts = [magic, _SIZE.pack(len(head)), head]
    parts += [np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes() for a in arrays]
    return b"".join(parts)


def decode(
    body: bytes, magic: bytes, dtypes: list[type[np.generic]]
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The header (without ``shape``) and the arrays of a frame, one per dtype, in order.

    Raises:
        FrameError: another magic, a truncated body, a header that is not a JSON object
            with a valid ``shape``, or arrays of another size than the shape says.
    """
    if body[: len(magic)] != magic:
        raise FrameError(f"not a {magic.decode()} frame (it starts with {bytes(body[:4])!r})")
    if len(body) < _PREFIX:
        raise FrameError("the frame ends before its header size")
    (size,) = _SIZE.unpack_from(body, len(magic))
    if len(body) < _PREFIX + size:
        raise FrameError(f"the frame ends inside its header ({size} bytes announced)")
    try:
        header = json.loads(body[_PREFIX : _PREFIX + size])
    except (ValueError, UnicodeDecodeError) as exc:
        raise FrameError(f"the frame's header is not JSON: {exc}") from None
    except RecursionError:
        raise FrameError("the frame's header is nested too deeply") from None
    if not isinstance(header, dict):
        raise FrameError("the frame's header must be a JSON object")
    shape = header.pop("shape", None)
    ok = isinstance(shape, list) and len(shape) == 2
    if not ok or not all(type(n) is int and n > 0 for n in shape):
        raise FrameError(
            f"the frame's header needs shape [rows, columns] of positive integers, got {shape!r}"
        )
    rows, cols = shape
    itemsizes = [np.dtype(t).itemsize for t in dtypes]
    want = _PREFIX + size + rows * cols * sum(itemsizes)
    if len(body) != want:
        raise FrameError(
            f"the frame holds {len(body)} bytes; its shape {shape} of "
            f"{', '.join(np.dtype(t).name for t in dtypes)} needs {want}"
        )
    arrays, at = [], _PREFIX + size
    for t, itemsize in zip(dtypes, itemsizes, strict=True):
        n = rows * cols
        a = np.frombuffer(body, dtype=np.dtype(t).newbyteorder("<"), count=n, offset=at)
        arrays.append(a.astype(t).reshape(rows, cols))  # a writable copy, native order
        at += n * itemsize
    return header, arrays
