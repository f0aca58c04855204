"""KServe v2 / Open Inference Protocol gRPC messages <-> arrays, as pure functions (no sockets).

The messages are the generated classes of ``inference.GRPCInferenceService`` that ``tritonclient``
ships (``tritonclient.grpc.service_pb2``: grpcio + protobuf, no TensorFlow), loaded on first use.

A ``ModelInferRequest``'s inputs come either all as typed ``contents`` (``fp32_contents``...) or
all as ``raw_input_contents`` (one little-endian row-major blob per input, in input order); the
answer uses the same form: ``raw_output_contents`` for raw requests, typed ``contents`` else.
Declared shapes are checked against the element budget and, for raw inputs, against the blob's
length before any array is built (:func:`rnnkit_serving.codecs.kserve.tensors.decode_raw`). Request parameters
(``sequence_id``, ``sequence_start``, ``sequence_end``...) become a plain dict, so the sequence
rules are those of the REST codec.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from rnnkit_serving.codecs.kserve import rest as kserve_codec
from rnnkit_serving.codecs.kserve import tensors
from rnnkit_serving.core.identifiers import parse_version
from rnnkit_serving.core.signature import ElementBudget, Signature, numpy_dtype
from rnnkit_serving.errors import invalid_argument

SERVICE = "inference.GRPCInferenceService"

# KServe v2 datatype -> the typed field of InferTensorContents that carries it (FP16/BF16: raw only)
CONTENTS_FIELDS: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


@functools.cache
def protos() -> SimpleNamespace:
    """The generated modules: ``pb2`` (messages) and ``pb2_grpc`` (servicer, stub)."""
    try:
        from tritonclient.grpc import service_pb2, service_pb2_grpc
    except ImportError as error:
        raise ImportError(
            f"the KServe v2 gRPC front (--grpc_inference_port) needs tritonclient's generated protos ({error}): "
            "pip install 'rnnkit[grpc]'"
        ) from None
    return SimpleNamespace(pb2=service_pb2, pb2_grpc=service_pb2_grpc)


@dataclass(frozen=True)
class GrpcInferRequest(kserve_codec.InferRequest):
    raw: bool = False  # inputs came as raw_input_contents (the answer uses raw_output_contents)


def parameters_dict(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """A ``map<string, InferParameter>`` -> {key: bool | int | str | float}."""
    out: dict[str, Any] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        out[key] = getattr(parameter, choice) if choice else None
    return out


def _typed_contents(name: str, datatype: str, shape: list[int], contents: Any, budget: ElementBudget | None) -> Any:
    count = tensors.declared_count(name, shape, budget)
    field = CONTENTS_FIELDS.get(datatype)
    if field is None:
        raise invalid_argument(f"input '{name}': datatype {datatype} travels only in raw_input_contents")
    values = getattr(contents, field)
    given = [f.name for f, v in contents.ListFields()]
    if given and given != [field]:
        raise invalid_argument(f"input '{name}': datatype {datatype} is carried in '{field}'; received {given}")
    if len(values) != count:
        raise invalid_argument(f"input '{name}': shape {shape} holds {count} values, '{field}' has {len(values)}")
    return values


def decode_infer_request(
    request: Any, signature: Signature, budget: ElementBudget | None = None, partial: bool = False
) -> GrpcInferRequest:
    """A ``ModelInferRequest`` -> inputs by name (arrays of the request's shapes), requested outputs,
    parameters; `budget`: the request's element budget, shared by its inputs; `partial`: the
    inputs may be a subset of the signature's (requests of an encoder-decoder sequence)."""
    if not request.inputs:
        raise invalid_argument("the inference request needs at least one input")
    raw_contents = list(request.raw_input_contents)
    raw = bool(raw_contents)
    if raw and len(raw_contents) != len(request.inputs):
        raise invalid_argument(
            f"raw_input_contents has {len(raw_contents)} entries for {len(request.inputs)} inputs; "
            "give one per input, in input order, or use typed contents for all"
        )
    specs = signature.input_specs
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if name not in specs:
            raise invalid_argument(f"unexpected inference input '{name}'; the model takes {signature.input_names}")
        if name in inputs:
            raise invalid_argument(f"input '{name}' is given twice")
        spec = specs[name]
        shape = tensors.check_header(name, list(tensor.shape), tensor.datatype, spec)
        if raw:
            if tensor.HasField("contents"):
                raise invalid_argument(f"input '{name}': typed contents and raw_input_contents cannot be mixed")
            inputs[name] = tensors.decode_raw(name, tensor.datatype, shape, raw_contents[index], budget)
            continue
        values = _typed_contents(name, tensor.datatype, shape, tensor.contents, budget)
        if tensor.datatype == "BYTES":
            array = np.empty(len(values), dtype=object)
            array[:] = list(values)
        else:
            array = np.array(values, dtype=numpy_dtype(spec.dtype))
        inputs[name] = array.reshape(shape)
    missing = [n for n in signature.input_names if n not in inputs]
    if missing and not partial:
        raise invalid_argument(f"expected {len(specs)} inputs {signature.input_names}; missing {missing}")
    wanted: list[str] | None = None
    if request.outputs:
        wanted = []
        for output in request.outputs:
            if output.name not in signature.output_names:
                raise invalid_argument(
                    f"unexpected inference output '{output.name}'; the model returns {signature.output_names}"
                )
            if output.name in wanted:
                raise invalid_argument(f"output '{output.name}' already exists in request")
            wanted.append(output.name)
    return GrpcInferRequest(request.id or None, parameters_dict(request.parameters), inputs, wanted, (), raw)


def _set_parameter(parameter: Any, value: Any) -> None:
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        parameter.string_param = str(value)


def encode_infer_response(
    model_name: str,
    model_version: int,
    outputs: Mapping[str, np.ndarray],
    wanted: Sequence[str] | None = None,
    request_id: str | None = None,
    raw: bool = True,
    parameters: Mapping[str, Any] | None = None,
) -> Any:
    """Outputs -> a ``ModelInferResponse`` (``raw_output_contents`` when `raw`, typed contents else)."""
    response = protos().pb2.ModelInferResponse(model_name=model_name, model_version=str(model_version))
    if request_id:
        response.id = request_id
    for key, value in (parameters or {}).items():
        _set_parameter(response.parameters[key], value)
    names = list(outputs) if wanted is None else [name for name in wanted if name in outputs]
    # FP16 has no typed field: a response holding one travels raw (all outputs, as the protocol wants)
    raw = raw or any(tensors.datatype_of(outputs[name]) not in CONTENTS_FIELDS for name in names)
    for name in names:
        array = outputs[name]
        datatype = tensors.datatype_of(array)
        tensor = response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        if raw:
            response.raw_output_contents.append(tensors.encode_raw(array))
        elif datatype == "BYTES":
            tensor.contents.bytes_contents.extend(
                v if isinstance(v, bytes) else str(v).encode("utf-8") for v in array.reshape(-1)
            )
        else:
            getattr(tensor.contents, CONTENTS_FIELDS[datatype]).extend(array.reshape(-1).tolist())
    return response


def model_metadata_response(name: str, versions: Sequence[int], platform: str, signature: Signature) -> Any:
    response = protos().pb2.ModelMetadataResponse(name=name, versions=[str(v) for v in versions], platform=platform)
    for specs, target in ((signature.inputs, response.inputs), (signature.outputs, response.outputs)):
        for spec in specs:
            meta = tensors.tensor_metadata(spec)
            target.add(name=meta["name"], datatype=meta["datatype"], shape=meta["shape"])
    return response


def server_metadata_response(version: str) -> Any:
    return protos().pb2.ServerMetadataResponse(
        name="rnnkit", version=version, extensions=list(kserve_codec.SERVER_EXTENSIONS)
    )


def model_version(text: str) -> int | None:
    """A request's ``model_version`` string: "" = the newest, else an integer."""
    if not text:
        return None
    return parse_version(text)
