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
from collections.abc import Sequence
from typing import Any

import numpy as np

from rnnkit_serving.codecs.json_depth import MAX_JSON_DEPTH, exceeds_depth, fast_loads
from rnnkit_serving.core.signature import DATA_TYPES, ElementBudget, TensorSpec, numpy_dtype
from rnnkit_serving.errors import Code, ServingError, invalid_argument

# numpy dtype name -> TensorFlow's short type name, as TF Serving's messages print it (DT_FLOAT -> "float")
TF_TYPE_NAMES = {dtype: wire_name.removeprefix("DT_").lower() for dtype, (wire_name, _) in DATA_TYPES.items()}
_UNSUPPORTED = ("float16",)
_NUMERIC = frozenset(("float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"))


# ----------------------------------------------------------------------------------- decoding


def parse_json(body: bytes) -> Any:
    """The request body as JSON (NaN/Infinity tokens allowed, as RapidJSON is configured in TFS);
    bodies nested deeper than ``MAX_JSON_DEPTH`` are refused before parsing."""
    if not body.strip():
        raise invalid_argument("JSON Parse error: The document is empty")
    if exceeds_depth(body):
        raise invalid_argument(f"JSON Parse error: nesting depth exceeds {MAX_JSON_DEPTH}")
    if fast_loads is not None:
        try:
            return fast_loads(body)
        except ValueError:  # NaN/Infinity tokens, huge integers, errors: the standard parser decides
            pass
    try:
        return json.loads(body)
    except UnicodeDecodeError as error:
        raise invalid_argument(f"JSON Parse error: Invalid encoding in string. at offset: {error.start}") from None
    except json.JSONDecodeError as error:
        raise invalid_argument(f"JSON Parse error: {error.msg} at offset: {error.pos}") from None
    except (ValueError, RecursionError) as error:  # e.g. an integer of more than 4300 digits
        raise invalid_argument(f"JSON Parse error: {error}") from None


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
    """`value` (nested lists of JSON numbers, already sized by the budget) as an array of `dtype`, built
    by numpy in C with no per-element Python; None when anything in it needs the checked path, which then
    refuses it with TF Serving's message or builds the same array. Only called when the body holds no JSON
    true/false: numpy would read a bool among numbers as 1 or 0, where TF Serving refuses it."""
    if dtype not in _NUMERIC or not shape:
        return None
    try:
        raw = np.array(value)
    except (ValueError, OverflowError, TypeError):  # ragged nesting, integers beyond 64 bits
        return None
    if raw.shape != tuple(shape) or raw.size == 0:  # a list where a number belongs (or the reverse)
        return None
    kind = raw.dtype.kind
    if dtype.startswith(("int", "uint")):
        info = np.iinfo(numpy_dtype(dtype))
        if kind not in "iu" or raw.min() < info.min or raw.max() > info.max:  # a float, or out of range
            return None
        return raw.astype(numpy_dtype(dtype), copy=False)
    if kind == "f" or (kind in "iu" and np.abs(raw).max() <= 1 << 53):  # integers are exact doubles
        with np.errstate(over="ignore"):  # a float beyond the dtype becomes inf: the non-finite check refuses it
            return raw.astype(numpy_dtype(dtype), copy=False)
    return None


def decode_tensor(
    value: Any, spec: TensorSpec, budget: ElementBudget | None = None, numbers_only: bool = False
) -> np.ndarray:
    """One JSON value (scalar or nested lists) -> an array of `spec`'s dtype; its shape (that of the
    first element at each level) is taken from `budget` before the values are checked or copied.
    `numbers_only` says the body holds no JSON true/false, which lets numeric data skip the per-value checks."""
    if numbers_only and spec.dtype in _NUMERIC:
        shape = _shape_of(value)
        (budget or ElementBudget(None)).take(spec.name, shape)
        fast = _numbers_in_c(value, shape, spec.dtype)
        if fast is not None:
            return fast
        return _to_array(value, _checked_shape(value, spec), spec.dtype)
    return _to_array(value, _checked_shape(value, spec, budget), spec.dtype)


def decode_rows(
    items: list[Any], spec: TensorSpec, budget: ElementBudget | None = None, numbers_only: bool = False
) -> np.ndarray:
    """Rows of one input (``instances``) -> one array; all rows together are taken from `budget`
    (as many rows as the first one's shape) before any row is checked. With `numbers_only` (the body holds
    no JSON true/false) rows of numbers that all have the first row's shape are converted in C."""
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


def encode_tensor(array: np.ndarray, name: str = "") -> str:
    """One array -> JSON text, nested lists with TF Serving's number formatting."""
    return nest(element_strings(np.asarray(array), name), array.shape)
