"""TF Serving's JSON tensors <-> arrays, as pure functions: ``json_tensor.cc``'s rules.

Shapes are taken from the first element at each level, JSON types are checked against the
signature's dtype, ``{"b64": ...}`` carries bytes, and numbers print as TF Serving prints them
(``%g`` when it round-trips, else ``%.9g``/``%.17g``, always with ``.0`` or an exponent,
``NaN``/``Infinity``). Errors raise :class:`ServingError` with TF Serving's texts.
:mod:`rnnkit_serving.codecs.tfs.rest` builds the ``:predict`` request and reply forms on these.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rnnkit_serving.codecs.json_depth import (
    EXACT_INTEGERS,
    FAST_FIELDS,
    MAX_JSON_DEPTH,
    exceeds_depth,
    fast_loads,
    numbers_in_c,
    simd_fields,
    simd_plain,
    simdjson,
    utf8_problem,
    utf8_text,
)
from rnnkit_serving.core.signature import (
    DATA_TYPES,
    DEFAULT_SIGNATURE,
    ElementBudget,
    Signature,
    TensorSpec,
    numpy_dtype,
)
from rnnkit_serving.errors import Code, ServingError, invalid_argument

# numpy dtype name -> TensorFlow's short type name, as TF Serving's messages print it (DT_FLOAT -> "float")
TF_TYPE_NAMES = {dtype: wire_name.removeprefix("DT_").lower() for dtype, (wire_name, _) in DATA_TYPES.items()}
_UNSUPPORTED = ("float16",)
_NUMERIC = frozenset(("float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"))


# ----------------------------------------------------------------------------------- decoding


def parse_json(body: bytes) -> Any:
    """The request body as JSON (NaN/Infinity tokens allowed, as RapidJSON is configured in TFS); a body that is
    not UTF-8 (see :func:`~rnnkit_serving.codecs.json_depth.utf8_problem`; a UTF-8 byte order mark is skipped) and
    one nested deeper than ``MAX_JSON_DEPTH`` are refused before parsing, by byte scans that assume UTF-8."""
    if not body.strip():
        raise invalid_argument("JSON Parse error: The document is empty")
    problem = utf8_problem(body)
    if problem is not None:
        raise invalid_argument(f"JSON Parse error: {problem}")
    if exceeds_depth(body):
        raise invalid_argument(f"JSON Parse error: nesting depth exceeds {MAX_JSON_DEPTH}")
    if fast_loads is not None:
        try:
            return fast_loads(body)
        except ValueError:  # NaN/Infinity tokens, huge integers, errors: the standard parser decides
            pass
    try:
        return json.loads(utf8_text(body))  # a str: json.loads(bytes) would guess UTF-16/32
    except json.JSONDecodeError as error:
        raise invalid_argument(f"JSON Parse error: {error.msg} at offset: {error.pos}") from None
    except (ValueError, RecursionError) as error:  # e.g. an integer of more than 4300 digits
        raise invalid_argument(f"JSON Parse error: {error}") from None


_FLOATS = frozenset(("float32", "float64"))
_OPEN_LIST = ord("[")
# lists of fewer numbers than this, more than _MANY_LISTS of them, are left to numpy's conversion in C (numbers_in_c):
# checking each list's length would cost a Python step per few numbers
_FEW_PER_LIST, _MANY_LISTS = 8, 64


def parse_numeric_json(body: bytes, signatures: Mapping[str, Signature]) -> dict[str, Any] | None:
    """A ``:predict`` body whose float32/float64 tensors are parsed straight into arrays (a 100x64 row: ~0.2 ms,
    where orjson builds a Python float per value and numpy reads them back, ~0.45 ms), or None: the body is left
    to :func:`parse_json` and the checked path (anything unusual, and every error, goes there).

    Converted: the ``instances`` of a one-input signature, and ``inputs`` (the value, or each named value), when
    the input is float32/float64 and its value is a *regular* nesting of JSON numbers, all below 2**53 in
    magnitude: each list at each level as long as the first one there, with lists only above the last level and
    numbers only at it, which is exactly when ``numbers_in_c`` (the fast path of :func:`decode_tensor`) builds
    the same array from the parsed lists. pysimdjson checks the types of the values (its buffer refuses a string,
    null, true/false or an object); the lengths are checked level by level; a list hidden where a number belongs
    (``[1, [2]]`` reads as two numbers) is caught by counting the body's ``[`` against the lists accounted for.
    An object with a repeated key is left to :func:`parse_json`, which keeps the last value, and so is one of more
    than :data:`~rnnkit_serving.codecs.json_depth.FAST_FIELDS` keys (pysimdjson looks each key up by a scan)."""
    if simdjson is None or not body:
        return None
    try:
        root = simdjson.Parser().parse(body)  # refuses more than 1024 levels; deeper than 100 is checked below
        if not isinstance(root, simdjson.Object):
            return None
        fields = simd_fields(root)
        if fields is None:
            return None
        doc = dict(fields)
        name = doc.get("signature_name", DEFAULT_SIGNATURE)
        signature = signatures.get(name or DEFAULT_SIGNATURE) if isinstance(name, str) else None
        if signature is None or ("instances" in doc) == ("inputs" in doc):
            return None
        specs = signature.input_specs
        lists, converted = 0, 0  # every list of the body, accounted for; those turned into arrays
        out: dict[str, Any] = {}
        for key, value in fields:
            tensor = None
            if key in ("instances", "inputs") and len(specs) == 1:
                tensor = _regular(value, next(iter(specs.values())))
            if tensor is not None:
                out[key], count = tensor
                lists, converted = lists + count, converted + 1
                continue
            if key == "inputs" and isinstance(value, simdjson.Object):
                named = simd_fields(value, max(FAST_FIELDS, len(specs)))  # the model's inputs: as many keys
                if named is None:
                    return None
                out[key] = {}
                for input_name, item in named:
                    tensor = _regular(item, specs[input_name]) if input_name in specs else None
                    if tensor is not None:
                        out[key][input_name], count = tensor
                        converted += 1
                    else:
                        out[key][input_name] = simd_plain(item)
                        count = _lists(out[key][input_name])
                    lists += count
                continue
            out[key] = simd_plain(value)
            lists += _lists(out[key])
        if not converted or lists != np.count_nonzero(np.frombuffer(body, np.uint8) == _OPEN_LIST):
            return None
        # the nesting depth from the structure (what exceeds_depth measures on the bytes, which for a body of many
        # rows is a full scan: ~0.2 ms for 100 rows); deeper than the limit: parse_json refuses it with its message
        if 1 + max(map(_depth, out.values())) > MAX_JSON_DEPTH:
            return None
        return out
    # simdjson's errors (and a KeyError for a key holding \u0000, which it cannot look up): the general path decides
    except (ValueError, TypeError, RuntimeError, UnicodeError, KeyError):
        return None


def _regular(value: Any, spec: TensorSpec) -> tuple[np.ndarray, int] | None:
    """(the float64 array, the number of lists it had) when `value` is a regular nesting of numbers for a
    float input, else None."""
    if spec.dtype not in _FLOATS or not isinstance(value, simdjson.Array):
        return None
    shape: list[int] = []
    node = value
    while isinstance(node, simdjson.Array):
        if not len(node):
            return None
        shape.append(len(node))
        node = node[0]
    if shape[-1] < _FEW_PER_LIST and math.prod(shape[:-1]) > _MANY_LISTS:
        return None  # mostly lists of a few numbers: the walk below would be a Python step per number
    level, lists = [value], 1
    for size in shape[:-1]:  # every list above the last level: its length, and lists inside it only
        below = []
        for array in level:
            if len(array) != size:
                return None
            below.extend(array)  # a number here fails len() below, a string or object fails the buffer
        level = below
        lists += len(below)
    if any(len(array) != shape[-1] for array in level):
        return None
    values = np.frombuffer(value.as_buffer(of_type="d"), np.float64)
    if values.size != math.prod(shape) or (values.size and not np.abs(values).max() < EXACT_INTEGERS):
        return None
    return values.reshape(shape), lists


def _depth(value: Any) -> int:
    """JSON nesting depth of a value of :func:`parse_numeric_json`'s document (an array: its dimensions)."""
    if isinstance(value, np.ndarray):
        return value.ndim
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


def _lists(value: Any) -> int:
    """How many lists a JSON value held as Python objects has. A ``[`` inside a string is not counted: the body
    then holds more ``[`` than the lists accounted for, and goes to :func:`parse_json`."""
    if isinstance(value, list):
        return 1 + sum(_lists(item) for item in value)
    if isinstance(value, dict):
        return sum(_lists(item) for item in value.values())
    return 0


def dump(value: Any, limit: int = 200) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def is_named(value: Any) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def _type_error(value: Any, dtype: str) -> ServingError:
    return invalid_argument(
        f"JSON Value: {dump(value)} Type: {_json_type(value)} is not of expected type: {TF_TYPE_NAMES[dtype]}"
    )


def _scalar_checker(dtype: str) -> tuple[tuple[type, ...], Any]:
    """(Python types accepted without further checks, full check for one value)."""
    if dtype in ("float32", "float64"):
        exact: tuple[type, ...] = (float, int)

        def check(value: Any) -> None:
            if type(value) not in exact:
                raise _type_error(value, dtype)

        return exact, check
    if dtype == "bool":
        exact = (bool,)

        def check(value: Any) -> None:
            if type(value) is not bool:
                raise _type_error(value, dtype)

        return exact, check
    if dtype == "str":

        def check(value: Any) -> None:
            if isinstance(value, str):
                return
            if _is_b64(value) and isinstance(value["b64"], str):
                try:
                    base64.b64decode(value["b64"], validate=True)
                except (binascii.Error, ValueError):
                    raise invalid_argument(f"Unable to base64 decode: {dump(value['b64'])}") from None
                return
            raise _type_error(value, dtype)

        return (str,), check
    info = np.iinfo(numpy_dtype(dtype))

    def check_int(value: Any) -> None:
        if type(value) is not int or not info.min <= value <= info.max:
            raise _type_error(value, dtype)

    return (), check_int


def _shape_of(value: Any) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _check(value: Any, shape: Sequence[int], level: int, exact: frozenset[type], check: Any) -> None:
    if level == len(shape):
        if isinstance(value, list):
            raise invalid_argument(f"JSON Value: {dump(value)} found at incorrect level: {level + 1}")
        check(value)
        return
    if not isinstance(value, list):
        raise invalid_argument(
            f"JSON Value: {dump(value)} found at incorrect level: {level + 1}, expecting a list of size {shape[level]}"
        )
    if len(value) != shape[level]:
        raise invalid_argument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: {shape[level]}"
        )
    if level == len(shape) - 1:
        if exact.issuperset(map(type, value)):  # the common case, decided in C
            return
        for item in value:
            if type(item) not in exact:
                if isinstance(item, list):
                    raise invalid_argument(f"JSON Value: {dump(item)} found at incorrect level: {level + 2}")
                check(item)
        return
    for item in value:
        _check(item, shape, level + 1, exact, check)


def _decode_strings(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode_strings(v) for v in value]
    if isinstance(value, dict):
        return base64.b64decode(value["b64"])
    return value.encode("utf-8")


def _to_array(value: Any, shape: list[int], dtype: str) -> np.ndarray:
    if dtype == "str":
        array = np.empty(shape, dtype=object)
        decoded = _decode_strings(value)
        if shape:
            array[...] = decoded
        else:
            array[()] = decoded
        return array
    try:
        with np.errstate(over="ignore"):  # a float beyond the dtype becomes inf: the non-finite check refuses it
            return np.array(value, dtype=numpy_dtype(dtype))
    except OverflowError:  # an integer beyond float64 (ints are accepted for float inputs)
        raise invalid_argument(f"JSON Value: a number is out of the range of type: {TF_TYPE_NAMES[dtype]}") from None


def _checked_shape(value: Any, spec: TensorSpec, budget: ElementBudget | None = None) -> list[int]:
    if spec.dtype in _UNSUPPORTED:
        raise ServingError(
            Code.UNIMPLEMENTED, f"Conversion of JSON Value: {dump(value, 60)} to type: {TF_TYPE_NAMES[spec.dtype]}"
        )
    shape = _shape_of(value)
    (budget or ElementBudget(None)).take(spec.name, shape)
    exact, check = _scalar_checker(spec.dtype)
    _check(value, shape, 0, frozenset(exact), check)
    return shape


def _numbers_in_c(value: Any, shape: Sequence[int], dtype: str) -> np.ndarray | None:
    """:func:`~rnnkit_serving.codecs.json_depth.numbers_in_c` for a tensor whose nesting must have `shape`
    (that of the first element at each level, already taken from the budget): a list where a number belongs,
    or the reverse, leaves it to the checked path and TF Serving's message."""
    if dtype not in _NUMERIC or not shape:
        return None
    fast = numbers_in_c(value, dtype)
    return fast if fast is not None and fast.shape == tuple(shape) else None


def _from_numeric(value: np.ndarray, spec: TensorSpec, budget: ElementBudget | None) -> np.ndarray:
    (budget or ElementBudget(None)).take(spec.name, list(value.shape))
    with np.errstate(over="ignore"):  # a float beyond float32 becomes inf: the non-finite check refuses it
        return value.astype(numpy_dtype(spec.dtype))


def decode_tensor(
    value: Any, spec: TensorSpec, budget: ElementBudget | None = None, numbers_only: bool = False
) -> np.ndarray:
    """One JSON value (scalar or nested lists) -> an array of `spec`'s dtype; its shape (that of the
    first element at each level) is taken from `budget` before the values are checked or copied.
    `numbers_only` says the body holds no JSON true/false, which lets numeric data skip the per-value checks."""
    if isinstance(value, np.ndarray):  # parse_numeric_json's array: what the fast path below would build
        return _from_numeric(value, spec, budget)
    if numbers_only and spec.dtype in _NUMERIC:
        shape = _shape_of(value)
        (budget or ElementBudget(None)).take(spec.name, shape)
        fast = _numbers_in_c(value, shape, spec.dtype)
        if fast is not None:
            return fast
        return _to_array(value, _checked_shape(value, spec), spec.dtype)
    return _to_array(value, _checked_shape(value, spec, budget), spec.dtype)


def decode_rows(
    items: list[Any] | np.ndarray, spec: TensorSpec, budget: ElementBudget | None = None, numbers_only: bool = False
) -> np.ndarray:
    """Rows of one input (``instances``) -> one array; all rows together are taken from `budget`
    (as many rows as the first one's shape) before any row is checked. With `numbers_only` (the body holds
    no JSON true/false) rows of numbers that all have the first row's shape are converted in C."""
    if isinstance(items, np.ndarray):  # parse_numeric_json's array of every row
        return _from_numeric(items, spec, budget)
    shape = [len(items), *_shape_of(items[0] if items else None)]
    (budget or ElementBudget(None)).take(spec.name, shape)
    if numbers_only:
        fast = _numbers_in_c(items, shape, spec.dtype)
        if fast is not None:
            return fast
    first: list[int] | None = None
    for position, item in enumerate(items):
        try:
            shape = _checked_shape(item, spec)
            if first is None:
                first = shape
            elif shape != first:
                want, got = math.prod(first), math.prod(shape)
                detail = (
                    f"Expecting tensor size: {want} but got: {got}"
                    if want != got
                    else f"Expecting shape {first} but got: {shape}"
                )
                raise invalid_argument(detail)
        except ServingError as error:
            raise ServingError(
                error.code,
                f"Failed to process element: {position} of 'instances' list. Error: {error.code.name}: {error.message}",
            ) from None
    return _to_array(items, [len(items), *(first or [])], spec.dtype)


# ---------------------------------------------------------------------------------- encoding


def _float_strings(flat: np.ndarray) -> list[str]:
    values = flat.tolist()
    short = [f"{v:g}" for v in values]
    back = np.array(short, dtype=np.float64).astype(flat.dtype) if short else flat
    long_format = ".9g" if flat.dtype == np.float32 else ".17g"
    for index in np.flatnonzero((back != flat) | ~np.isfinite(flat)).tolist():
        value = values[index]
        if math.isnan(value):
            short[index] = "NaN"
        elif math.isinf(value):
            short[index] = "Infinity" if value > 0 else "-Infinity"
        else:
            short[index] = format(value, long_format)
    for index, text in enumerate(short):
        if "." not in text and "e" not in text and text[-1].isdigit():
            short[index] = text + ".0"
    return short


def element_strings(array: np.ndarray, name: str) -> list[str]:
    flat = array.reshape(-1)
    kind = array.dtype.kind
    if kind == "f":
        return _float_strings(flat if array.dtype in (np.float32, np.float64) else flat.astype(np.float32))
    if kind == "b":
        return ["true" if v else "false" for v in flat.tolist()]
    if kind in "iu":
        return [str(v) for v in flat.tolist()]
    out = []
    for value in flat.tolist():
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
        if name.endswith("_bytes"):
            out.append('{"b64": "' + base64.b64encode(raw).decode("ascii") + '"}')
        else:
            out.append(json.dumps(raw.decode("utf-8", errors="replace")))
    return out


def nest(items: list[str], shape: Sequence[int]) -> str:
    if not shape:
        return items[0]
    if 0 in shape:
        return json.dumps(np.empty(tuple(shape)).tolist())
    for dim in reversed(shape[1:]):
        items = ["[" + ",".join(items[i : i + dim]) + "]" for i in range(0, len(items), dim)]
    return "[" + ",".join(items) + "]"


# ------------------------------------------------------------- float32 text, column by column
# The same text as `_float_strings` + `nest` (a test compares them on a million values), written without
# a Python step per value: each value's digits are found by exact float64 arithmetic and the text is
# laid out as a byte matrix, one column per character role, whose empty cells are dropped at the end.
# 100 x 64 float32: 7.1 -> ~0.6 ms.

_SPLIT = 134217729.0  # 2**27 + 1: Veltkamp's split of a double into halves whose products are exact
_POW10 = np.array([10.0**k for k in range(23)])  # 10**0 .. 10**22 are exact doubles
# magnitudes the column writer takes (zero too): there every power of ten it scales by is exact and every
# scaled value is below 2**53; anything else (and NaN, infinities) takes the per-value writer
_LOW, _HIGH = 1e-13, 1e5
# below this many values the per-value writer is faster (the columns cost ~0.35 ms whatever the size; measured
# crossover ~400 values: 256 values 0.42 vs 0.29 ms, 512 values 0.51 vs 0.57 ms)
_COLUMNS_FROM = 400


def _rounding_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a*b - fl(a*b), exactly (Dekker's product; numpy has no fused multiply-add)."""
    product = a * b
    c = _SPLIT * a
    a_hi = c - (c - a)
    a_lo = a - a_hi
    c = _SPLIT * b
    b_hi = c - (c - b)
    b_lo = b - b_hi
    return ((a_hi * b_hi - product) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo


def _round_significant(a: np.ndarray, exp10: np.ndarray, precision: int) -> tuple[np.ndarray, np.ndarray]:
    """Positive `a` to `precision` significant decimal digits, correctly rounded with ties to even (as
    ``%.*g`` rounds): (S, E), S an integer-valued float64 with 10**(precision-1) <= S < 10**precision and
    a ~= S * 10**(E + 1 - precision). `exp10` is floor(log10(a)), possibly off by one."""
    low, high = 10.0 ** (precision - 1), 10.0**precision
    scaled = a * _POW10[precision - 1 - exp10]
    off = (scaled < low).astype(np.int64) - (scaled >= high)
    if off.any():  # log10 was off by one; at exactly low/high either exponent ends at the same (S, E) below
        exp10 = exp10 - off
        scaled = a * _POW10[precision - 1 - exp10]
    digits = np.floor(scaled)
    up = scaled - digits > 0.5  # fl(a * 10**k) keeps which side of a half the exact product lies on ...
    tie = np.flatnonzero(scaled - digits == 0.5)
    if tie.size:  # ... except exactly at one, where the product's rounding error decides
        error = _rounding_error(a[tie], _POW10[precision - 1 - exp10[tie]])
        up[tie] = (error > 0) | ((error == 0) & (digits[tie] % 2 == 1))
    digits += up
    carry = digits == high
    if carry.any():
        digits[carry] = low
        exp10 = exp10 + carry
    return digits, exp10


def _digit_columns(s: np.ndarray) -> np.ndarray:
    """The 9 decimal digits of integer-valued floats below 10**9, as ASCII columns (exact: s < 2**53)."""
    columns = np.empty((s.size, 9), np.uint8)
    for j in range(8, -1, -1):
        rest = np.floor(s / 10)
        columns[:, j] = s - 10 * rest + 48
        s = rest
    return columns


def _chars(mask: np.ndarray, char: str) -> np.ndarray:
    """`char` where `mask` holds, else 0 (an empty cell), as bytes."""
    return mask.view(np.uint8) * np.uint8(ord(char))


def _float32_json(array: np.ndarray) -> str | None:
    """TF Serving's JSON text of a float32 array (nested lists; ``%g`` when it reads back as the same
    float32, else ``%.9g``; '.0' added to integers), or None when a value needs the per-value writer."""
    flat = array.reshape(-1)
    n = flat.size
    wide = flat.astype(np.float64)
    a = np.abs(wide)
    zero = a == 0
    if not np.all(zero | ((a >= _LOW) & (a < _HIGH))):  # also false for NaN and infinities
        return None
    a[zero] = 1.0
    exp0 = np.floor(np.log10(a)).astype(np.int64)
    s6, e6 = _round_significant(a, exp0, 6)
    # "%g" reads back as the same float32? (strtod of S6e(E-5) is S6 / 10**(5-E), one correct rounding)
    short = ((s6 / _POW10[5 - e6]).astype(np.float32) == a.astype(np.float32)) | zero
    s9, e9 = _round_significant(a, exp0, 9)
    s = np.where(zero, 0.0, np.where(short, s6 * 1000, s9))
    exp10 = np.where(zero, 0, np.where(short, e6, e9))
    digits = _digit_columns(s)
    count = np.full(n, 9, np.int64)  # significant digits: 9 less the trailing zeros (zero itself: one)
    for k in range(1, 9):  # s / 10**k is an integer exactly when 10**k divides s (s < 10**9: no rounding hides a rest)
        quotient = s / _POW10[k]
        count -= quotient == np.floor(quotient)
    scientific = (exp10 < -4) | (exp10 >= np.where(short, 6, 9))
    whole = ~scientific & (exp10 >= 0)  # fixed notation, digits before the point
    fraction = ~scientific & (exp10 < 0)  # fixed notation, "0." first
    written = np.where(whole, np.maximum(count, exp10 + 1), count)
    dot_after = np.where(whole & (count > exp10 + 1), exp10, np.where(scientific & (count > 1), 0, -1))
    ndim = array.ndim
    # columns: sign | "0." | up to 3 zeros | 9 x (digit, '.') | ".0" | "e-NN" | closing, ',', opening brackets
    out = np.zeros((n, 31 + 2 * ndim), np.uint8)
    out[:, 0] = _chars(np.signbit(flat), "-")
    out[:, 1] = _chars(fraction, "0")
    out[:, 2] = _chars(fraction, ".")
    zeros_after_point = np.where(fraction, -exp10 - 1, 0)
    for z in range(3):
        out[:, 3 + z] = _chars(zeros_after_point > z, "0")
    out[:, 6:24:2] = digits * (np.arange(9) < written[:, None])
    dotted = np.flatnonzero(dot_after >= 0)
    out[dotted, 7 + 2 * dot_after[dotted]] = ord(".")
    point_zero = whole & (count <= exp10 + 1)
    out[:, 24] = _chars(point_zero, ".")
    out[:, 25] = _chars(point_zero, "0")
    magnitude = np.abs(exp10).astype(np.uint8)
    out[:, 26] = _chars(scientific, "e")
    out[:, 27] = scientific * np.where(exp10 < 0, np.uint8(ord("-")), np.uint8(ord("+")))
    out[:, 28] = scientific * (48 + magnitude // 10)
    out[:, 29] = scientific * (48 + magnitude % 10)
    ends = np.zeros(n, np.int64)  # how many lists close after each value
    index, block = np.arange(1, n + 1), 1
    for size in reversed(array.shape):
        block *= size
        ends += index % block == 0
    more = index != n
    for c in range(ndim):
        out[:, 30 + c] = _chars(ends > c, "]")
        out[:, 31 + ndim + c] = _chars(more & (ends > c), "[")
    out[:, 30 + ndim] = _chars(more, ",")
    cells = out.reshape(-1)
    return "[" * ndim + cells[cells != 0].tobytes().decode("ascii")


def encode_tensor(array: np.ndarray, name: str = "") -> str:
    """One array -> JSON text, nested lists with TF Serving's number formatting."""
    array = np.asarray(array)
    if array.dtype == np.float32 and array.ndim and array.size >= _COLUMNS_FROM:
        text = _float32_json(array)
        if text is not None:
            return text
    return nest(element_strings(array, name), array.shape)
