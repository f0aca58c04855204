"""KServe v2 / Open Inference Protocol REST JSON <-> arrays, as pure functions (no sockets).

Request: ``{"id", "parameters", "inputs": [{"name", "shape", "datatype", "data"}], "outputs": [{"name"}]}``
with row-major ``data`` (flat or nested); response: ``{"model_name", "model_version", "id",
"parameters", "outputs": [{"name", "shape", "datatype", "data"}]}``; errors ``{"error": "..."}``
(rendered by the front through :func:`serving.errors.wire_error`). Triton's sequence parameters
(``sequence_id``, ``sequence_start``, ``sequence_end``) travel in the request ``parameters``.
The binary tensor extension is not supported and is refused with a clear error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.errors import invalid_argument
from serving.json_depth import MAX_JSON_DEPTH, exceeds_depth
from serving.signature import DEFAULT_SIGNATURE, ElementBudget, Signature, TensorSpec, numpy_dtype

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
KNOWN_DATATYPES = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
    "BF16",
)
PLATFORMS = {"onnx": "onnxruntime_onnx", "tf": "tensorflow_savedmodel"}
SERVER_EXTENSIONS = ("sequence",)


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    parameters: dict[str, Any]
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None  # None: every output

    @property
    def signature_name(self) -> str:
        """KServe v2 has one signature per model: the default one."""
        return DEFAULT_SIGNATURE


def _datatype(spec: TensorSpec) -> str:
    return DATATYPES[spec.dtype]


def tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": _datatype(spec), "shape": [-1 if d is None else d for d in spec.shape]}


def parse_body(body: bytes) -> Any:
    if not body.strip():
        raise invalid_argument("failed to parse the request JSON buffer: the document is empty")
    if exceeds_depth(body):
        raise invalid_argument(f"failed to parse the request JSON buffer: nesting depth exceeds {MAX_JSON_DEPTH}")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError, > 4300-digit ints
        raise invalid_argument(f"failed to parse the request JSON buffer: {error}") from None


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


def decode_tensor(item: Any, spec: TensorSpec, budget: ElementBudget | None = None) -> np.ndarray:
    """One ``inputs`` entry -> an array of the signature's dtype and the request's shape; the declared
    ``shape`` is taken from `budget` and compared with the length of ``data`` before any array is built."""
    if not isinstance(item, Mapping):
        raise invalid_argument(f"each entry of 'inputs' must be an object; received {type(item).__name__}")
    name = spec.name
    for key in ("shape", "datatype", "data"):
        if key not in item:
            if (
                key == "data"
                and isinstance(item.get("parameters"), Mapping)
                and "binary_data_size" in item["parameters"]
            ):
                raise invalid_argument(f"input '{name}': binary tensor data is not supported; send JSON 'data'")
            raise invalid_argument(f"input '{name}' is missing '{key}'")
    shape, datatype = item["shape"], item["datatype"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise invalid_argument(f"input '{name}': 'shape' must be a list of non-negative integers; received {shape!r}")
    if datatype not in KNOWN_DATATYPES:
        raise invalid_argument(
            f"input '{name}': unknown datatype {datatype!r}; expected one of {list(KNOWN_DATATYPES)}"
        )
    expected = _datatype(spec)
    if datatype != expected:
        raise invalid_argument(f"input '{name}': datatype {datatype}, the model expects {expected}")
    count = (budget or ElementBudget(None)).take(name, shape)
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


def decode_infer_request(
    doc: Any, signature: Signature, budget: ElementBudget | None = None, partial: bool = False
) -> InferRequest:
    """An inference request body (parsed JSON) -> inputs by name, requested outputs, parameters; the
    inputs' declared shapes share `budget`.

    `partial`: the inputs may be a subset of the signature's (a request of an encoder-decoder
    sequence carries the source, a target chunk or both; the session says which it needs)."""
    if not isinstance(doc, Mapping):
        raise invalid_argument(f"the inference request must be a JSON object; received {type(doc).__name__}")
    items = doc.get("inputs")
    if not isinstance(items, list) or not items:
        raise invalid_argument("the inference request needs a non-empty 'inputs' list")
    parameters = doc.get("parameters", {})
    if not isinstance(parameters, Mapping):
        raise invalid_argument("'parameters' must be a JSON object")
    specs = {s.name: s for s in signature.inputs}
    inputs: dict[str, np.ndarray] = {}
    for item in items:
        name = item.get("name") if isinstance(item, Mapping) else None
        if not isinstance(name, str):
            raise invalid_argument("each entry of 'inputs' needs a string 'name'")
        if name not in specs:
            raise invalid_argument(f"unexpected inference input '{name}'; the model takes {signature.input_names}")
        if name in inputs:
            raise invalid_argument(f"input '{name}' is given twice")
        inputs[name] = decode_tensor(item, specs[name], budget)
    missing = [n for n in signature.input_names if n not in inputs]
    if missing and not partial:
        raise invalid_argument(f"expected {len(specs)} inputs {signature.input_names}; missing {missing}")
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
            if isinstance(entry.get("parameters"), Mapping) and entry["parameters"].get("binary_data"):
                raise invalid_argument(f"output '{out}': binary tensor data is not supported")
            wanted.append(out)
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise invalid_argument(f"'id' must be a string; received {request_id!r}")
    return InferRequest(request_id, dict(parameters), inputs, wanted)


def _datatype_of(array: np.ndarray) -> str:
    if array.dtype.kind in "OUS":
        return "BYTES"
    name = array.dtype.name
    if name not in DATATYPES:
        raise invalid_argument(f"output dtype {name} has no KServe v2 datatype")
    return DATATYPES[name]


def _data(array: np.ndarray) -> list[Any]:
    flat = array.reshape(-1)
    if flat.dtype.kind in "OUS":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
    return list(flat.tolist())


def encode_infer_response(
    model_name: str,
    model_version: int,
    outputs: Mapping[str, np.ndarray],
    wanted: Sequence[str] | None = None,
    request_id: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> str:
    # a request that only starts an encoder-decoder sequence has no outputs
    names = list(outputs) if wanted is None else [name for name in wanted if name in outputs]
    doc: dict[str, Any] = {"model_name": model_name, "model_version": str(model_version)}
    if request_id is not None:
        doc["id"] = request_id
    if parameters:
        doc["parameters"] = dict(parameters)
    doc["outputs"] = [
        {
            "name": name,
            "datatype": _datatype_of(outputs[name]),
            "shape": list(outputs[name].shape),
            "data": _data(outputs[name]),
        }
        for name in names
    ]
    return json.dumps(doc)


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


def server_metadata_json(version: str) -> str:
    return json.dumps({"name": "rnnkit", "version": version, "extensions": list(SERVER_EXTENSIONS)})


# ------------------------------------------------------------------------ sequence parameters


@dataclass(frozen=True)
class SequenceControl:
    """Triton's sequence parameters of one request: which sequence, and whether it starts or ends it."""

    id: int | str
    start: bool
    end: bool


def sequence_id(parameters: Mapping[str, Any]) -> int | str | None:
    """Triton's ``sequence_id`` request parameter (uint64 or string); None when the request is not
    part of a sequence. ``sequence_start``/``sequence_end`` without a non-zero id is an error."""
    raw = parameters.get("sequence_id")
    start, end = parameters.get("sequence_start", False), parameters.get("sequence_end", False)
    for flag, value in (("sequence_start", start), ("sequence_end", end)):
        if not isinstance(value, bool):
            raise invalid_argument(f"parameter '{flag}' must be a boolean, received {value!r}")
    if raw is None or raw == 0 or raw == "":
        if start or end:
            raise invalid_argument(
                "inference request to a sequence must specify a non-zero or non-empty correlation ID "
                "(parameter 'sequence_id')"
            )
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, str)) or (isinstance(raw, int) and raw < 0):
        raise invalid_argument(f"parameter 'sequence_id' must be an unsigned integer or a string, received {raw!r}")
    return raw


def sequence_control(doc: Any) -> SequenceControl | None:
    """The sequence a parsed request body belongs to (from its ``parameters``), or None.

    Read before the model is resolved, so a malformed sequence parameter is refused first; a
    ``parameters`` that is not an object is left to :func:`decode_infer_request` to refuse.
    """
    parameters = doc.get("parameters") if isinstance(doc, dict) else None
    if not isinstance(parameters, dict):
        return None
    key = sequence_id(parameters)
    if key is None:
        return None
    return SequenceControl(key, bool(parameters.get("sequence_start")), bool(parameters.get("sequence_end")))
