"""What a model takes and returns, read from ``rnnkit.json``, and the input check against it.

The manifest is the only description the server trusts (ARCHITECTURE.md contract 3): the
same names, dtypes and shapes are in the SavedModel signature, the ONNX graph and the
manifest, so inputs are validated here once, before any runtime sees them.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rnnkit_serving.core.defaults import MAX_BATCH_SIZE, MAX_REQUEST_ELEMENTS, MAX_SEQUENCE_LENGTH
from rnnkit_serving.core.repository_format import (  # the format's names, importable from here too
    DECODER_STEP_SIGNATURE,
    DEFAULT_SIGNATURE,
    ENCODER_SIGNATURE,
    MANIFEST,
    MANIFEST_FORMAT,
    STEP_SIGNATURE,
    STREAMING_ENCODER_DECODER,
    STREAMING_STEP,
    SUPPORTED_DTYPES,
)
from rnnkit_serving.errors import ModelLoadError, ValidationError

# SignatureDef method name both TF Serving codecs (REST metadata, gRPC metadata) print
METHOD_PREDICT = "tensorflow/serving/predict"
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

    # computed once per signature (every request reads them); callers must not mutate the lists
    @functools.cached_property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @functools.cached_property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @functools.cached_property
    def input_specs(self) -> dict[str, TensorSpec]:
        """The inputs by name."""
        return {t.name: t for t in self.inputs}

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
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(
                f"unsupported manifest format {data.get('format')!r} (this server reads format {MANIFEST_FORMAT})"
            )
        inputs = tuple(TensorSpec.from_json(t) for t in data["inputs"])
        outputs = tuple(TensorSpec.from_json(t) for t in data["outputs"])
        signatures = {DEFAULT_SIGNATURE: Signature(DEFAULT_SIGNATURE, inputs, outputs)}
        streaming = data.get("streaming") or {}
        states: tuple[StatePair, ...] = ()
        # A streamable model's step graph exists in every format it was exported in (the SavedModel's
        # `step` signature, `step.onnx`); manifests older than `mode` only had step models.
        if streaming.get("streamable") and streaming.get("mode", STREAMING_STEP) == STREAMING_STEP:
            states = tuple(
                StatePair(str(s["input"]), str(s["output"]), int(s["units"])) for s in streaming.get("states") or []
            )
            state_in = tuple(TensorSpec(s.input, "float32", (None, s.units)) for s in states)
            state_out = tuple(TensorSpec(s.output, "float32", (None, s.units)) for s in states)
            signatures[STEP_SIGNATURE] = Signature(STEP_SIGNATURE, inputs + state_in, outputs + state_out)
        reason = streaming.get("reason")
        pair = streaming.get(STREAMING_ENCODER_DECODER) if streaming.get("mode") == STREAMING_ENCODER_DECODER else None
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


# The server's default request limits (rnnkit_serving.core.defaults; each has a flag that raises it).
DEFAULT_MAX_BATCH_SIZE = MAX_BATCH_SIZE  # --max_batch_size
DEFAULT_MAX_SEQUENCE_LENGTH = MAX_SEQUENCE_LENGTH  # --max_sequence_length
DEFAULT_MAX_REQUEST_ELEMENTS = MAX_REQUEST_ELEMENTS  # --max_request_elements
MAX_RANK = 32  # the most axes an input may declare (numpy's own limit is 64; no model here takes > 4)
MAX_AXIS = 1 << 62  # the longest axis when no element budget is set (numpy's axes are int64)


@dataclass(frozen=True)
class Limits:
    """Server-side bounds on one request (``None`` = unbounded)."""

    max_batch_size: int | None = None
    max_sequence_length: int | None = None
    max_elements: int | None = None  # elements of all inputs of one request together

    def tighter(self, other: Limits) -> Limits:
        """Each bound as the smaller of this one's and `other`'s (``None`` = no bound on that side)."""
        return _tighter(self, other)


@functools.lru_cache(maxsize=64)  # every request asks for server ⊓ version: a handful of distinct pairs
def _tighter(one: Limits, other: Limits) -> Limits:
    def least(a: int | None, b: int | None) -> int | None:
        return b if a is None else a if b is None else min(a, b)

    return Limits(
        least(one.max_batch_size, other.max_batch_size),
        least(one.max_sequence_length, other.max_sequence_length),
        least(one.max_elements, other.max_elements),
    )


NO_LIMITS = Limits()
DEFAULT_LIMITS = Limits(DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_SEQUENCE_LENGTH, DEFAULT_MAX_REQUEST_ELEMENTS)


class ElementBudget:
    """The elements one request may still declare (``--max_request_elements``), shared by its inputs.

    Codecs call :meth:`take` with each input's *declared* shape before they build an array, so a
    request that declares more than the budget is refused without allocating it.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0

    def take(self, name: str, shape: Sequence[int]) -> int:
        """Account for input `name` of `shape`; its element count. Refuses ranks above ``MAX_RANK``."""
        if len(shape) > MAX_RANK:
            raise ValidationError(
                f"input '{name}' declares {len(shape)} axes, above the most this server accepts ({MAX_RANK})"
            )
        shape = tuple(map(int, shape))  # Python ints: a product of numpy ints would wrap around silently
        count = math.prod(shape)
        if self.limit is not None and self.used + count > self.limit:
            others = f" ({self.used} taken by the inputs before it)" if self.used else ""
            raise ValidationError(
                f"input '{name}' declares shape {list(shape)}: {count} elements; a request may hold "
                f"at most {self.limit} elements in all{others} (--max_request_elements)"
            )
        widest = max(shape, default=0)
        cap = self.limit if self.limit is not None else MAX_AXIS
        if widest > cap:  # even with another axis 0 (no elements), numpy cannot hold such a shape
            raise ValidationError(
                f"input '{name}' declares shape {list(shape)}: an axis of {widest} is above the most "
                f"a request may hold ({cap} elements; --max_request_elements)"
            )
        self.used += count
        return count


def check_finite(inputs: Mapping[str, Any]) -> None:
    """Refuse NaN and infinity in floating-point inputs, naming the input and the first bad index.

    ONNX Runtime's fused LSTM/GRU turn NaN inputs into finite outputs (Keras and TF give NaN), so a
    non-finite input would otherwise get a plausible-looking answer.
    """
    for name, value in inputs.items():
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
        if array.dtype.kind != "f" or array.size == 0:
            continue
        finite = np.isfinite(array)
        if finite.all():
            continue
        flat = int(np.argmin(finite.reshape(-1)))  # the first False
        index = [int(i) for i in np.unravel_index(flat, array.shape)]
        bad = float(array.reshape(-1)[flat])
        raise ValidationError(
            f"input '{name}' has a non-finite value ({bad}) at {index}; the server refuses NaN and infinity "
            "(--allow_non_finite_inputs passes them to the model)"
        )


def _kind_ok(received: np.dtype, expected: np.dtype) -> bool:
    if expected.kind in "fc":
        return received.kind in "iuf"
    if expected.kind in "iu":
        return received.kind in "iu"
    if expected.kind == "b":
        return received.kind == "b"
    return received.kind in "USO"


@functools.lru_cache(maxsize=64)  # the dtype names of signatures: a handful
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
    if len(inputs) != len(expected_names) or not all(n in inputs for n in expected_names):
        missing = [n for n in expected_names if n not in inputs]
        extra = sorted(str(n) for n in inputs if n not in expected_names)
        raise ValidationError(
            f"signature '{signature.name}' expects inputs {expected_names}; missing {missing}, unexpected {extra}"
        )
    arrays: dict[str, np.ndarray] = {}
    batch: tuple[str, int] | None = None
    budget = ElementBudget(limits.max_elements)  # a backstop: codecs check declared shapes before this
    for spec in signature.inputs:
        value = inputs[spec.name]
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
        budget.take(spec.name, array.shape)
        want = numpy_dtype(spec.dtype)
        if array.dtype != want:
            if not _kind_ok(array.dtype, want):
                raise ValidationError(f"input '{spec.name}' expects dtype {spec.dtype}, received {array.dtype.name}")
            with np.errstate(over="ignore"):  # float64 beyond float32 becomes inf (see check_finite)
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
        # time is axis 1 of a (batch, time, features) input and of (batch, time) integer token ids, when its length
        # is not fixed (a (batch, n) float input is a vector, not a sequence: the element budget bounds it)
        if spec.shape[1:2] == (None,) and (spec.rank >= 3 or (spec.rank == 2 and array.dtype.kind in "iu")) and (
            limits.max_sequence_length is not None
        ):
            steps = int(array.shape[1])
            if steps > limits.max_sequence_length:
                raise ValidationError(
                    f"input '{spec.name}' has {steps} time steps, above the server limit "
                    f"{limits.max_sequence_length} (--max_sequence_length)"
                )
        arrays[spec.name] = array
    return arrays
