"""``export_model``: one call writes a verified version into a model repository."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

from rnnkit_export.repository import publish as repository
from rnnkit_export.analysis.model_io import ModelIO
from rnnkit_export.onnx.convert import StrictExportError, to_onnx, to_onnx_encoder, to_onnx_step
from rnnkit_export.verify.parity import check_parity, zero_padding_invariant
from rnnkit_export.report import DEFAULT_TOLERANCE, FORMATS, ExportError, ExportReport
from rnnkit_export.savedmodel.writer import gpu_only_ops, write_savedmodel
from rnnkit_export.streaming.step import (
    DECODER_STEP_FILE,
    DECODER_STEP_SIGNATURE,
    ENCODER_FILE,
    ENCODER_SIGNATURE,
    STREAMING_MODES,
    StreamingPlan,
    plan_streaming,
)
from rnnkit_export.analysis.twins import with_rnnkit_twins
from rnnkit_export.variants import DEFAULT_MIN_AGREEMENT, build_variants, check_min_agreement, check_variants, load_calibration
from rnnkit_export.savedmodel.warmup import write_warmup

log = logging.getLogger("rnnkit.export")


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


def export_model(
    model: Any,
    base_path: str,
    name: str,
    version: int | None = None,
    formats: Sequence[str] | str = FORMATS,
    opset: int = 17,
    strict: bool = False,
    verify: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    streaming: str = "auto",
    serving_base_path: str | None = None,
    quantize: str | Sequence[str] | None = None,
    variant_min_agreement: float = DEFAULT_MIN_AGREEMENT,
    calibration_data: str | None = None,
    _before_publish: Callable[[str], None] | None = None,
) -> ExportReport:
    """Export `model` as version `version` (default: next integer) of `name` under `base_path`.

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
    """
    import keras

    if streaming not in STREAMING_MODES:
        raise ValueError(f"argument `streaming` must be one of {STREAMING_MODES}. Received: streaming={streaming!r}")
    if not isinstance(model, keras.Model):
        raise ValueError(f"argument `model` must be a keras.Model. Received: {type(model).__name__}")
    chosen = _check_formats(formats)
    variants = check_variants(quantize)
    min_agreement = check_min_agreement(variant_min_agreement)
    if variants and "onnx" not in chosen:
        raise ValueError(
            f"argument `quantize` needs the 'onnx' format. Received: formats={chosen}, quantize={variants}"
        )
    if calibration_data is not None and not variants:
        raise ValueError("argument `calibration_data` is only used with `quantize` (the variants' accuracy gate)")
    repository.check_name(name)
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise ValueError(f"argument `version` must be a positive integer. Received: version={version!r}")
    serving_base = None if serving_base_path is None else repository.check_serving_base_path(serving_base_path)
    base = repository.check_base_path(base_path)
    model_dir = os.path.join(base, name)
    version = version or repository.next_version(model_dir)
    final = os.path.join(model_dir, str(version))

    io = ModelIO.of(model)
    calibration = load_calibration(calibration_data, io.inputs) if calibration_data is not None else None
    model, swapped = with_rnnkit_twins(model)
    plan = plan_streaming(model, io, streaming)
    if streaming == "required" and plan.mode not in ("step", "encoder_decoder"):
        raise ExportError(
            f"--streaming required: model {name!r} cannot be streamed: {plan.reason}; nothing was published"
        )
    report = ExportReport(
        name,
        version,
        final,
        chosen,
        [t.to_json() for t in io.inputs],
        [t.to_json() for t in io.outputs],
        swapped_native_layers=swapped,
        versions=_versions(),
        opset=opset if "onnx" in chosen else None,
    )
    report.zero_padding_invariant = zero_padding_invariant(model, io)
    try:
        with repository.publication(final) as (pending, staging):
            try:
                _write_version(model, io, plan, staging, chosen, opset, strict, verify, tolerance, report)
            except _StepGraphFailed as failure:
                if streaming == "required":
                    raise ExportError(f"--streaming required: {failure}; version {version} was not published") from None
                log.warning("%s; exporting the full model without streaming graphs", failure)
                plan = plan.without_step(f"{failure} (the full model was exported without it)")
                _clear(staging)
                _write_version(model, io, plan, staging, chosen, opset, strict, verify, tolerance, report)
            if variants:
                layer_names = [layer.name for layer in model.layers] + report.fused_layers
                results = build_variants(staging, io, plan, variants, min_agreement, calibration, layer_names)
                report.variants = {v: r.to_json() for v, r in results.items()}
            report.files = repository.inventory(staging)
            with open(os.path.join(staging, repository.MANIFEST), "w") as handle:
                handle.write(report.dumps())
            if _before_publish is not None:
                _before_publish(staging)
            repository.stage_server_configs(
                pending,
                base,
                name,
                version,
                chosen,
                io.inputs,
                io.outputs,
                plan,
                _published_step_variants(report),
                serving_base,
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
        entry["files"]["step.onnx"]
        for entry in report.variants.values()
        if entry["published"] and "step.onnx" in entry["files"]
    ]


def _save_onnx(model_proto: Any, path: str) -> None:
    with open(path, "wb") as handle:
        handle.write(model_proto.SerializeToString())


class _StepGraphFailed(Exception):
    """A streaming graph could not be built or does not match the full model."""


_STREAMING_BACKENDS = ("_step/", "_encoder_decoder/")


def _clear(directory: str) -> None:
    for entry in os.listdir(directory):
        path = os.path.join(directory, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def _write_version(
    model: Any,
    io: ModelIO,
    plan: StreamingPlan,
    staging: str,
    chosen: list[str],
    opset: int,
    strict: bool,
    verify: bool,
    tolerance: float,
    report: ExportReport,
) -> None:
    """Write every artifact of one version into `staging` and check parity; fill `report`."""
    pair = plan.encoder_decoder
    report.streaming = plan.to_json()
    report.step_op_census, report.encoder_op_census, report.decoder_step_op_census = {}, {}, {}
    if "savedmodel" in chosen:
        try:
            report.signatures = write_savedmodel(model, io, plan, staging)
        except Exception as error:
            if plan.reason is None or pair is not None:
                _clear(staging)
                raise _StepGraphFailed(f"the streaming signatures could not be written: {error}") from error
            raise
        gpu_ops = gpu_only_ops(staging)
        if gpu_ops:
            raise ExportError(f"the SavedModel contains GPU-only ops {gpu_ops}; it would not run on CPU")
        signature_inputs = {"serving_default": io.inputs}
        if plan.reason is None:
            signature_inputs["step"] = plan.step_inputs(io)
        if pair is not None:
            signature_inputs[ENCODER_SIGNATURE] = pair.source
            signature_inputs[DECODER_STEP_SIGNATURE] = pair.plan.step_inputs(pair.decoder_io)
        report.warmup_records = write_warmup(staging, report.model_name, signature_inputs)
    if "onnx" in chosen:
        result = to_onnx(model, io, opset=opset, strict=strict)
        _save_onnx(result.model, os.path.join(staging, "model.onnx"))
        report.fused_layers, report.fallbacks, report.op_census = (
            result.fused_layers,
            result.fallbacks,
            result.op_census,
        )
        try:
            if plan.reason is None:
                step = to_onnx_step(model, io, plan, opset=opset, strict=strict)
                _save_onnx(step.model, os.path.join(staging, "step.onnx"))
                report.step_op_census = step.op_census
            if pair is not None:
                encoder = to_onnx_encoder(pair, opset=opset, strict=strict)
                _save_onnx(encoder.model, os.path.join(staging, ENCODER_FILE))
                decoder = to_onnx_step(pair.decoder, pair.decoder_io, pair.plan, opset=opset, strict=strict)
                _save_onnx(decoder.model, os.path.join(staging, DECODER_STEP_FILE))
                report.encoder_op_census, report.decoder_step_op_census = encoder.op_census, decoder.op_census
        except StrictExportError:
            raise
        except Exception as error:
            raise _StepGraphFailed(f"the ONNX streaming graph could not be built: {error}") from error
    if verify:
        parity = check_parity(model, io, plan, staging, chosen, tolerance)
        report.parity = parity.to_json()
        if not parity.passed:
            key, gap = parity.worst
            if any(marker in key for marker in _STREAMING_BACKENDS):
                raise _StepGraphFailed(
                    f"the streaming graph failed its parity check ('{key}': max |difference| {gap:.3e} exceeds "
                    f"tolerance {tolerance:.0e})"
                )
            raise ExportError(
                f"parity check failed for '{key}': max |difference| {gap:.3e} exceeds tolerance "
                f"{tolerance:.0e}; version {report.version} was not published"
            )
