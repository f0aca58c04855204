"""KServe v2 / Open Inference Protocol REST JSON <-> arrays, as pure functions (no sockets).

Request: ``{"id", "parameters", "inputs": [{"name", "shape", "datatype", "data"}], "outputs": [{"name"}]}``
with row-major ``data`` (flat or nested); response: ``{"model_name", "model_version", "id",
"parameters", "outputs": [{"name", "shape", "datatype", "data"}]}``; errors ``{"error": "..."}``
(rendered by the front through :func:`rnnkit_serving.errors.wire_error`). Triton's sequence parameters
(``sequence_id``, ``sequence_start``, ``sequence_end``) travel in the request ``parameters``
(read by :mod:`rnnkit_serving.codecs.kserve.sequence`).

Binary tensor extension: with an ``Inference-Header-Content-Length: N`` header the body is N bytes
of JSON followed by the raw bytes of each input whose ``parameters`` carry ``binary_data_size``,
in the order of ``inputs``; outputs asked for with ``"parameters": {"binary_data": true}`` (or all,
with the request parameter ``binary_data_output``) are answered the same way, in the raw form of
:mod:`rnnkit_serving.codecs.kserve.tensors` (whose :func:`~rnnkit_serving.codecs.kserve.tensors.decode_raw`
checks a raw tensor's declared shape against the element budget and its byte count first).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rnnkit_serving.codecs.json_depth import (
    EXACT_INTEGERS,
    MAX_JSON_DEPTH,
    exceeds_depth,
    fast_dumps,
    fast_loads,
    numbers_in_c,
    simd_fields,
    simd_plain,
    simdjson,
    utf8_problem,
    utf8_text,
)
from rnnkit_serving.codecs.kserve.tensors import (
    check_header,
    datatype_of,
    declared_count,
    decode_raw,
    encode_raw,
    tensor_metadata,
)
from rnnkit_serving.core.identifiers import ascii_uint, shown
from rnnkit_serving.core.signature import DEFAULT_SIGNATURE, ElementBudget, Signature, TensorSpec, numpy_dtype
from rnnkit_serving.errors import invalid_argument

PLATFORMS = {"onnx": "onnxruntime_onnx", "tf": "tensorflow_savedmodel"}
SERVER_EXTENSIONS = ("sequence", "binary_tensor_data")
HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    parameters: dict[str, Any]
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None  # None: every output
    binary_outputs: tuple[str, ...] = ()  # outputs answered as raw bytes (the binary tensor extension)

    @property
    def signature_name(self) -> str:
        """KServe v2 has one signature per model: the default one."""
        return DEFAULT_SIGNATURE


def parse_body(body: bytes) -> Any:
    """The JSON of a request: UTF-8 only (see :func:`~rnnkit_serving.codecs.json_depth.utf8_problem`; a UTF-8
    byte order mark is skipped), checked before the byte scans that assume it (the depth here, the bools later)."""
    if not body.strip():
        raise invalid_argument("failed to parse the request JSON buffer: the document is empty")
    problem = utf8_problem(body)
    if problem is not None:
        raise invalid_argument(f"failed to parse the request JSON buffer: {problem}")
    if exceeds_depth(body):
        raise invalid_argument(f"failed to parse the request JSON buffer: nesting depth exceeds {MAX_JSON_DEPTH}")
    if fast_loads is not None:
        try:
            return fast_loads(body)
        except ValueError:  # NaN/Infinity tokens, huge integers, errors: the standard parser decides and says why
            pass
    try:
        return json.loads(utf8_text(body))  # a str: json.loads(bytes) would guess UTF-16/32
    except (ValueError, RecursionError) as error:  # JSONDecodeError, > 4300-digit ints
        raise invalid_argument(f"failed to parse the request JSON buffer: {error}") from None


_FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64"})


def parse_numeric_body(body: bytes) -> dict[str, Any] | None:
    """An infer body whose every input is FP16/FP32/FP64 with numeric ``data``, parsed with each ``data`` as a flat
    float64 array instead of a list of Python floats (100x64 FP32: 0.19 ms, where orjson and numpy take 0.43);
    None for anything else (another datatype, a value that is not a number, NaN/Infinity tokens, an integer of
    2**53 or more, invalid JSON or not UTF-8, a body nested too deep, an object of more than
    :data:`~rnnkit_serving.codecs.json_depth.FAST_FIELDS` keys), which :func:`parse_body` and the checked path
    then take.

    The arrays are what the checked path makes of the same ``data``: it flattens any nesting, ragged or not, in
    row-major order (``_flatten``) and converts each JSON number as numpy converts a Python float or int, and
    pysimdjson's buffer flattens the same way, reading numbers with correct rounding. An object with a repeated
    key is left to :func:`parse_body`."""
    if simdjson is None or not body or exceeds_depth(body):
        return None
    try:
        root = simdjson.Parser().parse(body)
        if not isinstance(root, simdjson.Object):
            return None
        doc: dict[str, Any] = {}
        fields = simd_fields(root)
        if fields is None:
            return None
        for key, value in fields:
            if key != "inputs":
                doc[key] = simd_plain(value)
                continue
            if not isinstance(value, simdjson.Array):
                return None
            entries = []
            for entry in value:
                if not isinstance(entry, simdjson.Object):
                    return None
                entry_fields = simd_fields(entry)
                if entry_fields is None:
                    return None
                item = {k: (v if k == "data" else simd_plain(v)) for k, v in entry_fields}
                data = item.get("data")
                if item.get("datatype") not in _FLOAT_DATATYPES or not isinstance(data, simdjson.Array):
                    return None
                values = np.frombuffer(data.as_buffer(of_type="d"), np.float64)
                if values.size and not np.abs(values).max() < EXACT_INTEGERS:
                    return None
                item["data"] = values
                entries.append(item)
            doc[key] = entries
        return doc
    # simdjson's errors (and a KeyError for a key holding \u0000, which it cannot look up): the general path decides
    except (ValueError, TypeError, RuntimeError, UnicodeError, KeyError):
        return None


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack = [data]
    while stack:  # iterative, row-major
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    return flat


def _check_values(values: list[Any], datatype: str, name: str, dtype: str) -> None:
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in values):
            raise invalid_argument(f"input '{name}': datatype BYTES expects JSON strings")
    elif datatype == "BOOL":
        if not all(isinstance(v, bool) for v in values):
            raise invalid_argument(f"input '{name}': datatype BOOL expects JSON true/false")
    elif datatype.startswith(("INT", "UINT")):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise invalid_argument(f"input '{name}': datatype {datatype} expects JSON integers")
        info = np.iinfo(numpy_dtype(dtype))
        if values and not (info.min <= min(values) and max(values) <= info.max):
            raise invalid_argument(
                f"input '{name}': a value is out of the range of {datatype} ({info.min}..{info.max})"
            )
    elif not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise invalid_argument(f"input '{name}': datatype {datatype} expects JSON numbers")


def decode_tensor(
    item: Any,
    spec: TensorSpec,
    binary: bytes | memoryview | None = None,
    budget: ElementBudget | None = None,
    bools_absent: bool = False,
) -> np.ndarray:
    """One ``inputs`` entry -> an array of the signature's dtype and the request's shape
    (`binary`: its raw bytes when the entry declared ``binary_data_size``; `bools_absent`: the body
    holds no JSON true/false, so numeric data may be converted without checking each value in Python)."""
    if not isinstance(item, Mapping):
        raise invalid_argument(f"each entry of 'inputs' must be an object; received {type(item).__name__}")
    name = spec.name
    for key in ("shape", "datatype", "data"):
        if key not in item and not (key == "data" and binary is not None):
            raise invalid_argument(f"input '{name}' is missing '{key}'")
    shape = check_header(name, item["shape"], item["datatype"], spec)
    datatype = item["datatype"]
    if binary is not None:
        if "data" in item:
            raise invalid_argument(f"input '{name}': give either 'data' or binary_data_size, not both")
        return decode_raw(name, datatype, shape, binary, budget)
    count = declared_count(name, shape, budget)
    data = item["data"]
    if isinstance(data, np.ndarray):  # flat float64 from parse_numeric_body: what the checked path would make
        if data.size != count:
            raise invalid_argument(f"input '{name}': shape {shape} holds {count} values, 'data' has {data.size}")
        with np.errstate(over="ignore"):  # a float beyond the dtype becomes inf: the non-finite check refuses it
            return data.astype(numpy_dtype(spec.dtype)).reshape(shape)
    if bools_absent and datatype not in ("BYTES", "BOOL"):
        fast = numbers_in_c(item["data"], spec.dtype)
        if fast is not None and fast.size == count:
            return fast.reshape(shape)
    values = _flatten(item["data"])
    if len(values) != count:
        raise invalid_argument(f"input '{name}': shape {shape} holds {count} values, 'data' has {len(values)}")
    _check_values(values, datatype, name, spec.dtype)
    try:
        with np.errstate(over="ignore"):  # a float beyond the dtype becomes inf: the non-finite check refuses it
            array = np.array(values, dtype=numpy_dtype(spec.dtype))
    except OverflowError:  # an integer beyond float64 for an FP input
        raise invalid_argument(f"input '{name}': a value is out of the range of {datatype}") from None
    return array.reshape(shape)


def split_binary_body(body: bytes, header_length: str) -> tuple[Any, memoryview]:
    """A binary-extension body -> (the parsed JSON header, the bytes that follow it)."""
    length = ascii_uint(header_length.strip(), len(body))
    if length is None:
        if ascii_uint(header_length.strip(), 1 << 62) is not None:
            raise invalid_argument(
                f"{HEADER_LENGTH} is {header_length.strip()}, but the body has only {len(body)} bytes"
            )
        raise invalid_argument(f"{HEADER_LENGTH} must be a non-negative integer; received {shown(header_length)}")
    if length > len(body):
        raise invalid_argument(f"{HEADER_LENGTH} is {length}, but the body has only {len(body)} bytes")
    return parse_body(body[:length]), memoryview(body)[length:]  # the tensors' bytes, not copied


def _binary_size(item: Any) -> int | None:
    parameters = item.get("parameters") if isinstance(item, Mapping) else None
    if not isinstance(parameters, Mapping) or "binary_data_size" not in parameters:
        return None
    size = parameters["binary_data_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise invalid_argument(
            f"input '{item.get('name')}': parameter 'binary_data_size' must be a non-negative integer; "
            f"received {size!r}"
        )
    return size


def decode_infer_request(
    doc: Any,
    signature: Signature,
    binary: bytes | memoryview | None = None,
    budget: ElementBudget | None = None,
    partial: bool = False,
    bools_absent: bool = False,
) -> InferRequest:
    """An inference request body (parsed JSON) -> inputs by name, requested outputs, parameters.

    `binary`: the bytes after the JSON header of a binary-extension request (``None``: JSON only);
    `budget`: the request's element budget, shared by its inputs; `partial`: the inputs may be
    a subset of the signature's (a request of an encoder-decoder sequence carries the source, a
    target chunk or both; the session says which it needs); `bools_absent`: the JSON text holds no
    true/false (:func:`~rnnkit_serving.codecs.json_depth.holds_no_bools`), which lets numeric data skip the
    per-value type checks."""
    if not isinstance(doc, Mapping):
        raise invalid_argument(f"the inference request must be a JSON object; received {type(doc).__name__}")
    items = doc.get("inputs")
    if not isinstance(items, list) or not items:
        raise invalid_argument("the inference request needs a non-empty 'inputs' list")
    parameters = doc.get("parameters", {})
    if not isinstance(parameters, Mapping):
        raise invalid_argument("'parameters' must be a JSON object")
    specs = signature.input_specs
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for item in items:
        name = item.get("name") if isinstance(item, Mapping) else None
        if not isinstance(name, str):
            raise invalid_argument("each entry of 'inputs' needs a string 'name'")
        if name not in specs:
            raise invalid_argument(f"unexpected inference input '{name}'; the model takes {signature.input_names}")
        if name in inputs:
            raise invalid_argument(f"input '{name}' is given twice")
        size = _binary_size(item)
        raw: bytes | memoryview | None = None
        if size is not None:
            if binary is None:
                raise invalid_argument(
                    f"input '{name}' declares binary_data_size but the request has no {HEADER_LENGTH} header"
                )
            if offset + size > len(binary):
                raise invalid_argument(
                    f"input '{name}': binary_data_size {size} at offset {offset} runs past the "
                    f"{len(binary)} bytes after the JSON header"
                )
            raw = binary[offset : offset + size]
            offset += size
        inputs[name] = decode_tensor(item, specs[name], raw, budget, bools_absent)
    if binary is not None and offset != len(binary):
        raise invalid_argument(
            f"{len(binary)} bytes follow the JSON header, but the inputs' binary_data_size add up to {offset}"
        )
    missing = [n for n in signature.input_names if n not in inputs]
    if missing and not partial:
        raise invalid_argument(f"expected {len(specs)} inputs {signature.input_names}; missing {missing}")
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise invalid_argument(f"parameter 'binary_data_output' must be a boolean, received {binary_default!r}")
    binary_outputs = list(signature.output_names) if binary_default else []
    wanted: list[str] | None = None
    if "outputs" in doc:
        requested = doc["outputs"]
        if not isinstance(requested, list):
            raise invalid_argument("'outputs' must be a list of {\"name\": ...} objects")
        wanted = []
        for entry in requested:
            out = entry.get("name") if isinstance(entry, Mapping) else None
            if not isinstance(out, str):
                raise invalid_argument("each entry of 'outputs' needs a string 'name'")
            if out not in signature.output_names:
                raise invalid_argument(
                    f"unexpected inference output '{out}'; the model returns {signature.output_names}"
                )
            if out in wanted:  # answered twice, a binary output's bytes would follow the header once
                raise invalid_argument(f"output '{out}' already exists in request")
            flag = entry["parameters"].get("binary_data") if isinstance(entry.get("parameters"), Mapping) else None
            if flag is not None and not isinstance(flag, bool):
                raise invalid_argument(f"output '{out}': parameter 'binary_data' must be a boolean, received {flag!r}")
            if flag is True and out not in binary_outputs:
                binary_outputs.append(out)
            elif flag is False and out in binary_outputs:
                binary_outputs.remove(out)
            wanted.append(out)
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise invalid_argument(f"'id' must be a string; received {request_id!r}")
    return InferRequest(request_id, dict(parameters), inputs, wanted, tuple(binary_outputs))


_IN_C = frozenset(
    np.dtype(t)
    for t in ("float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool")
)


def _data(array: np.ndarray) -> list[Any] | np.ndarray:
    """An output's ``data``: the flat array itself when the JSON writer converts it in C (numbers, all
    finite: JSON has no NaN), else a list of Python values."""
    flat = array.reshape(-1)
    if flat.dtype.kind in "OUS":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
    if fast_dumps is not None and flat.dtype in _IN_C and (flat.dtype.kind != "f" or np.isfinite(flat).all()):
        return np.ascontiguousarray(flat)
    return list(flat.tolist())


def _dumps(doc: dict[str, Any]) -> str | bytes:
    if fast_dumps is not None and not any(isinstance(e.get("data"), list) for e in doc["outputs"]):
        try:
            return fast_dumps(doc)  # numbers written in C: 100x64 FP32 in 0.2 ms instead of 4.8
        except TypeError:  # e.g. an echoed parameter holding an integer beyond 64 bits: the json module writes it
            pass
    for entry in doc["outputs"]:
        if isinstance(entry.get("data"), np.ndarray):
            entry["data"] = entry["data"].tolist()
    return json.dumps(doc, separators=(",", ":"))


def _response_doc(
    model_name: str,
    model_version: int,
    outputs: Mapping[str, np.ndarray],
    wanted: Sequence[str] | None,
    request_id: str | None,
    parameters: Mapping[str, Any] | None,
    blobs: Mapping[str, bytes],
) -> dict[str, Any]:
    # a request that only starts an encoder-decoder sequence has no outputs
    names = list(outputs) if wanted is None else [name for name in wanted if name in outputs]
    doc: dict[str, Any] = {"model_name": model_name, "model_version": str(model_version)}
    if request_id is not None:
        doc["id"] = request_id
    if parameters:
        doc["parameters"] = dict(parameters)
    entries = []
    for name in names:
        array = outputs[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(array), "shape": list(array.shape)}
        if name in blobs:
            entry["parameters"] = {"binary_data_size": len(blobs[name])}
        else:
            entry["data"] = _data(array)
        entries.append(entry)
    doc["outputs"] = entries
    return doc


def encode_infer_response(
    model_name: str,
    model_version: int,
    outputs: Mapping[str, np.ndarray],
    wanted: Sequence[str] | None = None,
    request_id: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> str | bytes:
    """The JSON answer, compact as Triton writes it; float32 data as the shortest text that reads back as
    the same float32 (``0.1``, not ``0.10000000149011612``), NaN/Infinity written as Python's ``json`` does."""
    return _dumps(_response_doc(model_name, model_version, outputs, wanted, request_id, parameters, {}))


def encode_binary_infer_response(
    model_name: str,
    model_version: int,
    outputs: Mapping[str, np.ndarray],
    binary: Sequence[str],
    wanted: Sequence[str] | None = None,
    request_id: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, int]:
    """The binary-extension answer: (body, length of its JSON header), the raw bytes of the
    `binary` outputs following the header in the order of ``outputs``."""
    names = list(outputs) if wanted is None else [name for name in wanted if name in outputs]
    blobs = {name: encode_raw(outputs[name]) for name in names if name in binary}
    doc = _response_doc(model_name, model_version, outputs, wanted, request_id, parameters, blobs)
    text = _dumps(doc)
    header = text if isinstance(text, bytes) else text.encode()
    return header + b"".join(blobs[name] for name in names if name in blobs), len(header)


def model_metadata_json(name: str, versions: Sequence[int], platform: str, signature: Signature) -> str:
    return json.dumps(
        {
            "name": name,
            "versions": [str(v) for v in versions],
            "platform": platform,
            "inputs": [tensor_metadata(s) for s in signature.inputs],
            "outputs": [tensor_metadata(s) for s in signature.outputs],
        }
    )


def platform(backend_name: str) -> str:
    """The ``platform`` of a model's metadata: Triton's name for its runtime (else the runtime's own)."""
    return PLATFORMS.get(backend_name, backend_name)


def server_metadata_json(version: str) -> str:
    return json.dumps({"name": "rnnkit", "version": version, "extensions": list(SERVER_EXTENSIONS)})
