"""``export_model``: one call writes a verified version into a model repository."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from export import repository
from export.model_io import ModelIO
from export.onnx_export import StrictExportError, to_onnx, to_onnx_step
from export.parity import check_parity, zero_padding_invariant
from export.report import DEFAULT_TOLERANCE, FORMATS, ExportError, ExportReport
from export.savedmodel import gpu_only_ops, write_savedmodel
from export.step import plan_streaming
from export.twins import with_rnnkit_twins
from export.warmup import write_warmup

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
    _before_publish: Callable[[str], None] | None = None,
) -> ExportReport:
    """Export `model` as version `version` (default: next integer) of `name` under `base_path`.

    Writes SavedModel (signatures ``serving_default`` and, for streamable models, ``step``,
    plus the TF Serving warmup file) and/or ONNX (``model.onnx`` with fused recurrent ops,
    ``step.onnx``), checks parity Keras vs SavedModel vs ONNX Runtime (``verify``), writes
    ``rnnkit.json``, then renames the version into place and updates ``models.config`` and the
    Triton ``config.pbtxt`` files. On any failure nothing is published and ExportError is raised.
    ``strict``: a recurrent layer that cannot be fused is an error instead of a loop fallback.
    """
    import keras

    if not isinstance(model, keras.Model):
        raise ValueError(f"argument `model` must be a keras.Model. Received: {type(model).__name__}")
    chosen = _check_formats(formats)
    repository.check_name(name)
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise ValueError(f"argument `version` must be a positive integer. Received: version={version!r}")
    base = repository.check_base_path(base_path)
    model_dir = os.path.join(base, name)
    version = version or repository.next_version(model_dir)
    final = os.path.join(model_dir, str(version))

    io = ModelIO.of(model)
    model, swapped = with_rnnkit_twins(model)
    plan = plan_streaming(model, io)
    report = ExportReport(
        name,
        version,
        final,
        chosen,
        [t.to_json() for t in io.inputs],
        [t.to_json() for t in io.outputs],
        streaming=plan.to_json(),
        swapped_native_layers=swapped,
        versions=_versions(),
        opset=opset if "onnx" in chosen else None,
    )
    report.zero_padding_invariant = zero_padding_invariant(model, io)
    try:
        with repository.staged_directory(final) as staging:
            if "savedmodel" in chosen:
                report.signatures = write_savedmodel(model, io, plan, staging)
                gpu_ops = gpu_only_ops(staging)
                if gpu_ops:
                    raise ExportError(f"the SavedModel contains GPU-only ops {gpu_ops}; it would not run on CPU")
                signature_inputs = {"serving_default": io.inputs}
                if plan.reason is None:
                    signature_inputs["step"] = io.inputs + plan.state_inputs()
                report.warmup_records = write_warmup(staging, name, signature_inputs)
            if "onnx" in chosen:
                result = to_onnx(model, io, opset=opset, strict=strict)
                _save_onnx(result.model, os.path.join(staging, "model.onnx"))
                report.fused_layers, report.fallbacks, report.op_census = (
                    result.fused_layers,
                    result.fallbacks,
                    result.op_census,
                )
                if plan.reason is None:
                    step = to_onnx_step(model, io, plan, opset=opset, strict=strict)
                    _save_onnx(step.model, os.path.join(staging, "step.onnx"))
                    report.step_op_census = step.op_census
            if verify:
                parity = check_parity(model, io, plan, staging, chosen, tolerance)
                report.parity = parity.to_json()
                if not parity.passed:
                    key, gap = parity.worst
                    raise ExportError(
                        f"parity check failed for '{key}': max |difference| {gap:.3e} exceeds tolerance "
                        f"{tolerance:.0e}; version {version} was not published"
                    )
            with open(os.path.join(staging, repository.MANIFEST), "w") as handle:
                handle.write(report.dumps())
            if _before_publish is not None:
                _before_publish(staging)
    except (ExportError, StrictExportError, repository.RepositoryError):
        raise
    except Exception as error:
        raise ExportError(f"export of {name!r} version {version} failed, nothing was published: {error}") from error

    if "savedmodel" in chosen:
        repository.write_models_config(base)
    if "onnx" in chosen:
        repository.write_text_atomically(
            os.path.join(model_dir, "config.pbtxt"), repository.triton_config(name, io.inputs, io.outputs)
        )
        if plan.reason is None:
            step_name = name + repository.STEP_SUFFIX
            repository.publish_triton_step(base, name, version, os.path.join(final, "step.onnx"))
            repository.write_text_atomically(
                os.path.join(base, step_name, "config.pbtxt"),
                repository.triton_step_config(step_name, io.inputs, io.outputs, plan),
            )
    log.info("%s", report.summary())
    return report


def _save_onnx(model_proto: Any, path: str) -> None:
    with open(path, "wb") as handle:
        handle.write(model_proto.SerializeToString())
