"""JSON bodies before and around the codecs: their nesting depth, measured on the bytes, the fast parser and
writer, and the C path for numeric tensors that both JSON codecs (TF Serving's and KServe's) take.

Parsers recurse per nesting level: Python's ``json`` raises RecursionError around depth 1000 and
orjson refuses beyond 1024, and the codecs walk the parsed value recursively too. A body nested
deeper than :data:`MAX_JSON_DEPTH` (Triton's limit) is refused first, by a scan of its bytes.

The scan is linear in the body and runs in numpy (a fixed number of vector passes, no Python
loop per byte and no regular expression, which backtracks on crafted strings): a quote opens or
closes a string unless an odd run of backslashes precedes it, and brackets count only outside
strings. For valid JSON the depth is exact; for invalid JSON any answer is harmless, since the
parser refuses the body afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from rnnkit_serving.core.signature import numpy_dtype

# orjson parses request bodies ~4-5x faster than the standard library (the `serve` extra installs it); it refuses
# NaN/Infinity tokens and integers beyond 64 bits, which the codecs then leave to `json` (same objects otherwise)
fast_loads: Callable[[bytes], Any] | None
# and writes numpy arrays in C (float32 as the shortest text that reads back as the same float32)
fast_dumps: Callable[[Any], bytes] | None
try:
    from orjson import OPT_SERIALIZE_NUMPY
    from orjson import dumps as _orjson_dumps
    from orjson import loads as fast_loads

    def fast_dumps(value: Any) -> bytes:
        return _orjson_dumps(value, option=OPT_SERIALIZE_NUMPY)

except ImportError:  # pragma: no cover - optional
    fast_loads = fast_dumps = None

# pysimdjson parses in C and copies numeric arrays straight into a buffer (no Python float per value): the codecs'
# numeric parses (kserve.rest.parse_numeric_body, tfs.json_tensor.parse_numeric_json) use it when it is installed
simdjson: Any
try:
    import simdjson
except ImportError:  # pragma: no cover - optional: the general parses alone
    simdjson = None
EXACT_INTEGERS = float(1 << 53)  # below it every integer is a double exactly: doubles and Python ints agree


def simd_fields(obj: Any) -> list[tuple[str, Any]] | None:
    """A pysimdjson object's (key, value) pairs, values left as proxies (its ``items()`` converts them all);
    None when a key repeats: ``obj[key]`` reads the first, the general parses keep the last."""
    keys = list(obj.keys())
    if len(set(keys)) != len(keys):
        return None
    return [(key, obj[key]) for key in keys]


def simd_plain(value: Any) -> Any:
    """A pysimdjson value as Python objects."""
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value


MAX_JSON_DEPTH = 100  # arrays and objects inside each other, as Triton counts them
_STEP = np.zeros(256, np.int8)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_OTHER_BYTES = bytes(b for b in range(256) if b not in b'[]{}"')
_OPEN = ord("{")  # == ord("[") | 0x20, and no other byte ORs to it
_T, _F = ord("t"), ord("f")
_FEW_STARTS = 64  # beyond this many candidate first letters, a substring search is cheaper
_SMALL = 4096  # below this many bytes the plain byte searches beat numpy's fixed cost (a binary body's header)


def _escaped(data: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """For each index in `positions`: whether an odd run of backslashes ends just before it."""
    is_backslash = data == _BACKSLASH
    index = np.arange(data.size, dtype=np.int64)
    # the last index at or before i that is not a backslash (-1 if none)
    last_other = np.maximum.accumulate(np.where(is_backslash, -1, index))
    before = positions - 1
    run = np.where(before >= 0, before - last_other[np.maximum(before, 0)], 0)
    return (run & 1).astype(bool)


def _depth(data: np.ndarray, escapes: bool) -> int:
    steps = _STEP.take(data)
    brackets = np.flatnonzero(steps)
    if not brackets.size:
        return 0
    quotes = np.flatnonzero(data == _QUOTE)
    if quotes.size:
        if escapes:
            quotes = quotes[~_escaped(data, quotes)]
        # a bracket is inside a string when an odd number of (unescaped) quotes precede it
        brackets = brackets[(np.searchsorted(quotes, brackets) & 1) == 0]
    if not brackets.size:
        return 0
    return max(0, int(np.cumsum(steps[brackets], dtype=np.int64).max()))


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays/objects in `body` (brackets inside strings do not count)."""
    if b"\\" in body:  # escapes: a quote's meaning depends on the bytes right before it
        return _depth(np.frombuffer(body, np.uint8), escapes=True)
    # otherwise only brackets and quotes matter, in order: bytes.translate drops the rest in one C pass
    # (a numeric body keeps a few hundred bytes of its hundred thousand)
    return _depth(np.frombuffer(body.translate(None, _OTHER_BYTES), np.uint8), escapes=False)


def exceeds_depth(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether `body` nests deeper than `limit`: nearly free for bodies with fewer opening brackets than that
    (one vector pass: ``[`` and ``{`` differ only in the 0x20 bit; ~6x faster than two ``bytes.count``)."""
    if len(body) < _SMALL:
        if body.count(b"[") + body.count(b"{") <= limit:
            return False
    elif np.count_nonzero((np.frombuffer(body, np.uint8) | 0x20) == _OPEN) <= limit:
        return False
    return json_depth(body) > limit


def holds_no_bools(json_text: bytes) -> bool:
    """Whether a JSON text holds no true/false literal (a string that spells one only costs the fast path).

    One vector pass per literal finds the bytes that could start one (a numeric body has a handful of ``t``
    and ``f``, in its keys), and each is compared in place; a text with many of them is searched by
    ``bytes.__contains__`` instead, so a crafted body costs no Python step per byte. ~5x faster than two
    substring searches on a 132 KB body of numbers."""
    if len(json_text) < _SMALL:
        return b"true" not in json_text and b"false" not in json_text
    data = np.frombuffer(json_text, np.uint8)
    for first, word in ((_T, b"true"), (_F, b"false")):
        starts = np.flatnonzero(data == first)
        if starts.size > _FEW_STARTS:
            if word in json_text:
                return False
        elif any(json_text.startswith(word, i) for i in starts.tolist()):
            return False
    return True


def numbers_in_c(value: Any, dtype: str) -> np.ndarray | None:
    """`value` (nested lists of JSON numbers) as an array of the numeric `dtype` (a numpy name), in its own
    nesting's shape, converted by numpy in C with no Python step per value; None when anything in it needs a
    codec's checked path (a string, null, a ragged list, a float for an integer input, an integer out of range
    or too large to be an exact double), which then refuses it with its own message or builds the same array.
    Only for a body that :func:`holds_no_bools`: numpy reads a bool among numbers as 1 or 0."""
    try:
        raw = np.array(value)
    except (ValueError, OverflowError, TypeError):  # ragged nesting, integers beyond 64 bits
        return None
    if raw.size == 0:
        return None
    target = numpy_dtype(dtype)
    kind = raw.dtype.kind
    if np.dtype(target).kind in "iu":
        info = np.iinfo(target)
        if kind not in "iu" or raw.min() < info.min or raw.max() > info.max:
            return None
        return raw.astype(target, copy=False)
    if kind == "f" or (kind in "iu" and np.abs(raw).max() <= 1 << 53):  # integers are exact doubles
        with np.errstate(over="ignore"):  # a float beyond the dtype becomes inf: the non-finite check refuses it
            return raw.astype(target, copy=False)
    return None
