"""TF Serving gRPC messages <-> arrays, as pure functions (no channel, no server).

``PredictRequest`` inputs are accepted as raw ``tensor_content`` or typed ``*_val`` fields
(fewer typed values than the shape needs repeat the last one, as ``tf.make_ndarray`` does).
A declared shape is checked against the request's element budget and against the content it
came with before any array is built, so a few bytes declaring a huge shape allocate nothing;
replies use typed fields, TF Serving's default. The generated protos import TensorFlow, so
they are imported inside the functions: importing this module costs nothing, calling it
loads the protos (the gRPC front is the only caller).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from rnnkit_serving.core.signature import (
    DATA_TYPES,
    DEFAULT_SIGNATURE,
    METHOD_PREDICT,
    ElementBudget,
    Signature,
    TensorSpec,
)
from rnnkit_serving.core.status import VersionStatus
from rnnkit_serving.errors import Code, ServingError, invalid_argument

# DataType number -> (numpy dtype, typed TensorProto field)
_FROM_WIRE: dict[int, tuple[Any, str]] = {
    1: (np.float32, "float_val"),
    2: (np.float64, "double_val"),
    3: (np.int32, "int_val"),
    4: (np.uint8, "int_val"),
    5: (np.int16, "int_val"),
    6: (np.int8, "int_val"),
    7: (object, "string_val"),
    9: (np.int64, "int64_val"),
    10: (np.bool_, "bool_val"),
    17: (np.uint16, "int_val"),
    19: (np.float16, "half_val"),
    22: (np.uint32, "uint32_val"),
    23: (np.uint64, "uint64_val"),
}
_TO_WIRE: dict[str, tuple[int, str]] = {
    np.dtype(dtype).name if dtype is not object else "object": (number, field)
    for number, (dtype, field) in _FROM_WIRE.items()
}


@functools.lru_cache(maxsize=1)
def protos() -> SimpleNamespace:
    """The generated message modules (loaded on first call, without starting TensorFlow)."""
    from rnnkit_serving.codecs.tfs.protos import import_proto_modules

    (
        tensor_pb2,
        tensor_shape_pb2,
        types_pb2,
        meta_graph_pb2,
        get_model_metadata_pb2,
        get_model_status_pb2,
        predict_pb2,
    ) = import_proto_modules(
        "tensorflow.core.framework.tensor_pb2",
        "tensorflow.core.framework.tensor_shape_pb2",
        "tensorflow.core.framework.types_pb2",
        "tensorflow.core.protobuf.meta_graph_pb2",
        "tensorflow_serving.apis.get_model_metadata_pb2",
        "tensorflow_serving.apis.get_model_status_pb2",
        "tensorflow_serving.apis.predict_pb2",
    )

    return SimpleNamespace(
        tensor=tensor_pb2,
        shape=tensor_shape_pb2,
        types=types_pb2,
        meta_graph=meta_graph_pb2,
        predict=predict_pb2,
        metadata=get_model_metadata_pb2,
        status=get_model_status_pb2,
    )


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: int | None
    label: str | None
    signature_name: str


def model_spec(spec: Any) -> ModelSpec:
    """What a request's ``ModelSpec`` asks for; the name is required."""
    if not spec.name:
        raise invalid_argument("ModelSpec has no name specified.")
    choice = spec.WhichOneof("version_choice")
    return ModelSpec(
        spec.name,
        int(spec.version.value) if choice == "version" else None,
        spec.version_label if choice == "version_label" else None,
        spec.signature_name or DEFAULT_SIGNATURE,
    )


def tensor_to_array(proto: Any, alias: str = "", budget: ElementBudget | None = None) -> np.ndarray:
    """A ``TensorProto`` -> ndarray (tensor_content or typed values); the declared shape is taken
    from `budget` (default: an unlimited one, which still bounds the rank) before anything is built."""
    entry = _FROM_WIRE.get(int(proto.dtype))
    if entry is None:
        raise invalid_argument(f"tensor parsing error: {alias} (unsupported DataType {proto.dtype})")
    dtype, field = entry
    if proto.tensor_shape.unknown_rank or any(d.size < 0 for d in proto.tensor_shape.dim):
        raise invalid_argument(f"tensor parsing error: {alias} (the shape must be fully defined)")
    shape = tuple(int(d.size) for d in proto.tensor_shape.dim)
    size = (budget if budget is not None else ElementBudget(None)).take(alias, shape)
    if proto.tensor_content and dtype is not object:
        content = proto.tensor_content
        itemsize = np.dtype(dtype).itemsize
        if len(content) != size * itemsize:
            raise invalid_argument(
                f"tensor parsing error: {alias} (tensor_content has {len(content)} bytes, shape {list(shape)} "
                f"of {np.dtype(dtype).name} needs {size * itemsize})"
            )
        # little-endian on the wire: on a little-endian host a read-only view of the bytes, no copy
        wire = np.frombuffer(content, dtype=np.dtype(dtype).newbyteorder("<"))
        return wire.astype(dtype, copy=False).reshape(shape)
    values = getattr(proto, field)
    count = len(values)
    if count > size:
        raise invalid_argument(
            f"tensor parsing error: {alias} ({count} values in {field} for shape {list(shape)} of {size} elements)"
        )
    if dtype is object:
        flat = np.empty(size, dtype=object)
        flat[:count] = list(values)
        if 0 < count < size:
            flat[count:] = values[-1]
        elif count == 0:
            flat[:] = b""
    elif dtype is np.float16:
        flat = np.zeros(size, np.uint16)
        flat[:count] = np.asarray(values, dtype=np.int32).astype(np.uint16)
        if 0 < count < size:
            flat[count:] = flat[count - 1]
        flat = flat.view(np.float16)
    else:
        flat = np.zeros(size, dtype=dtype)
        flat[:count] = _typed_values(values, np.dtype(dtype), field, alias)
        if 0 < count < size:
            flat[count:] = flat[count - 1]
    return flat.reshape(shape)


def _typed_values(values: Any, dtype: np.dtype, field: str, alias: str) -> np.ndarray:
    """Typed values as `dtype`; int_val carries int8/16, uint8/16 too, so its range is checked."""
    if dtype.kind not in "iu":
        return np.asarray(values, dtype=dtype)
    wide = np.asarray(values, dtype=np.uint64 if dtype == np.uint64 else np.int64)
    info = np.iinfo(dtype)
    if wide.size and (int(wide.min()) < info.min or int(wide.max()) > info.max):
        raise invalid_argument(
            f"tensor parsing error: {alias} ({field} holds values outside the range of {dtype.name}: "
            f"{int(wide.min())}..{int(wide.max())})"
        )
    return wide.astype(dtype)


def array_to_tensor(array: np.ndarray, as_tensor_content: bool = False) -> Any:
    """An ndarray -> ``TensorProto`` with typed ``*_val`` fields (or raw ``tensor_content``)."""
    array = np.asarray(array)
    key = "object" if array.dtype.kind in "OSU" else array.dtype.name
    if key not in _TO_WIRE:
        raise ServingError(Code.INTERNAL, f"cannot encode an output of dtype {array.dtype.name}")
    number, field = _TO_WIRE[key]
    proto = protos().tensor.TensorProto(dtype=number)
    proto.tensor_shape.dim.extend(protos().shape.TensorShapeProto.Dim(size=int(d)) for d in array.shape)
    if as_tensor_content and key != "object":
        proto.tensor_content = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
    elif key == "object":
        getattr(proto, field).extend(v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1))
    elif key == "float16":
        proto.half_val.extend(array.reshape(-1).view(np.uint16).tolist())
    else:
        getattr(proto, field).extend(array.reshape(-1).tolist())
    return proto


def _set(names: Sequence[str]) -> str:
    return "{" + ",".join(sorted(names)) + "}"


@dataclass(frozen=True)
class GrpcPredictRequest:
    signature_name: str
    inputs: dict[str, np.ndarray]
    outputs: list[str]  # the output names to return: the filter, or all in signature order


def decode_predict_request(
    request: Any, signature: Signature, budget: ElementBudget | None = None
) -> GrpcPredictRequest:
    """Inputs by name and the output names to return (the filter, or all in signature order);
    every input's declared shape is taken from `budget` before its array is built."""
    expected = signature.input_names
    sent = list(request.inputs.keys())
    if len(sent) != len(expected) or set(sent) != set(expected):
        extra = [n for n in sent if n not in expected]
        missing = [n for n in expected if n not in sent]
        if len(sent) == len(expected) and extra:
            raise invalid_argument(
                f"input tensor alias not found in signature: {extra[0]}. Inputs expected to be in the set "
                f"{_set(expected)}."
            )
        raise invalid_argument(
            f"input size does not match signature: {len(sent)}!={len(expected)} len({_set(sent)}) != "
            f"len({_set(expected)}). Sent extra: {_set(extra)}. Missing but required: {_set(missing)}."
        )
    inputs = {name: tensor_to_array(request.inputs[name], name, budget) for name in expected}
    outputs = signature.output_names
    wanted: list[str] = []
    for alias in request.output_filter:
        if alias not in outputs:
            raise invalid_argument(
                f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                f"{_set(outputs)}."
            )
        if alias in wanted:
            raise invalid_argument(f"duplicate output tensor alias: {alias}")
        wanted.append(alias)
    return GrpcPredictRequest(signature.name, inputs, wanted or outputs)


def encode_predict_response(
    outputs: Mapping[str, np.ndarray], name: str, version: int, signature_name: str, as_tensor_content: bool = False
) -> Any:
    response = protos().predict.PredictResponse()
    for key, array in outputs.items():
        response.outputs[key].CopyFrom(array_to_tensor(array, as_tensor_content))
    response.model_spec.name = name
    response.model_spec.version.value = version
    response.model_spec.signature_name = signature_name
    return response


def _tensor_info(spec: TensorSpec, tensor_name: str) -> Any:
    info = protos().meta_graph.TensorInfo(name=tensor_name, dtype=DATA_TYPES[spec.dtype][1])
    info.tensor_shape.dim.extend(protos().shape.TensorShapeProto.Dim(size=-1 if d is None else d) for d in spec.shape)
    return info


def signature_def_map(signatures: Mapping[str, Signature]) -> Any:
    result = protos().metadata.SignatureDefMap()
    for name, signature in signatures.items():
        definition = result.signature_def[name]
        definition.method_name = METHOD_PREDICT
        for spec in signature.inputs:
            definition.inputs[spec.name].CopyFrom(_tensor_info(spec, f"{name}_{spec.name}:0"))
        for index, spec in enumerate(signature.outputs):
            definition.outputs[spec.name].CopyFrom(_tensor_info(spec, f"StatefulPartitionedCall:{index}"))
    return result


def metadata_response(request: Any, name: str, version: int, signatures: Mapping[str, Signature]) -> Any:
    fields = list(request.metadata_field)
    if not fields:
        raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
    for field in fields:
        if field != "signature_def":
            raise invalid_argument(f"Metadata field {field} is not supported")
    response = protos().metadata.GetModelMetadataResponse()
    response.model_spec.name = name
    response.model_spec.version.value = version
    response.metadata["signature_def"].Pack(signature_def_map(signatures))
    return response


def status_response(entries: Sequence[VersionStatus]) -> Any:
    p = protos().status
    response = p.GetModelStatusResponse()
    for entry in entries:
        item = response.model_version_status.add()
        item.version = entry.version
        item.state = p.ModelVersionStatus.State.Value(entry.state)
        item.status.error_code = Code[entry.error_code].value
        item.status.error_message = entry.error_message
    return response
