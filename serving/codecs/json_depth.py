"""JSON bodies before and around the codecs: their nesting depth, measured on the bytes, the fast parser and
writer, and the C path for numeric tensors that both JSON codecs (TF Serving's and KServe's) take.

Parsers recurse per nesting level: Python's ``json`` raises RecursionError around depth 1000 and
orjson refuses beyond 1024, and the codecs walk the parsed value recursively too. A body nested
deeper than :data:`MAX_JSON_DEPTH` (Triton's limit) is refused first, by a scan of its bytes.

The scan is linear in the body and runs in numpy (a fixed number of vector passes per chunk of
:data:`_CHUNK` bytes, no Python loop per byte and no regular expression, which backtracks on crafted
strings): a quote opens or closes a string unless an odd run of backslashes precedes it, and brackets
count only outside strings. The chunks carry the depth, the quote parity and a trailing run of
backslashes across their boundaries, so the answer is the one of a single pass while the scan's
memory stays a few MiB whatever the body (one pass over a whole 15 MiB body took ~30x the body).
For valid JSON the depth is exact; for invalid JSON any answer is harmless, since the parser refuses
the body afterwards.

The byte scans (this one, :func:`holds_no_bools`, the count of ``[``) read the body as UTF-8, the
only encoding RFC 8259 allows between systems: :func:`utf8_problem` refuses anything else before them
(Python's ``json.loads(bytes)`` would guess UTF-16/32, whose bytes those scans misread).
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable, Iterable, Iterator
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


# the most keys of an object whose values the fast parses look up (TF Serving's named inputs may have one per input
# of the model, if more): the protocols' objects have a few. pysimdjson finds a key by a linear scan of its object,
# so looking up every key of an n-key object costs n**2 (20 000 keys: ~0.9 s); an object with more keys goes to the
# general parse, linear. At 32 the lookups cost less per byte than the fast path's other Python steps per key.
FAST_FIELDS = 32


def simd_fields(obj: Any, most: int = FAST_FIELDS) -> list[tuple[str, Any]] | None:
    """A pysimdjson object's (key, value) pairs, values left as proxies (its ``items()`` converts them all);
    None when a key repeats (``obj[key]`` reads the first, the general parses keep the last) or when the object
    has more than `most` keys (each lookup scans the keys: the general parse is linear in them)."""
    if len(obj) > most:  # pysimdjson's len: the count its tape keeps, no scan
        return None
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
# bytes per vector pass of the depth scan: its arrays take ~30 bytes per byte of a chunk (~2 MiB), whatever the body
_CHUNK = 1 << 16
# bytes per pass of the cheaper whole-body passes (the count of opening brackets, bytes.translate): ~2 bytes per byte
_PASS = 1 << 18


def _escapes(data: np.ndarray, quotes: np.ndarray, carried: int) -> tuple[np.ndarray, int]:
    """(for each index in `quotes`: whether an odd run of backslashes ends just before it, the run of backslashes
    that ends `data`), `carried` being the run that ended the chunks before `data`."""
    is_backslash = data == _BACKSLASH
    if not is_backslash.any():  # only a quote at the chunk's start can be escaped, by the run carried to it
        escaped = np.zeros(quotes.size, bool)
        if carried & 1 and quotes.size and quotes[0] == 0:
            escaped[0] = True
        return escaped, 0
    index = np.arange(data.size, dtype=np.int32)
    # the last index at or before i that is not a backslash (-1 if none in this chunk)
    last_other = np.maximum.accumulate(np.where(is_backslash, np.int32(-1), index))
    end = int(last_other[-1])
    trailing = data.size - 1 - end if end >= 0 else carried + data.size
    if not quotes.size:
        return np.zeros(0, bool), trailing
    before = quotes - 1
    last = np.where(before >= 0, last_other[np.maximum(before, 0)], -1)
    run = before - last + np.where(last < 0, carried, 0)  # a run that reaches the chunk's start goes on before it
    return (run & 1).astype(bool), trailing


def _depth(pieces: Iterable[np.ndarray], escapes: bool) -> int:
    """The deepest nesting in the concatenation of `pieces` (bytes as uint8), scanned :data:`_CHUNK` bytes at a
    time; `escapes`: whether backslashes may be among them (else only brackets and quotes are)."""
    best = depth = 0  # the deepest level so far, the level at the end of the chunks so far
    in_string = 0  # 1 when an odd number of (unescaped) quotes precede the chunk
    backslashes = 0  # the run of backslashes that ends the chunks so far
    for piece in pieces:
        for start in range(0, piece.size, _CHUNK):
            data = piece[start : start + _CHUNK] if piece.size > _CHUNK else piece
            steps = _STEP.take(data)
            brackets = np.flatnonzero(steps)
            quotes = np.flatnonzero(data == _QUOTE)
            if escapes:
                escaped, backslashes = _escapes(data, quotes, backslashes)
                quotes = quotes[~escaped]
            if brackets.size and (quotes.size or in_string):
                # a bracket is inside a string when the quotes before it, these and the earlier chunks', are odd
                brackets = brackets[(np.searchsorted(quotes, brackets) & 1) == in_string]
            if brackets.size:
                levels = np.cumsum(steps[brackets], dtype=np.int64)
                best = max(best, depth + int(levels.max()))
                depth += int(levels[-1])
            in_string ^= quotes.size & 1
    return best


def _translated(body: bytes) -> Iterator[np.ndarray]:
    """The brackets and quotes of `body`, in order, :data:`_PASS` bytes of it at a time."""
    if len(body) <= _PASS:  # no slice (a copy)
        yield np.frombuffer(body.translate(None, _OTHER_BYTES), np.uint8)
        return
    for start in range(0, len(body), _PASS):
        yield np.frombuffer(body[start : start + _PASS].translate(None, _OTHER_BYTES), np.uint8)


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays/objects in `body` (brackets inside strings do not count)."""
    if b"\\" in body:  # escapes: a quote's meaning depends on the bytes right before it
        return _depth((np.frombuffer(body, np.uint8),), escapes=True)
    # otherwise only brackets and quotes matter, in order: bytes.translate drops the rest in one C pass
    # (a numeric body keeps a few hundred bytes of its hundred thousand)
    return _depth(_translated(body), escapes=False)


def exceeds_depth(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether `body` nests deeper than `limit`: nearly free for bodies with fewer opening brackets than that
    (one vector pass: ``[`` and ``{`` differ only in the 0x20 bit; ~6x faster than two ``bytes.count``)."""
    if len(body) < _SMALL:
        if body.count(b"[") + body.count(b"{") <= limit:
            return False
    else:  # in passes (slices of the view, no copies): the temporary arrays stay small whatever the body
        data = np.frombuffer(body, np.uint8)
        opening = 0
        for start in range(0, data.size, _PASS):
            opening += np.count_nonzero((data[start : start + _PASS] | 0x20) == _OPEN)
            if opening > limit:
                break
        else:
            return False
    return json_depth(body) > limit


_SHOWN_BYTES = 8  # bytes of a refused body quoted in its message


def _not_utf8(body: bytes) -> tuple[int, str] | None:
    """(offset, reason) of the first bytes of `body` that are not UTF-8, or None; decoded strictly (an encoded
    surrogate or an overlong form is refused too), :data:`_PASS` bytes at a time (no str the size of the body:
    up to 4x its bytes), each pass starting where the last complete character of the one before ended."""
    view = memoryview(body)
    start, size = 0, max(_PASS, 4)  # a pass holds at least one whole character
    while start < len(body):
        end = start + size
        try:
            _, used = codecs.utf_8_decode(view[start:end], "strict", end >= len(body))
        except UnicodeDecodeError as error:
            return start + error.start, str(error.reason)
        start += used
    return None


def utf8_problem(body: bytes) -> str | None:
    """None when `body` is UTF-8 text holding no NUL byte; else what is wrong with it, for the 400.

    JSON exchanged between systems must be UTF-8 (RFC 8259, section 8.1) and every byte scan of this module
    assumes it. A NUL byte is never part of a JSON text (not whitespace, not allowed unescaped in a string),
    and it is what UTF-16 or UTF-32 text without a byte order mark looks like in bytes. A UTF-8 byte order
    mark is tolerated, as before (the RFC lets a parser ignore it, and clients such as .NET's and PowerShell's
    add one): pysimdjson and :func:`utf8_text` skip it. An ASCII body (a numeric one) costs two C passes."""
    found = None if body.isascii() else _not_utf8(body)
    if found is None:
        where = body.find(b"\x00")
        if where < 0:
            return None
        what = "a NUL byte"
    else:
        where, what = found
    shown = " ".join(f"0x{byte:02x}" for byte in body[where : where + _SHOWN_BYTES])
    more = "..." if len(body) > where + _SHOWN_BYTES else ""
    guess = json.detect_encoding(body)  # what json.loads(bytes) would have read it as
    looks = f", which looks like {guess.upper()}" if not guess.startswith("utf-8") else ""
    return (
        f"the request body is not UTF-8 JSON: {what} at offset {where} (received {shown}{more}{looks}); "
        "JSON bodies must be UTF-8"
    )


def utf8_text(body: bytes) -> str:
    """`body`, which :func:`utf8_problem` passed, as text for ``json.loads`` (without a UTF-8 byte order mark:
    ``json.loads`` of a str refuses one)."""
    return body.decode("utf-8-sig")


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
