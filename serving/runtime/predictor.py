"""``Predictor``: one model version behind ``predict({name: array}) -> {name: array}``.

    >>> p = Predictor.load("models/rnn")              # newest version, ONNX Runtime, CPU
    >>> p.predict({"frames": x})["scores"]
    >>> p.signature().inputs                          # names, dtypes, shapes from rnnkit.json
    >>> p.close()

Inputs are checked against ``rnnkit.json`` (names, dtypes, ranks, fixed dims, batch and
sequence limits) before they reach the runtime. No keras, rnnkit or export import is needed;
TensorFlow is imported only by ``backend="tf"``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import numpy as np

from rnnkit_serving.core.identifiers import MAX_VERSION, ascii_uint
from rnnkit_serving.core.repository_format import FP32, ONNX_FILES, ONNX_FORMAT, SAVEDMODEL_FORMAT
from rnnkit_serving.core.signature import (
    DECODER_STEP_SIGNATURE,
    DEFAULT_SIGNATURE,
    ENCODER_SIGNATURE,
    MANIFEST,
    NO_LIMITS,
    STEP_SIGNATURE,
    Limits,
    Manifest,
    Signature,
    StatePair,
    validate,
)
from rnnkit_serving.errors import Code, ModelLoadError, ServingError
from rnnkit_serving.runtime.backend import BACKENDS, DEFAULT_RUNTIME, DEVICES, VARIANTS, Backend, RuntimeOptions
from rnnkit_serving.runtime.streaming import EncoderGraph, Session, StepGraph

log = logging.getLogger("rnnkit.serving")


class RepositoryUnreadableError(OSError):
    """A model directory could not be read (EMFILE, ENOMEM, EIO, EACCES...): what is on disk is unknown,
    which is not the same as nothing being there."""


def version_dirs(model_dir: str) -> dict[int, str]:
    """Published versions under a model directory: integer names (ASCII digits) holding a manifest.

    Hidden staging directories (``.rnnkit-tmp-*``) and other names are ignored, as TF Serving
    ignores non-numeric children. A model directory that does not exist has no versions; one that
    cannot be read raises :class:`RepositoryUnreadableError`, so that a poller keeps what it serves.
    """
    found: dict[int, str] = {}
    try:
        entries = os.listdir(model_dir)
    except (FileNotFoundError, NotADirectoryError):
        return found
    except OSError as error:
        raise RepositoryUnreadableError(error.errno, f"cannot list {model_dir!r}: {error}") from error
    for entry in entries:
        number = ascii_uint(entry, MAX_VERSION)
        if number is None:
            continue
        path = os.path.join(model_dir, entry)
        try:
            os.stat(os.path.join(path, MANIFEST))
        except (FileNotFoundError, NotADirectoryError):
            continue  # not (yet) a published version
        except OSError as error:
            raise RepositoryUnreadableError(error.errno, f"cannot read {path!r}: {error}") from error
        if number not in found or entry == str(number):  # "1" and "01": the canonical spelling serves,
            found[number] = path  # whatever order the directory lists them in
    return found


def resolve_version_dir(path: str) -> str:
    """A version directory as given, or the newest version under a model directory."""
    if os.path.isfile(os.path.join(path, MANIFEST)):
        return path
    if not os.path.isdir(path):
        raise ModelLoadError(f"model path {path!r} does not exist")
    found = version_dirs(path)
    if not found:
        raise ModelLoadError(
            f"no versions under {path!r}: expected integer version directories holding {MANIFEST} "
            "(a model directory) or a version directory itself"
        )
    return found[max(found)]


def variant_files(version_dir: str, manifest: Manifest, variant: str) -> dict[str, str]:
    """Signature -> ONNX file of `variant` (``fp32``: ``model.onnx``/``step.onnx``; ``int8``/``fp16``:
    the files export published for it, after its accuracy gate)."""
    graphs = {name: manifest.onnx_files.get(name) or ONNX_FILES[name] for name in manifest.signatures}
    if variant == FP32:
        return graphs
    entry = manifest.variants.get(variant)
    if entry is None:
        raise ModelLoadError(
            f"{version_dir!r} has no {variant} variant: it was exported without `--quantize {variant}` "
            f"(published variants: {[v for v, e in manifest.variants.items() if e.get('published')] or 'none'})"
        )
    if not entry.get("published"):
        raise ModelLoadError(
            f"{version_dir!r} has no {variant} variant: export's accuracy gate refused it: {entry.get('reason')}"
        )
    files = entry.get("files") or {}
    missing = [graph for graph in graphs.values() if graph not in files]
    if missing:
        raise ModelLoadError(f"{version_dir!r}: the {variant} variant has no file for {missing} (has {files})")
    return {name: str(files[graph]) for name, graph in graphs.items()}


def _make_backend(
    kind: str,
    version_dir: str,
    manifest: Manifest,
    signature: Signature,
    device: str,
    options: RuntimeOptions,
    files: Mapping[str, str],
) -> Backend:
    if kind == "onnx":
        from rnnkit_serving.runtime.onnx_backend import OnnxBackend

        if ONNX_FORMAT not in manifest.formats:
            raise ModelLoadError(f"{version_dir!r} was exported without ONNX (formats {list(manifest.formats)})")
        return OnnxBackend(os.path.join(version_dir, files[signature.name]), signature, device, options)
    from rnnkit_serving.runtime.tf_backend import TFBackend

    if SAVEDMODEL_FORMAT not in manifest.formats:
        raise ModelLoadError(f"{version_dir!r} was exported without a SavedModel (formats {list(manifest.formats)})")
    return TFBackend(version_dir, signature, device, options)


class Predictor:
    """A loaded model version: its signatures, each run by a backend."""

    def __init__(
        self,
        name: str,
        version: int,
        backends: Mapping[str, Backend],
        limits: Limits = NO_LIMITS,
        path: str | None = None,
        backend_name: str = "custom",
        manifest: Manifest | None = None,
        variant: str = FP32,
    ) -> None:
        if DEFAULT_SIGNATURE not in backends:
            raise ValueError(f"a Predictor needs a '{DEFAULT_SIGNATURE}' backend; received {sorted(backends)}")
        self.name = name
        self.version = version
        self.path = path
        self.limits = limits
        self.backend_name = backend_name
        self.manifest = manifest
        self.variant = variant
        self._backends = dict(backends)
        self._closed = False
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        path: str,
        backend: str = "onnx",
        device: str = "cpu",
        *,
        limits: Limits = NO_LIMITS,
        options: RuntimeOptions = DEFAULT_RUNTIME,
        variant: str | None = None,
    ) -> Predictor:
        """Load a version directory, or the newest version of a model directory.

        ``backend``: ``"onnx"`` (ONNX Runtime) or ``"tf"`` (TensorFlow SavedModel);
        ``device``: ``"cpu"``, ``"gpu"`` (CUDA, falling back to CPU with a logged warning) or
        ``"auto"`` (GPU when present).
        ``variant`` (default ``options.variant``, ``"fp32"``): ``"int8"`` or ``"fp16"`` run the
        reduced-precision graphs export published behind its accuracy gate (``model.int8.onnx``,
        ``step.int8.onnx``; ONNX backend only); a version without that variant does not load
        (ModelLoadError with export's reason). fp16 is meant for the CUDA provider: on a CPU it
        runs (ONNX Runtime inserts casts around float16 nodes it has no CPU kernel for) with a
        logged warning.
        """
        if backend not in BACKENDS:
            raise ValueError(f"argument `backend` must be one of {BACKENDS}. Received: backend={backend!r}")
        if device not in DEVICES:
            raise ValueError(f"argument `device` must be one of {DEVICES}. Received: device={device!r}")
        variant = options.variant if variant is None else variant
        if variant not in VARIANTS:
            raise ValueError(f"argument `variant` must be one of {VARIANTS}. Received: variant={variant!r}")
        if variant != FP32 and backend != "onnx":
            raise ValueError(
                f"variant {variant!r} needs backend 'onnx' (TensorFlow serves the fp32 SavedModel). "
                f"Received: backend={backend!r}"
            )
        version_dir = resolve_version_dir(os.path.abspath(path))
        manifest = Manifest.read(version_dir)
        files = variant_files(version_dir, manifest, variant) if backend == "onnx" else {}
        backends: dict[str, Backend] = {}
        try:
            for signature in manifest.signatures.values():
                backends[signature.name] = _make_backend(
                    backend, version_dir, manifest, signature, device, options, files
                )
        except BaseException:
            for made in backends.values():
                made.close()
            raise
        named = ascii_uint(os.path.basename(version_dir), MAX_VERSION)
        version = manifest.version if named is None else named
        predictor = cls(manifest.model_name, version, backends, limits, version_dir, backend, manifest, variant)
        if variant == "fp16" and all(facts.get("device") == "cpu" for facts in predictor.describe().values()):
            log.warning(
                "model '%s' version %d: serving the fp16 variant on CPU; it is meant for GPUs (ONNX Runtime runs "
                "most float16 nodes on CPU through inserted casts, usually slower than fp32)",
                predictor.name,
                version,
            )
        return predictor

    @property
    def signatures(self) -> dict[str, Signature]:
        return {name: b.signature() for name, b in self._backends.items()}

    def signature(self, name: str = DEFAULT_SIGNATURE) -> Signature:
        return self._backend(name).signature()

    def _backend(self, signature_name: str) -> Backend:
        if self._closed:
            raise ServingError(Code.UNAVAILABLE, f"model '{self.name}' version {self.version} is closed")
        try:
            return self._backends[signature_name or DEFAULT_SIGNATURE]
        except KeyError:
            raise ServingError(
                Code.FAILED_PRECONDITION, f'Serving signature key "{signature_name}" not found.'
            ) from None

    def predict(self, inputs: Mapping[str, Any], signature_name: str = DEFAULT_SIGNATURE) -> dict[str, np.ndarray]:
        """Validate `inputs` (name -> array-like) and run the signature; outputs by name."""
        return self.run(self.validate(inputs, signature_name), signature_name)

    def validate(self, inputs: Mapping[str, Any], signature_name: str = DEFAULT_SIGNATURE) -> dict[str, np.ndarray]:
        """`inputs` checked against the signature and the limits, as arrays in the signature's dtypes."""
        return validate(self._backend(signature_name).signature(), inputs, self.limits)

    def run(self, arrays: Mapping[str, np.ndarray], signature_name: str = DEFAULT_SIGNATURE) -> dict[str, np.ndarray]:
        """Run the signature on arrays that :meth:`validate` returned (the batcher merges those)."""
        return self._backend(signature_name).predict(arrays)

    # ------------------------------------------------------------------------------ streaming

    @property
    def zero_padding_invariant(self) -> bool:
        """Whether requests of different lengths may be batched by zero right-padding (from rnnkit.json)."""
        return bool(self.manifest is not None and self.manifest.zero_padding_invariant)

    @property
    def encoder_decoder(self) -> bool:
        """Whether sessions start from an encoder's outputs and step the ``decoder_step`` graph
        (rnnkit.json ``streaming.mode == "encoder_decoder"``; without a manifest: the version has
        ``encoder`` and ``decoder_step`` backends and no ``step``)."""
        if self.manifest is not None:
            return self.manifest.encoder_decoder
        backends = self._backends
        return STEP_SIGNATURE not in backends and {ENCODER_SIGNATURE, DECODER_STEP_SIGNATURE} <= set(backends)

    @property
    def step_signature_name(self) -> str:
        """The signature a session steps: ``decoder_step`` for encoder-decoder models, else ``step``."""
        return DECODER_STEP_SIGNATURE if self.encoder_decoder else STEP_SIGNATURE

    @property
    def states(self) -> tuple[StatePair, ...]:
        """The step graph's recurrent states (input, output, units); empty when the model cannot stream."""
        step_name = self.step_signature_name
        if step_name not in self._backends:
            return ()
        if self.manifest is not None and self.manifest.states:
            return self.manifest.states
        # no manifest (a hand-built predictor): the step signature's extra tensors, paired in order
        step, default = self._backends[step_name].signature(), self._backends[DEFAULT_SIGNATURE].signature()
        ins = [s for s in step.inputs if s.name not in default.input_names]
        outs = [s for s in step.outputs if s.name not in default.output_names]
        return tuple(StatePair(i.name, o.name, int(i.shape[-1] or 0)) for i, o in zip(ins, outs))

    def streaming_error(self) -> ServingError | None:
        """Why this version cannot stream (the reason export recorded), or None when it can."""
        needed = [self.step_signature_name] + ([ENCODER_SIGNATURE] if self.encoder_decoder else [])
        if all(name in self._backends for name in needed) and self.states:
            return None
        reason = (self.manifest.streaming_reason if self.manifest is not None else None) or (
            f"it has no '{STEP_SIGNATURE}' signature"
        )
        return ServingError(
            Code.FAILED_PRECONDITION,
            f"model '{self.name}' version {self.version} cannot stream (no sessions): {reason}",
        )

    def step_graph(self) -> StepGraph:
        """The ``step`` graph sessions run: states, chunk signature, outputs, backend, limits; for
        encoder-decoder models the ``decoder_step`` graph with the ``encoder`` attached.

        Raises the :class:`ServingError` of :meth:`streaming_error` when this version cannot stream.
        """
        refused = self.streaming_error()
        if refused is not None:
            raise refused
        pairs = self.states
        step = self._backend(self.step_signature_name)
        step_signature = step.signature()
        state_inputs = {p.input for p in pairs}
        state_outputs = {p.output for p in pairs}
        chunk_inputs = tuple(s for s in step_signature.inputs if s.name not in state_inputs)
        default_outputs = self.signature(DEFAULT_SIGNATURE).output_names
        encoder = None
        if self.encoder_decoder:
            backend = self._backend(ENCODER_SIGNATURE)
            encoder = EncoderGraph(backend.signature(), backend)
        return StepGraph(
            self.name,
            self.version,
            pairs,
            Signature(step_signature.name, chunk_inputs, step_signature.outputs),
            tuple(n for n in default_outputs if n not in state_outputs),
            step,
            self.limits,
            encoder,
        )

    def session(self) -> Session:
        """A streaming session: ``step(chunk) -> outputs`` carrying the RNN state between chunks.

        States start at zeros; ``reset()`` zeroes them, ``close()`` ends the session. Bidirectional
        (non-streamable) models raise a :class:`ServingError` naming export's reason. Encoder-decoder
        models start from the encoder's outputs: the first ``step`` carries the source inputs (and
        optionally a target chunk), later ones target chunks (see :mod:`rnnkit_serving.runtime.streaming`).
        """
        return Session(self.step_graph())

    def describe(self) -> dict[str, Any]:
        """Backend facts per signature (runtime, variant, file, device, providers, fallback)."""
        return {name: {"variant": self.variant, **b.describe()} for name, b in self._backends.items()}

    @property
    def fallback(self) -> str | None:
        """The first device fallback among the signatures' backends, or None."""
        for facts in self.describe().values():
            if facts.get("fallback"):
                return str(facts["fallback"])
        return None

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for backend in self._backends.values():
            backend.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Predictor({self.name!r}, version={self.version}, backend={self.backend_name!r}, variant={self.variant!r})"
        )
