"""``export_model``: one call writes a verified version into a model repository.

One export, in order: check the options (`ExportOptions`) -> plan streaming -> inside one
`repository.publication`: write the version (`_write_version`: the SavedModel phase, the ONNX
phase, the streaming-graph phase, the parity phase; each returns what it produced, gathered in
`VersionArtifacts`) -> the gated variants -> ``rnnkit.json`` -> the server configs -> commit.
A streaming graph that fails (`StepGraphError`) is dropped and the version written again without
it (``streaming="auto"``), or fails the export (``"required"``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rnnkit_export.analysis.model_io import ModelIO
from rnnkit_export.analysis.twins import with_rnnkit_twins
from rnnkit_export.onnx.convert import StrictExportError, to_onnx, to_onnx_encoder, to_onnx_step
from rnnkit_export.report import DEFAULT_TOLERANCE, FORMATS, ExportError, ExportReport
from rnnkit_export.repository import publish as repository
from rnnkit_export.savedmodel.warmup import write_warmup
from rnnkit_export.savedmodel.writer import gpu_only_ops, write_savedmodel
from rnnkit_export.streaming.step import STREAMING_MODES, StreamingPlan, plan_streaming
from rnnkit_export.variants import (
    DEFAULT_MIN_AGREEMENT,
    build_variants,
    check_min_agreement,
    check_variants,
    load_calibration,
)
from rnnkit_export.verify.parity import GraphKind, ParityResult, check_parity, zero_padding_invariant
from rnnkit_serving.core.repository_format import (
    DECODER_STEP_FILE,
    DECODER_STEP_SIGNATURE,
    DEFAULT_SIGNATURE,
    ENCODER_FILE,
    ENCODER_SIGNATURE,
    MANIFEST,
    MODEL_FILE,
    ONNX_FORMAT,
    SAVEDMODEL_FORMAT,
    STEP_FILE,
    STEP_SIGNATURE,
    STREAMING_ENCODER_DECODER,
    STREAMING_STEP,
)

log = logging.getLogger("rnnkit.export")


@dataclass(frozen=True)
class ExportOptions:
    """How `export_model` exports; each field is also a keyword argument of `export_model`.

    - ``version``: the version number to write (default: the next integer under the model).
    - ``formats``: a subset of ``FORMATS`` (a sequence or a comma-separated string).
    - ``opset``: the ONNX opset (14-18).
    - ``strict``: a recurrent layer that cannot be fused is an error instead of a loop fallback.
    - ``verify``: check parity Keras vs SavedModel vs ONNX Runtime before publishing.
    - ``tolerance``: the parity tolerance, max |difference| (float32).
    - ``streaming``: ``"auto"`` | ``"off"`` | ``"required"`` (see `export_model`).
    - ``serving_base_path``: where servers will see the repository (``models.config`` paths).
    - ``quantize``: reduced-precision variants to write behind the gate (``"int8"``, ``"fp16"``).
    - ``variant_min_agreement``: the gate's least arg-max agreement with fp32.
    - ``calibration_data``: a ``.npz`` of extra gate inputs (one array per model input).
    """

    version: int | None = None
    formats: Sequence[str] | str = FORMATS
    opset: int = 17
    strict: bool = False
    verify: bool = True
    tolerance: float = DEFAULT_TOLERANCE
    streaming: str = "auto"
    serving_base_path: str | None = None
    quantize: str | Sequence[str] | None = None
    variant_min_agreement: float = DEFAULT_MIN_AGREEMENT
    calibration_data: str | None = None


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(ExportOptions))


class StepGraphError(Exception):
    """A streaming graph (``step``, ``encoder``, ``decoder_step``) could not be written or does not
    match the full model. `export_model` handles it (drops the streaming graphs, or fails with
    ``--streaming required``); it never leaves `export_model`."""


@dataclass(frozen=True)
class SavedModelArtifacts:
    """The SavedModel phase: the signature names written and the warmup records."""

    signatures: list[str]
    warmup_records: int


@dataclass(frozen=True)
class OnnxArtifacts:
    """The ONNX phase (``model.onnx``): layers fused, layers left as loops (layer -> reason), and
    the op census (op type -> count)."""

    fused_layers: list[str]
    fallbacks: dict[str, str]
    op_census: dict[str, int]


@dataclass(frozen=True)
class StreamingGraphArtifacts:
    """The streaming-graph phase: the op census of each ONNX streaming graph (empty: not written)."""

    step_op_census: dict[str, int] = field(default_factory=dict)
    encoder_op_census: dict[str, int] = field(default_factory=dict)
    decoder_step_op_census: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class VersionArtifacts:
    """What `_write_version` wrote into a staged version directory, merged into the `ExportReport`
    by the caller (`report_fields`). A phase not run (format not chosen, ``verify=False``) is None.

    ``streaming``: the streaming plan the version was written with (``rnnkit.json``'s ``streaming``).
    """

    streaming: dict[str, Any]
    savedmodel: SavedModelArtifacts | None
    onnx: OnnxArtifacts | None
    streaming_graphs: StreamingGraphArtifacts
    parity: ParityResult | None

    def report_fields(self) -> dict[str, Any]:
        """`ExportReport` keyword arguments for what was written (the others keep their defaults)."""
        fields: dict[str, Any] = {"streaming": self.streaming, **dataclasses.asdict(self.streaming_graphs)}
        if self.savedmodel is not None:
            fields.update(signatures=self.savedmodel.signatures, warmup_records=self.savedmodel.warmup_records)
        if self.onnx is not None:
            fields.update(
                fused_layers=self.onnx.fused_layers, fallbacks=self.onnx.fallbacks, op_census=self.onnx.op_census
            )
        if self.parity is not None:
            fields["parity"] = self.parity.to_json()
        return fields


@dataclass(frozen=True)
class _VersionSpec:
    """One version to write: model name and version number, the formats (checked, in `FORMATS`
    order), and how graphs are converted (``opset``, ``strict``) and checked (``verify``, ``tolerance``)."""

    name: str
    version: int
    formats: list[str]
    opset: int
    strict: bool
    verify: bool
    tolerance: float


@dataclass(frozen=True)
class _Checked:
    """`ExportOptions` after validation: formats and variants normalized, paths checked."""

    formats: list[str]
    variants: list[str]
    min_agreement: float
    serving_base: str | None
    base: str


def _versions() -> dict[str, str]:
    import keras
    import onnx
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    import rnnkit

    return {
        "rnnkit": rnnkit.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tf2onnx": tf2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _check_formats(formats: Sequence[str] | str) -> list[str]:
    items = [f.strip() for f in formats.split(",")] if isinstance(formats, str) else list(formats)
    unknown = [f for f in items if f not in FORMATS]
    if unknown or not items:
        raise ValueError(f"argument `formats` must be a non-empty subset of {FORMATS}. Received: formats={items!r}")
    return [f for f in FORMATS if f in items]


def _options(options: ExportOptions | None, overrides: dict[str, Any]) -> ExportOptions:
    """`options` (default: `ExportOptions()`) with the keyword arguments of `export_model` applied."""
    if options is not None and not isinstance(options, ExportOptions):
        raise TypeError(
            f"export_model() argument `options` must be an ExportOptions. Received: {type(options).__name__}"
        )
    for key in overrides:
        if key not in OPTION_NAMES:
            raise TypeError(f"export_model() got an unexpected keyword argument {key!r}")
    return dataclasses.replace(options or ExportOptions(), **overrides)


def _check(model: Any, base_path: str, name: str, options: ExportOptions) -> _Checked:
    """Validate every argument (in this order: each error names the argument) before anything is written."""
    import keras

    if options.streaming not in STREAMING_MODES:
        raise ValueError(
            f"argument `streaming` must be one of {STREAMING_MODES}. Received: streaming={options.streaming!r}"
        )
    if not isinstance(model, keras.Model):
        raise ValueError(f"argument `model` must be a keras.Model. Received: {type(model).__name__}")
    formats = _check_formats(options.formats)
    variants = check_variants(options.quantize)
    min_agreement = check_min_agreement(options.variant_min_agreement)
    if variants and ONNX_FORMAT not in formats:
        raise ValueError(
            f"argument `quantize` needs the '{ONNX_FORMAT}' format. Received: formats={formats}, quantize={variants}"
        )
    if options.calibration_data is not None and not variants:
        raise ValueError("argument `calibration_data` is only used with `quantize` (the variants' accuracy gate)")
    repository.check_name(name)
    version = options.version
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise ValueError(f"argument `version` must be a positive integer. Received: version={version!r}")
    path = options.serving_base_path
    serving_base = None if path is None else repository.check_serving_base_path(path)
    return _Checked(formats, variants, min_agreement, serving_base, repository.check_base_path(base_path))


def export_model(
    model: Any,
    base_path: str,
    name: str,
    options: ExportOptions | None = None,
    *,
    _before_publish: Callable[[str], None] | None = None,
    **overrides: Any,
) -> ExportReport:
    """Export `model` as version `version` (default: next integer) of `name` under `base_path`.

    The options come as an `ExportOptions` (`options`) and/or as keyword arguments of the same
    names, which override it: ``export_model(model, "models", "m", formats="onnx")``.

    Writes SavedModel (signatures ``serving_default`` and, for streamable models, ``step``,
    plus the TF Serving warmup file) and/or ONNX (``model.onnx`` with fused recurrent ops,
    ``step.onnx``), checks parity Keras vs SavedModel vs ONNX Runtime (``verify``), writes
    ``rnnkit.json``, stages ``models.config`` and the Triton ``config.pbtxt`` files, fsyncs, then
    renames the version into place and replaces the configs (`repository.Publication`). On any
    failure nothing is published (no new version, configs unchanged) and ExportError is raised.
    ``strict``: a recurrent layer that cannot be fused is an error instead of a loop fallback.
    ``streaming``: ``"auto"`` builds step graphs only where chunked execution provably equals the
    full run (``rnnkit_export.analysis.streamability``; the reason is recorded when it does not), ``"off"`` never,
    ``"required"`` fails (naming the layer and reason) when the model cannot stream. In ``"auto"``
    a step graph that fails to build or to match the full model is dropped, never the full model.
    ``serving_base_path``: where servers will see `base_path` (``/models`` when the repository is
    mounted there in a container); ``models.config`` then names ``<serving_base_path>/<model>``
    instead of this machine's path.
    ``quantize``: ``"int8"``, ``"fp16"`` or both (comma-separated): a variant of every ONNX graph
    (``model.int8.onnx``, ``step.int8.onnx``, ...) staged in the same publication, written only
    if it passes the accuracy gate against the float32 graphs (``rnnkit_export.variants``: max |diff|
    within a documented tolerance, arg-max agreement of class-score outputs >=
    ``variant_min_agreement``) on the parity inputs and on ``calibration_data`` (a ``.npz``
    with one array per model input) when given. A refused variant does not stop the version;
    ``rnnkit.json``'s ``variants`` and the summary say why.
    ``_before_publish``: a test hook, called with the staged version directory before the commit.
    """
    options = _options(options, overrides)
    checked = _check(model, base_path, name, options)
    model_dir = os.path.join(checked.base, name)
    version = options.version or repository.next_version(model_dir)
    final = os.path.join(model_dir, str(version))

    io = ModelIO.of(model)
    calibration = None
    if options.calibration_data is not None:
        calibration = load_calibration(options.calibration_data, io.inputs)
    model, swapped = with_rnnkit_twins(model)
    plan = plan_streaming(model, io, options.streaming)
    required = options.streaming == "required"
    if required and plan.mode not in (STREAMING_STEP, STREAMING_ENCODER_DECODER):
        raise ExportError(
            f"--streaming required: model {name!r} cannot be streamed: {plan.reason}; nothing was published"
        )
    spec = _VersionSpec(
        name, version, checked.formats, options.opset, options.strict, options.verify, options.tolerance
    )
    versions = _versions()
    zero_padding = zero_padding_invariant(model, io)
    try:
        with repository.publication(final) as (pending, staging):
            written, plan = _write_version_or_without_streaming(model, io, plan, staging, spec, required)
            report = ExportReport(
                name,
                version,
                final,
                checked.formats,
                [t.to_json() for t in io.inputs],
                [t.to_json() for t in io.outputs],
                swapped_native_layers=swapped,
                versions=versions,
                opset=options.opset if ONNX_FORMAT in checked.formats else None,
                zero_padding_invariant=zero_padding,
                **written.report_fields(),
            )
            if checked.variants:
                layer_names = [layer.name for layer in model.layers] + report.fused_layers
                results = build_variants(
                    staging, io, plan, checked.variants, checked.min_agreement, calibration, layer_names
                )
                report.variants = {v: r.to_json() for v, r in results.items()}
            report.files = repository.inventory(staging)
            with open(os.path.join(staging, MANIFEST), "w") as handle:
                handle.write(report.dumps())
            if _before_publish is not None:
                _before_publish(staging)
            repository.stage_server_configs(
                pending,
                checked.base,
                name,
                version,
                checked.formats,
                io.inputs,
                io.outputs,
                plan,
                _published_step_variants(report),
                checked.serving_base,
            )
    except (ExportError, StrictExportError, repository.RepositoryError):
        raise
    except Exception as error:
        raise ExportError(f"export of {name!r} version {version} failed, nothing was published: {error}") from error

    log.info("%s", report.summary())
    return report


def _published_step_variants(report: ExportReport) -> list[str]:
    """Step-graph variant files to place beside ``step.onnx`` in the Triton ``<name>_step`` model."""
    return [
        entry["files"][STEP_FILE]
        for entry in report.variants.values()
        if entry["published"] and STEP_FILE in entry["files"]
    ]


def _save_onnx(model_proto: Any, path: str) -> None:
    with open(path, "wb") as handle:
        handle.write(model_proto.SerializeToString())


def _clear(directory: str) -> None:
    for entry in os.listdir(directory):
        path = os.path.join(directory, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def _write_version_or_without_streaming(
    model: Any, io: ModelIO, plan: StreamingPlan, staging: str, spec: _VersionSpec, required: bool
) -> tuple[VersionArtifacts, StreamingPlan]:
    """`_write_version`; when a streaming graph fails, fail (`required`) or write the version again
    without streaming graphs. Returns what was written and the plan it was written with."""
    try:
        return _write_version(model, io, plan, staging, spec), plan
    except StepGraphError as failure:
        if required:
            raise ExportError(f"--streaming required: {failure}; version {spec.version} was not published") from None
        log.warning("%s; exporting the full model without streaming graphs", failure)
        plan = plan.without_step(f"{failure} (the full model was exported without it)")
        _clear(staging)
        return _write_version(model, io, plan, staging, spec), plan


def _write_version(model: Any, io: ModelIO, plan: StreamingPlan, staging: str, spec: _VersionSpec) -> VersionArtifacts:
    """Write every artifact of one version into `staging` and check parity; return what was written.
    Raises `StepGraphError` when a streaming graph fails (nothing else of the version is judged)."""
    streaming = plan.to_json()
    savedmodel = onnx = parity = None
    streaming_graphs = StreamingGraphArtifacts()
    if SAVEDMODEL_FORMAT in spec.formats:
        savedmodel = _write_savedmodel_phase(model, io, plan, staging, spec.name)
    if ONNX_FORMAT in spec.formats:
        onnx = _write_onnx_phase(model, io, staging, spec.opset, spec.strict)
        streaming_graphs = _write_streaming_graphs(model, io, plan, staging, spec.opset, spec.strict)
    if spec.verify:
        parity = _verify(model, io, plan, staging, spec)
    return VersionArtifacts(streaming, savedmodel, onnx, streaming_graphs, parity)


def _write_savedmodel_phase(
    model: Any, io: ModelIO, plan: StreamingPlan, staging: str, model_name: str
) -> SavedModelArtifacts:
    """The SavedModel (every signature of `plan`), checked for GPU-only ops, and its warmup file."""
    pair = plan.encoder_decoder
    try:
        signatures = write_savedmodel(model, io, plan, staging)
    except Exception as error:
        if plan.reason is None or pair is not None:  # the streaming signatures may be the cause
            raise StepGraphError(f"the streaming signatures could not be written: {error}") from error
        raise
    gpu_ops = gpu_only_ops(staging)
    if gpu_ops:
        raise ExportError(f"the SavedModel contains GPU-only ops {gpu_ops}; it would not run on CPU")
    signature_inputs = {DEFAULT_SIGNATURE: io.inputs}
    if plan.reason is None:
        signature_inputs[STEP_SIGNATURE] = plan.step_inputs(io)
    if pair is not None:
        signature_inputs[ENCODER_SIGNATURE] = pair.source
        signature_inputs[DECODER_STEP_SIGNATURE] = pair.plan.step_inputs(pair.decoder_io)
    return SavedModelArtifacts(signatures, write_warmup(staging, model_name, signature_inputs))


def _write_onnx_phase(model: Any, io: ModelIO, staging: str, opset: int, strict: bool) -> OnnxArtifacts:
    """``model.onnx``: the full model with fused recurrent ops."""
    result = to_onnx(model, io, opset=opset, strict=strict)
    _save_onnx(result.model, os.path.join(staging, MODEL_FILE))
    return OnnxArtifacts(result.fused_layers, result.fallbacks, result.op_census)


def _write_streaming_graphs(
    model: Any, io: ModelIO, plan: StreamingPlan, staging: str, opset: int, strict: bool
) -> StreamingGraphArtifacts:
    """``step.onnx`` (streamable models) or ``encoder.onnx`` + ``decoder_step.onnx`` (encoder-decoder
    models); a failure other than ``--strict``'s is a `StepGraphError`."""
    pair = plan.encoder_decoder
    try:
        step_census: dict[str, int] = {}
        if plan.reason is None:
            step = to_onnx_step(model, io, plan, opset=opset, strict=strict)
            _save_onnx(step.model, os.path.join(staging, STEP_FILE))
            step_census = step.op_census
        if pair is None:
            return StreamingGraphArtifacts(step_census)
        encoder = to_onnx_encoder(pair, opset=opset, strict=strict)
        _save_onnx(encoder.model, os.path.join(staging, ENCODER_FILE))
        decoder = to_onnx_step(pair.decoder, pair.decoder_io, pair.plan, opset=opset, strict=strict)
        _save_onnx(decoder.model, os.path.join(staging, DECODER_STEP_FILE))
        return StreamingGraphArtifacts(step_census, encoder.op_census, decoder.op_census)
    except StrictExportError:
        raise
    except Exception as error:
        raise StepGraphError(f"the ONNX streaming graph could not be built: {error}") from error


def _verify(model: Any, io: ModelIO, plan: StreamingPlan, staging: str, spec: _VersionSpec) -> ParityResult:
    """Parity of every graph written; a failing streaming graph is a `StepGraphError`, a failing
    full model an `ExportError`."""
    parity = check_parity(model, io, plan, staging, spec.formats, spec.tolerance)
    failure = parity.failure
    if failure is None:
        return parity
    key, gap = failure.key, failure.max_abs_diff
    if failure.graph is GraphKind.STREAMING:
        raise StepGraphError(
            f"the streaming graph failed its parity check ('{key}': max |difference| {gap:.3e} exceeds "
            f"tolerance {spec.tolerance:.0e})"
        )
    raise ExportError(
        f"parity check failed for '{key}': max |difference| {gap:.3e} exceeds tolerance "
        f"{spec.tolerance:.0e}; version {spec.version} was not published"
    )
