"""TF Serving REST JSON bodies <-> arrays, as pure functions (no sockets, no runtime).

The ``:predict`` forms of TF Serving's REST API: row (``instances`` -> ``predictions``) and
columnar (``inputs`` -> ``outputs``), plus the status, metadata and error bodies. Tensors inside
them are read and written by :mod:`rnnkit_serving.codecs.tfs.json_tensor`. Errors raise :class:`ServingError` with
TF Serving's texts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rnnkit_serving.codecs.tfs.json_tensor import (
    decode_rows,
    decode_tensor,
    dump,
    element_strings,
    encode_tensor,
    is_named,
    nest,
)
from rnnkit_serving.core.signature import (
    DATA_TYPES,
    DEFAULT_SIGNATURE,
    METHOD_PREDICT,
    ElementBudget,
    Signature,
    TensorSpec,
)
from rnnkit_serving.core.status import VersionStatus
from rnnkit_serving.errors import ServingError, invalid_argument


@dataclass(frozen=True)
class RestPredictRequest:
    signature_name: str
    inputs: dict[str, np.ndarray]
    row_format: bool


def _signature_for(doc: Mapping[str, Any], signatures: Mapping[str, Signature]) -> Signature:
    name = doc.get("signature_name", DEFAULT_SIGNATURE)
    if not isinstance(name, str):
        raise invalid_argument(f"'signature_name' key must be a string value. Received: {dump(name)}")
    signature = signatures.get(name or DEFAULT_SIGNATURE)
    if signature is None:
        raise invalid_argument(f'Serving signature name: "{name}" not found in signature def')
    return signature


def decode_predict_request(
    doc: Any, signatures: Mapping[str, Signature], budget: ElementBudget | None = None, numbers_only: bool = False
) -> RestPredictRequest:
    """A parsed ``:predict`` body -> signature name, input arrays, and which form it used; each
    input's shape is taken from `budget` before its array is built. `numbers_only`: the body holds no
    JSON true/false (:func:`~rnnkit_serving.codecs.json_depth.holds_no_bools`), so numeric tensors are converted
    in C without per-value checks."""
    if not isinstance(doc, dict):
        raise invalid_argument(f"JSON Value: {dump(doc)} Is not object")
    signature = _signature_for(doc, signatures)
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise invalid_argument("Not a valid request: expecting only one of 'inputs' or 'instances' keys to exist")
    if not has_instances and not has_inputs:
        raise invalid_argument("Missing 'inputs' or 'instances' key")
    specs = signature.inputs
    if has_instances:
        instances = _decode_instances(doc["instances"], specs, budget, numbers_only)
        return RestPredictRequest(signature.name, instances, True)
    return RestPredictRequest(signature.name, _decode_inputs(doc["inputs"], specs, budget, numbers_only), False)


def _decode_instances(
    instances: Any, specs: Sequence[TensorSpec], budget: ElementBudget | None, numbers_only: bool
) -> dict[str, np.ndarray]:
    if isinstance(instances, np.ndarray):  # parse_numeric_json: the rows of a one-input signature, checked
        return {specs[0].name: decode_rows(instances, specs[0], budget, numbers_only)}
    if not isinstance(instances, list):
        raise invalid_argument("Expecting 'instances' to be an list/array")
    if not instances:
        raise invalid_argument("No values in 'instances' array")
    names = [s.name for s in specs]
    if is_named(instances[0]):
        for position, item in enumerate(instances):
            if not is_named(item):
                raise invalid_argument(f"Expecting object but got list at item {position} of input list")
            if set(item) != set(names):
                raise invalid_argument(
                    f"Failed to process element: {position} of 'instances' list. JSON object: {dump(item)} "
                    f"keys must be equal to: {','.join(names)}"
                )
        return {
            spec.name: decode_rows([item[spec.name] for item in instances], spec, budget, numbers_only)
            for spec in specs
        }
    if len(specs) > 1:
        raise invalid_argument(
            "instances is a plain list, but expecting list of objects as multiple input tensors required as per "
            f"tensorinfo_map (inputs: {','.join(names)})"
        )
    for position, item in enumerate(instances):
        if is_named(item):
            raise invalid_argument(f"Expecting value/list but got object at item {position} of input list")
    return {specs[0].name: decode_rows(instances, specs[0], budget, numbers_only)}


def _decode_inputs(
    inputs: Any, specs: Sequence[TensorSpec], budget: ElementBudget | None, numbers_only: bool
) -> dict[str, np.ndarray]:
    if is_named(inputs):
        arrays = {}
        for spec in specs:
            if spec.name not in inputs:
                raise invalid_argument(f"Missing named input: {spec.name} in 'inputs' object.")
            try:
                arrays[spec.name] = decode_tensor(inputs[spec.name], spec, budget, numbers_only)
            except ServingError as error:
                raise ServingError(error.code, f"Failed to process input '{spec.name}': {error.message}") from None
        return arrays
    if len(specs) > 1:
        raise invalid_argument(
            "inputs is a plain value/list, but expecting an object as multiple input tensors required as per "
            f"tensorinfo_map (inputs: {','.join(s.name for s in specs)})"
        )
    return {specs[0].name: decode_tensor(inputs, specs[0], budget, numbers_only)}


def encode_predict_response(outputs: Mapping[str, np.ndarray], row_format: bool) -> str:
    """Outputs (in signature order) -> ``{"predictions": ...}`` (row) or ``{"outputs": ...}`` (columnar)."""
    if not row_format:
        if len(outputs) == 1:
            (name, array), *_ = outputs.items()
            return '{"outputs": ' + encode_tensor(array, name) + "}"
        parts = [json.dumps(name) + ": " + encode_tensor(array, name) for name, array in outputs.items()]
        return '{"outputs": {' + ", ".join(parts) + "}}"
    batch: int | None = None
    for name, array in outputs.items():
        if np.ndim(array) == 0:
            raise invalid_argument(f"Tensor name: {name} has no shape information ")
        if batch is not None and array.shape[0] != batch:
            raise invalid_argument(
                f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} expecting: {batch}"
            )
        batch = int(array.shape[0])
    if len(outputs) == 1:
        (name, array), *_ = outputs.items()
        return '{"predictions": ' + encode_tensor(array, name) + "}"
    columns = []
    for name, array in outputs.items():
        items = element_strings(array, name)
        per_row = math.prod(array.shape[1:])
        columns.append(
            (
                json.dumps(name),
                [nest(items[i * per_row : (i + 1) * per_row], array.shape[1:]) for i in range(batch or 0)],
            )
        )
    rows = ["{" + ", ".join(f"{key}: {values[i]}" for key, values in columns) + "}" for i in range(batch or 0)]
    return '{"predictions": [' + ", ".join(rows) + "]}"


# ------------------------------------------------------------------------- status, metadata


def error_json(message: str) -> str:
    return json.dumps({"error": message}, indent=1)


def status_json(entries: Sequence[VersionStatus]) -> str:
    return json.dumps(
        {
            "model_version_status": [
                {
                    "version": str(e.version),
                    "state": e.state,
                    "status": {"error_code": e.error_code, "error_message": e.error_message},
                }
                for e in entries
            ]
        },
        indent=1,
    )


def _tensor_info(spec: TensorSpec, tensor_name: str) -> dict[str, Any]:
    return {
        "dtype": DATA_TYPES[spec.dtype][0],
        "tensor_shape": {
            "dim": [{"size": str(-1 if d is None else d), "name": ""} for d in spec.shape],
            "unknown_rank": False,
        },
        "name": tensor_name,
    }


def signature_def_json(signatures: Mapping[str, Signature]) -> dict[str, Any]:
    """SignatureDefMap as TF Serving renders it (names follow Keras's exported tensor names)."""
    defs: dict[str, Any] = {}
    for name, signature in signatures.items():
        defs[name] = {
            "inputs": {s.name: _tensor_info(s, f"{name}_{s.name}:0") for s in signature.inputs},
            "outputs": {
                s.name: _tensor_info(s, f"StatefulPartitionedCall:{i}") for i, s in enumerate(signature.outputs)
            },
            "method_name": METHOD_PREDICT,
            "defaults": {},
        }
    return {"signature_def": defs}


def metadata_json(
    name: str, version: int, signatures: Mapping[str, Signature], runtime: Mapping[str, Any] | None = None
) -> str:
    doc: dict[str, Any] = {
        "model_spec": {"name": name, "signature_name": "", "version": str(version)},
        "metadata": {"signature_def": signature_def_json(signatures)},
    }
    if runtime is not None:
        doc["rnnkit"] = runtime
    return json.dumps(doc, indent=1)
