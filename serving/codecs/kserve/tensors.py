"""KServe v2 tensors, whatever the wire: datatypes, declared headers and the raw (binary) form.

Shared by the REST codec (:mod:`rnnkit_serving.codecs.kserve.rest`, JSON and the binary tensor
extension) and the gRPC codec (:mod:`rnnkit_serving.codecs.kserve.grpc`, ``raw_input_contents``). Raw
tensors are row-major little-endian (``BYTES``: each element a 4-byte little-endian length and its
bytes). A raw tensor's declared shape is checked against the element budget and against its byte
count before any array is built (:func:`decode_raw`), so a request never allocates more than it sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rnnkit_serving.core.signature import ElementBudget, TensorSpec
from rnnkit_serving.errors import invalid_argument

# rnnkit.json dtype -> KServe v2 datatype
DATATYPES: dict[str, str] = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "str": "BYTES",
}
# KServe v2 datatype -> the numpy dtype of its raw (binary) form: little-endian, row-major
RAW_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
# every KServe v2 datatype (those without a raw form here last), in the protocol's order
KNOWN_DATATYPES = (*RAW_DTYPES, "BYTES", "BF16")


def _datatype(spec: TensorSpec) -> str:
    return DATATYPES[spec.dtype]


def tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": _datatype(spec), "shape": [-1 if d is None else d for d in spec.shape]}


def check_header(name: str, shape: Any, datatype: Any, spec: TensorSpec) -> list[int]:
    """A tensor's declared shape and datatype against the model's input; the shape as ints."""
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise invalid_argument(f"input '{name}': 'shape' must be a list of non-negative integers; received {shape!r}")
    if datatype not in KNOWN_DATATYPES:
        raise invalid_argument(
            f"input '{name}': unknown datatype {datatype!r}; expected one of {list(KNOWN_DATATYPES)}"
        )
    expected = _datatype(spec)
    if datatype != expected:
        raise invalid_argument(f"input '{name}': datatype {datatype}, the model expects {expected}")
    return [int(d) for d in shape]


def declared_count(name: str, shape: Sequence[int], budget: ElementBudget | None = None) -> int:
    """The number of elements `shape` declares, taken from the request's element `budget`
    (``None``: only the rank and axis caps) before anything is allocated for it."""
    return (budget or ElementBudget(None)).take(name, shape)


def decode_raw(
    name: str, datatype: str, shape: Sequence[int], raw: bytes | memoryview, budget: ElementBudget | None = None
) -> np.ndarray:
    """A raw (binary) tensor -> an array of `shape`. The declared size is checked against the
    element budget and against ``len(raw)`` before the array is built."""
    count = declared_count(name, shape, budget)
    if datatype == "BYTES":
        if count * 4 > len(raw):
            raise invalid_argument(
                f"input '{name}': shape {list(shape)} of BYTES needs at least {count * 4} bytes of raw data "
                f"(a 4-byte length per element), received {len(raw)}"
            )
        values: list[bytes] = []
        offset = 0
        for _ in range(count):
            if offset + 4 > len(raw):
                raise invalid_argument(f"input '{name}': raw BYTES data ends inside an element's 4-byte length")
            size = int.from_bytes(raw[offset : offset + 4], "little")
            offset += 4
            if offset + size > len(raw):
                raise invalid_argument(
                    f"input '{name}': raw BYTES element {len(values)} declares {size} bytes, {len(raw) - offset} remain"
                )
            values.append(bytes(raw[offset : offset + size]))
            offset += size
        if offset != len(raw):
            raise invalid_argument(
                f"input '{name}': {len(raw) - offset} bytes of raw data left after {count} BYTES elements"
            )
        array = np.empty(count, dtype=object)
        array[:] = values
        return array.reshape(shape)
    dtype = RAW_DTYPES.get(datatype)
    if dtype is None:
        raise invalid_argument(f"input '{name}': datatype {datatype} has no raw form here")
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise invalid_argument(
            f"input '{name}': shape {list(shape)} of {datatype} needs {expected} bytes of raw data, received {len(raw)}"
        )
    # a read-only view of the request's bytes: nothing downstream writes into inputs (ONNX Runtime reads
    # them in place), so the 26 KB of a 100x64 sequence are not copied again (they are not copied at all
    # from a REST body: `raw` is a memoryview into it)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def encode_raw(array: np.ndarray) -> bytes:
    """An array -> its raw (binary) form: row-major little-endian; BYTES length-prefixed."""
    if array.dtype.kind in "OUS":
        parts = []
        for value in array.reshape(-1):
            data = value if isinstance(value, bytes) else str(value).encode("utf-8")
            parts.append(len(data).to_bytes(4, "little") + data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=RAW_DTYPES[datatype_of(array)]).tobytes()


_BY_DTYPE: dict[np.dtype[Any], str] = {}  # filled on first use: np.dtype.name is a slow property (~5 us)


def datatype_of(array: np.ndarray) -> str:
    """The KServe v2 datatype of an output array."""
    known = _BY_DTYPE.get(array.dtype)
    if known is not None:
        return known
    if array.dtype.kind in "OUS":
        return "BYTES"
    name = array.dtype.name
    if name not in DATATYPES:
        raise invalid_argument(f"output dtype {name} has no KServe v2 datatype")
    if len(_BY_DTYPE) < 64:  # dtypes are few, but a bound costs nothing
        _BY_DTYPE[array.dtype] = DATATYPES[name]
    return DATATYPES[name]
