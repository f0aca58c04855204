"""What a model takes and returns, read from ``rnnkit.json``, and the input check against it.

The manifest is the only description the server trusts (ARCHITECTURE.md contract 3): the
same names, dtypes and shapes are in the SavedModel signature, the ONNX graph and the
manifest, so inputs are validated here once, before any runtime sees them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving.errors import ModelLoadError, ValidationError

MANIFEST = "rnnkit.json"
DEFAULT_SIGNATURE = "serving_default"
STEP_SIGNATURE = "step"
# encoder-decoder models: the encoder (source inputs -> the decoder's initial states) and the decoder step graph
ENCODER_SIGNATURE = "encoder"
DECODER_STEP_SIGNATURE = "decoder_step"
# SignatureDef method name both TF Serving codecs (REST metadata, gRPC metadata) print
METHOD_PREDICT = "tensorflow/serving/predict"
# Dtypes a manifest may name (numpy names); anything else is refused at load time.
SUPPORTED_DTYPES = ("float32", "float64", "float16", "int8", "int16", "int32", "int64", "uint8", "bool", "str")
# numpy dtype name -> (TensorFlow DataType name, number); the wire names of both codecs.
DATA_TYPES: dict[str, tuple[str, int]] = {
    "float32": ("DT_FLOAT", 1),
    "float64": ("DT_DOUBLE", 2),
    "int32": ("DT_INT32", 3),
    "uint8": ("DT_UINT8", 4),
    "int16": ("DT_INT16", 5),
    "int8": ("DT_INT8", 6),
    "str": ("DT_STRING", 7),
    "int64": ("DT_INT64", 9),
    "bool": ("DT_BOOL", 10),
    "float16": ("DT_HALF", 19),
}


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor: numpy dtype name and shape, ``None`` for a dynamic axis (axis 0 is the batch)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)

    def shape_text(self) -> str:
        return "[" + ", ".join("-1" if d is None else str(d) for d in self.shape) + "]"

    @classmethod
    def from_json(cls, item: Mapping[str, Any]) -> TensorSpec:
        dtype = str(item["dtype"])
        if dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"tensor {item['name']!r}: dtype {dtype!r} is not one of {SUPPORTED_DTYPES}")
        return cls(str(item["name"]), dtype, tuple(None if d is None else int(d) for d in item["shape"]))


@dataclass(frozen=True)
class Signature:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)


@dataclass(frozen=True)
class StatePair:
    """One recurrent state of a step graph: fed as `input`, returned as `output` for the next chunk."""

    input: str
    output: str
    units: int


@dataclass(frozen=True)
class Manifest:
    """The parts of ``rnnkit.json`` the server uses."""

    model_name: str
    version: int
    formats: tuple[str, ...]
    signatures: Mapping[str, Signature]
    # why the model cannot stream (from export), when it cannot
    streaming_reason: str | None = None
    states: tuple[StatePair, ...] = ()
    # appending all-zero time steps leaves the answers unchanged: requests of different lengths
    # may be batched by zero right-padding (sequence outputs sliced back)
    zero_padding_invariant: bool = False
    # encoder-decoder models: sessions start from the encoder's outputs and step `decoder_step`
    encoder_decoder: bool = False
    # signature name -> ONNX file, where rnnkit.json names it (the encoder-decoder graphs)
    onnx_files: Mapping[str, str] = field(default_factory=dict)
    # reduced-precision variants export wrote: variant -> {"published", "reason", "files": {graph: file}, ...}
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def read(cls, version_dir: str) -> Manifest:
        path = os.path.join(version_dir, MANIFEST)
        try:
            with open(path) as handle:
                data = json.load(handle)
        except FileNotFoundError as error:
            raise ModelLoadError(f"{version_dir!r} is not an rnnkit version directory: no {MANIFEST}") from error
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"cannot read {path!r}: {error}") from error
        try:
            return cls.from_json(data)
        except (KeyError, TypeError, ValueError) as error:
            raise ModelLoadError(f"{path!r} is not a valid rnnkit manifest: {error}") from error

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        if data.get("format") != 1:
            raise ValueError(f"unsupported manifest format {data.get('format')!r} (this server reads format 1)")
        inputs = tuple(TensorSpec.from_json(t) for t in data["inputs"])
        outputs = tuple(TensorSpec.from_json(t) for t in data["outputs"])
        signatures = {DEFAULT_SIGNATURE: Signature(DEFAULT_SIGNATURE, inputs, outputs)}
        streaming = data.get("streaming") or {}
        names = data.get("signatures") or [DEFAULT_SIGNATURE]
        states: tuple[StatePair, ...] = ()
        # A step graph exists in every exported format (the SavedModel's `step` signature, `step.onnx`):
        # an ONNX-only export lists no SavedModel signatures, yet streams.
        has_step = STEP_SIGNATURE in names or (not data.get("signatures") and streaming.get("mode", "step") == "step")
        if streaming.get("streamable") and has_step:
            states = tuple(
                StatePair(str(s["input"]), str(s["output"]), int(s["units"])) for s in streaming.get("states") or []
            )
            state_in = tuple(TensorSpec(s.input, "float32", (None, s.units)) for s in states)
            state_out = tuple(TensorSpec(s.output, "float32", (None, s.units)) for s in states)
            signatures[STEP_SIGNATURE] = Signature(STEP_SIGNATURE, inputs + state_in, outputs + state_out)
        reason = streaming.get("reason")
        pair = streaming.get("encoder_decoder") if streaming.get("mode") == "encoder_decoder" else None
        files: dict[str, str] = {}
        if pair:
            states = _encoder_decoder(pair, signatures, files)
        return cls(
            str(data["model_name"]),
            int(data["version"]),
            tuple(data.get("formats") or ()),
            signatures,
            None if reason is None else str(reason),
            states,
            bool(data.get("zero_padding_invariant", False)),
            bool(pair),
            files,
            {str(k): dict(v) for k, v in (data.get("variants") or {}).items()},
        )


def _encoder_decoder(
    pair: Mapping[str, Any], signatures: dict[str, Signature], files: dict[str, str]
) -> tuple[StatePair, ...]:
    """Read ``streaming.encoder_decoder``: add the encoder and decoder step signatures and their ONNX
    files; the decoder's state pairs. The encoder must return exactly the states the decoder step takes."""
    for name in (ENCODER_SIGNATURE, DECODER_STEP_SIGNATURE):
        entry = pair[name]
        signatures[name] = Signature(
            name,
            tuple(TensorSpec.from_json(t) for t in entry["inputs"]),
            tuple(TensorSpec.from_json(t) for t in entry["outputs"]),
        )
        files[name] = str(entry["file"])
    states = tuple(StatePair(str(s["input"]), str(s["output"]), int(s["units"])) for s in pair["states"])
    encoder, step = signatures[ENCODER_SIGNATURE], signatures[DECODER_STEP_SIGNATURE]
    wanted = sorted(s.input for s in states)
    if not states or sorted(encoder.output_names) != wanted:
        raise ValueError(
            f"streaming.encoder_decoder: the encoder's outputs {encoder.output_names} must be the decoder "
            f"step's state inputs {wanted}"
        )
    missing = [s.input for s in states if s.input not in step.input_names]
    missing += [s.output for s in states if s.output not in step.output_names]
    if missing:
        raise ValueError(f"streaming.encoder_decoder: the decoder step graph lacks the state tensors {missing}")
    return states


@dataclass(frozen=True)
class Limits:
    """Server-side bounds on one request (``None`` = unbounded)."""

    max_batch_size: int | None = None
    max_sequence_length: int | None = None


NO_LIMITS = Limits()


def _kind_ok(received: np.dtype, expected: np.dtype) -> bool:
    if expected.kind in "fc":
        return received.kind in "iuf"
    if expected.kind in "iu":
        return received.kind in "iu"
    if expected.kind == "b":
        return received.kind == "b"
    return received.kind in "USO"


def numpy_dtype(name: str) -> np.dtype:
    return np.dtype(object) if name == "str" else np.dtype(name)


def validate(signature: Signature, inputs: Mapping[str, Any], limits: Limits = NO_LIMITS) -> dict[str, np.ndarray]:
    """Check `inputs` against `signature` and `limits`; return arrays in the signature's dtypes.

    Numbers are converted within their kind (float64 -> float32, int32 -> int64, ints -> floats);
    anything else (floats for an int input, strings for numbers) is refused. Every message
    names the input, what was expected and what was received.
    """
    if not isinstance(inputs, Mapping):
        raise ValidationError(
            f"inputs must be a mapping of input name to array; expected names {signature.input_names}, "
            f"received {type(inputs).__name__}"
        )
    expected_names = signature.input_names
    missing = [n for n in expected_names if n not in inputs]
    extra = sorted(str(n) for n in inputs if n not in expected_names)
    if missing or extra:
        raise ValidationError(
            f"signature '{signature.name}' expects inputs {expected_names}; missing {missing}, unexpected {extra}"
        )
    arrays: dict[str, np.ndarray] = {}
    batch: tuple[str, int] | None = None
    for spec in signature.inputs:
        value = inputs[spec.name]
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
        want = numpy_dtype(spec.dtype)
        if array.dtype != want:
            if not _kind_ok(array.dtype, want):
                raise ValidationError(f"input '{spec.name}' expects dtype {spec.dtype}, received {array.dtype.name}")
            array = array.astype(want)
        if array.ndim != spec.rank:
            raise ValidationError(
                f"input '{spec.name}' expects rank {spec.rank} with shape {spec.shape_text()}, "
                f"received shape {list(array.shape)}"
            )
        for axis, (want_dim, got_dim) in enumerate(zip(spec.shape, array.shape)):
            if want_dim is not None and want_dim != got_dim:
                raise ValidationError(
                    f"input '{spec.name}' expects shape {spec.shape_text()}, received {list(array.shape)} "
                    f"(axis {axis} must be {want_dim})"
                )
            if got_dim == 0:
                raise ValidationError(f"input '{spec.name}' has an empty axis {axis}: shape {list(array.shape)}")
        if spec.rank:
            size = int(array.shape[0])
            if batch is not None and batch[1] != size:
                raise ValidationError(
                    f"inputs '{batch[0]}' and '{spec.name}' disagree on the batch size: {batch[1]} vs {size}"
                )
            batch = (spec.name, size)
            if limits.max_batch_size is not None and size > limits.max_batch_size:
                raise ValidationError(
                    f"input '{spec.name}' has batch size {size}, above the server limit {limits.max_batch_size} "
                    "(--max_batch_size)"
                )
        if spec.rank >= 3 and spec.shape[1] is None and limits.max_sequence_length is not None:
            steps = int(array.shape[1])
            if steps > limits.max_sequence_length:
                raise ValidationError(
                    f"input '{spec.name}' has {steps} time steps, above the server limit "
                    f"{limits.max_sequence_length} (--max_sequence_length)"
                )
        arrays[spec.name] = array
    return arrays
