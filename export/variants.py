"""Reduced-precision variants of every ONNX graph of a version, published only behind an accuracy gate.

``int8``: ONNX Runtime's dynamic quantizer (``onnxruntime.quantization.quantize_dynamic``,
weights int8, activations quantized per call): fused ``LSTM`` becomes ``DynamicQuantizeLSTM``,
``MatMul``/``Gemm`` with constant weights become ``MatMulInteger``, embedding tables
(``Gather``) are stored int8. ``GRU`` and ``RNN`` stay float32: ONNX Runtime has no quantized
GRU or RNN op (its maintainers declined one, onnxruntime issue 9796); the MatMul/Gemm around
them (input projections written by Dense layers, output heads) are quantized.

``fp16``: onnxconverter-common's ``convert_float_to_float16`` with float32 inputs and outputs
(``keep_io_types``); ops on its block list, and ``Cast`` (whose declared output type must not
change), stay float32. Meant for GPUs (CUDA execution provider): on a CPU ONNX Runtime runs most
float16 nodes through inserted casts, so it is reported but not served by default.

The gate (always on) runs each variant graph and the float32 graph with ONNX Runtime on the
parity inputs, `GATE_CASES` and, when given, the user's calibration inputs. Per output:
max |variant - fp32|, which must stay within ``TOLERANCES[variant] * max(1, max |fp32|)``,
and, for outputs that look like class scores (float, last axis of fixed size >= 2), the share
of rows (positions, for per-step outputs) whose arg-max agrees, which must reach
``min_agreement``. A variant that fails anywhere (any of its graphs, any output) is not
written; the reason is recorded in ``rnnkit.json`` and printed.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rnnkit_export.analysis.model_io import ModelIO, TensorInfo
from rnnkit_export.report import DEFAULT_MIN_AGREEMENT, VARIANT_TOLERANCES, VARIANTS
from rnnkit_export.savedmodel.warmup import sample_inputs
from rnnkit_export.streaming.step import StreamingPlan
from rnnkit_export.verify.parity import CASES, parity_inputs, run_chunked, run_encoder_then_decoder
from rnnkit_serving.core.repository_format import (
    DECODER_STEP_FILE,
    ENCODER_FILE,
    FP16,
    GRAPH_FILES,
    INT8,
    INT8_EXACT_SESSION_CONFIG,
    MODEL_FILE,
    STEP_FILE,
    variant_file,
)

log = logging.getLogger("rnnkit.export")

TOLERANCES = VARIANT_TOLERANCES
GATE_CASES = ((64, 20), (64, 50))  # (batch, steps) beyond the parity cases: enough rows for an agreement share
GATE_SEED = 100
CALIBRATION_BATCH = 256  # calibration rows are run this many at a time
INT8_OPS = {  # float op -> what ONNX Runtime's dynamic quantizer makes of it
    "LSTM": "DynamicQuantizeLSTM",
    "MatMul": "MatMulInteger",
    "Gemm": "MatMulInteger",
    "Gather": "int8 table + DequantizeLinear",
    "Conv": "ConvInteger",
    "Attention": "QAttention",
}
NO_INT8_OP = {
    "GRU": "ONNX Runtime has no quantized GRU op (onnxruntime issue 9796); the MatMul/Gemm around it are quantized",
    "RNN": "ONNX Runtime has no quantized RNN op; the MatMul/Gemm around it are quantized",
}
ALWAYS_REPORTED = ("LSTM", "GRU", "RNN", "MatMul", "Gemm")  # others only when they hold float weights
FLOAT = 1  # onnx.TensorProto.FLOAT
FP16_KEPT_FP32 = ("Cast",)  # kept float32 on top of onnxconverter-common's block list


def check_variants(quantize: str | Sequence[str] | None) -> list[str]:
    """``"int8,fp16"`` / ``["int8"]`` / None -> the variants in `VARIANTS` order."""
    if quantize is None or quantize == "":
        return []
    items = [v.strip() for v in quantize.split(",")] if isinstance(quantize, str) else list(quantize)
    unknown = [v for v in items if v not in VARIANTS]
    if unknown or not items:
        raise ValueError(f"argument `quantize` must be a subset of {VARIANTS}. Received: quantize={items!r}")
    return [v for v in VARIANTS if v in items]


def check_min_agreement(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(
            f"argument `variant_min_agreement` must be a finite number >= 0 (a share of rows, 0.99 = 99 %). "
            f"Received: variant_min_agreement={value!r}"
        )
    return float(value)


def load_calibration(path: str, inputs: list[TensorInfo]) -> dict[str, np.ndarray]:
    """Arrays of ``FILE.npz`` keyed by the model's input names, cast to their dtypes."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as error:
        raise ValueError(f"--calibration_data {path!r} is not a readable .npz file: {error}") from error
    names = [t.name for t in inputs]
    if sorted(arrays) != sorted(names):
        raise ValueError(
            f"--calibration_data {path!r} must hold one array per model input {names}. "
            f"Received arrays: {sorted(arrays)}"
        )
    rows = {name: array.shape[0] if array.ndim else None for name, array in arrays.items()}
    if len(set(rows.values())) != 1 or None in rows.values() or 0 in rows.values():
        raise ValueError(
            f"--calibration_data {path!r}: every array needs the same number (>= 1) of rows. Received: {rows}"
        )
    out = {}
    for info in inputs:
        array = arrays[info.name]
        if len(info.shape) != array.ndim or any(
            d is not None and d != s for d, s in zip(info.shape[1:], array.shape[1:])
        ):
            raise ValueError(
                f"--calibration_data {path!r}: input '{info.name}' expects shape {info.shape}, got {list(array.shape)}"
            )
        out[info.name] = array.astype(info.dtype, copy=False)
    return out


def to_int8(source: str, target: str) -> None:
    """ONNX Runtime's dynamic quantizer, int8 weights (the int8 variant)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    root.addFilter(_no_preprocessing_advice)
    try:
        quantize_dynamic(source, target, weight_type=QuantType.QInt8)
    finally:
        root.removeFilter(_no_preprocessing_advice)


def _no_preprocessing_advice(record: logging.LogRecord) -> bool:
    """Drop the quantizer's advice (on the root logger) to run its pre-processing: it serves
    static quantization's calibration; dynamic quantization of rnnkit's graphs needs none."""
    return not record.getMessage().startswith("Please consider to run pre-processing")


def to_fp16(source: str, target: str) -> None:
    """onnxconverter-common's float16 conversion with float32 inputs and outputs (the fp16 variant)."""
    import onnx
    from onnxconverter_common import float16

    converted = float16.convert_float_to_float16(
        onnx.load(source), keep_io_types=True, op_block_list=float16.DEFAULT_OP_BLOCK_LIST + list(FP16_KEPT_FP32)
    )
    onnx.save(converted, target)


CONVERTERS: dict[str, Callable[[str, str], None]] = {INT8: to_int8, FP16: to_fp16}


def _layer_of(node_name: str, layer_names: list[str]) -> str:
    """The Keras layer a node came from: node names derive from layer names (``lstm/W``,
    ``functional_1/out_1/MatMul``)."""
    for part in node_name.split("/"):
        for candidate in (part, re.sub(r"_\d+$", "", part)):
            if candidate in layer_names:
                return candidate
    return "-"


def _producers(graph: Any) -> dict[str, Any]:
    return {output: node for node in graph.node for output in node.output if output}


def int8_layers(float_graph: Any, int8_graph: Any, layer_names: list[str]) -> list[dict[str, Any]]:
    """Per weight-bearing node of the float graph: whether it became int8 (and as what) or why not."""
    after = _producers(int8_graph)
    weights = {t.name for t in float_graph.initializer if t.data_type == FLOAT}
    rows = []
    for node in float_graph.node:
        if node.op_type not in INT8_OPS and node.op_type not in NO_INT8_OP:
            continue
        if node.op_type not in ALWAYS_REPORTED and not weights.intersection(node.input):
            continue  # e.g. a Gather of shape values: nothing to quantize
        output = next((o for o in node.output if o), "")
        replaced = after.get(output)
        quantized = replaced is not None and replaced.op_type != node.op_type
        row = {"node": node.name, "layer": _layer_of(node.name, layer_names), "op": node.op_type, "int8": quantized}
        if quantized:
            row["as"] = INT8_OPS[node.op_type]
        else:
            row["reason"] = NO_INT8_OP.get(node.op_type, "its weights are not constant initializers")
        rows.append(row)
    return rows


def fp16_layers(float_graph: Any, fp16_graph: Any, layer_names: list[str]) -> list[dict[str, Any]]:
    """Nodes onnxconverter-common kept float32 (the rest compute in float16)."""
    from onnxconverter_common import float16

    kept = set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP16_KEPT_FP32)
    rows = []
    for node in float_graph.node:
        if node.op_type in kept:
            reason = (
                "its declared output type must not change"
                if node.op_type in FP16_KEPT_FP32
                else "on onnxconverter-common's float32 block list"
            )
            rows.append(
                {"node": node.name, "layer": _layer_of(node.name, layer_names), "op": node.op_type, "reason": reason}
            )
    return rows


def is_class_scores(info: TensorInfo) -> bool:
    """Float output whose last axis has a fixed size >= 2: arg-max agreement is meaningful."""
    return info.dtype.startswith("float") and len(info.shape) >= 2 and (info.shape[-1] or 0) >= 2


@dataclass
class OutputFigures:
    """The gate's figures for one output of one graph, accumulated over the feeds: max |variant -
    fp32|, max |fp32| (the scale of the tolerance), and for class scores the rows whose arg-max agrees."""

    max_abs_diff: float = 0.0
    max_abs_fp32: float = 0.0
    agree: int = 0
    rows: int = 0

    def add(self, want: np.ndarray, got: np.ndarray, class_scores: bool) -> None:
        want64, got64 = want.astype(np.float64), got.astype(np.float64)
        if want.size:
            self.max_abs_diff = max(self.max_abs_diff, float(np.abs(want64 - got64).max()))
            self.max_abs_fp32 = max(self.max_abs_fp32, float(np.abs(want64).max()))
        if class_scores and want.size:
            self.agree += int((want64.argmax(-1) == got64.argmax(-1)).sum())
            self.rows += int(np.prod(want.shape[:-1]))

    def to_json(self, class_scores: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"max_abs_diff": self.max_abs_diff, "max_abs_fp32": self.max_abs_fp32}
        if class_scores:
            out["argmax_agreement"] = self.agree / self.rows if self.rows else 1.0
            out["rows"] = self.rows
        return out


@dataclass
class VariantResult:
    """One variant of a version: ``files`` (float graph -> variant file) and their ``sizes``, the
    gate's ``figures`` per ``"<graph>/<output>"``, the per-node report of what became int8/fp16
    (``layers``, per graph), and whether it was ``published`` or why not (``reason``).
    ``to_json`` is ``rnnkit.json``'s ``variants.<variant>``."""

    variant: str
    tolerance: float
    min_agreement: float
    files: dict[str, str] = field(default_factory=dict)  # float graph -> variant file
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)  # "<graph>/<output>" -> figures
    layers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # graph -> per-node report
    sizes: dict[str, int] = field(default_factory=dict)  # variant file -> bytes
    published: bool = False
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "published": self.published,
            "reason": self.reason,
            "tolerance": self.tolerance,
            "tolerance_rule": "max|variant - fp32| <= tolerance * max(1, max|fp32|)",
            "min_agreement": self.min_agreement,
            "files": self.files if self.published else {},
            "bytes": self.sizes if self.published else {},
            "gate": self.figures,
            "layers": self.layers,
        }


def _session_runner(path: str) -> Callable[[dict[str, np.ndarray]], dict[str, Any]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry(*INT8_EXACT_SESSION_CONFIG)  # the kernels the server runs (see the contract)
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(feed: dict[str, np.ndarray]) -> dict[str, Any]:
        return dict(zip(names, session.run(names, feed)))

    return run


def _gate_feeds(io: ModelIO, calibration: dict[str, np.ndarray] | None) -> list[dict[str, np.ndarray]]:
    feeds = [parity_inputs(io, batch, steps, seed) for seed, (batch, steps) in enumerate(CASES)]
    feeds += [sample_inputs(io.inputs, batch, steps, GATE_SEED + i) for i, (batch, steps) in enumerate(GATE_CASES)]
    if calibration:
        total = next(iter(calibration.values())).shape[0]
        for start in range(0, total, CALIBRATION_BATCH):
            feeds.append({name: array[start : start + CALIBRATION_BATCH] for name, array in calibration.items()})
    return feeds


def _graph_runners(
    directory: str, io: ModelIO, plan: StreamingPlan, suffix: Callable[[str], str]
) -> dict[str, Callable[[dict[str, np.ndarray]], dict[str, Any]]]:
    """Full-model answers from each graph of the version: ``model.onnx`` directly, the step graph
    in chunks, encoder + decoder step in chunks (the file names passed through `suffix`)."""
    runners: dict[str, Callable[[dict[str, np.ndarray]], dict[str, Any]]] = {
        MODEL_FILE: _session_runner(os.path.join(directory, suffix(MODEL_FILE)))
    }
    if plan.reason is None and os.path.isfile(os.path.join(directory, STEP_FILE)):
        step = _session_runner(os.path.join(directory, suffix(STEP_FILE)))
        runners[STEP_FILE] = lambda feed: run_chunked(step, io.outputs, plan, feed)
    pair = plan.encoder_decoder
    if pair is not None and os.path.isfile(os.path.join(directory, ENCODER_FILE)):
        encoder = _session_runner(os.path.join(directory, suffix(ENCODER_FILE)))
        decoder = _session_runner(os.path.join(directory, suffix(DECODER_STEP_FILE)))
        runners[ENCODER_FILE] = lambda feed: run_encoder_then_decoder(encoder, decoder, pair, feed)
    return runners


def _graphs(directory: str, plan: StreamingPlan) -> list[str]:
    present = [g for g in GRAPH_FILES if os.path.isfile(os.path.join(directory, g))]
    if plan.reason is not None and STEP_FILE in present:
        present.remove(STEP_FILE)
    return present


def build_variants(
    directory: str,
    io: ModelIO,
    plan: StreamingPlan,
    variants: list[str],
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    calibration: dict[str, np.ndarray] | None = None,
    layer_names: list[str] | None = None,
    tolerances: dict[str, float] | None = None,
) -> dict[str, VariantResult]:
    """Write each variant of every ONNX graph in `directory` (a staged version), gate it against
    the float32 graphs, and remove the files of a variant that fails (see the module docstring)."""
    import onnx

    tolerances = {**TOLERANCES, **(tolerances or {})}
    graphs = _graphs(directory, plan)
    feeds = _gate_feeds(io, calibration)
    reference = _session_runner(os.path.join(directory, MODEL_FILE))
    wants = [{k: np.asarray(v) for k, v in reference(feed).items()} for feed in feeds]
    float_graphs = {g: onnx.load(os.path.join(directory, g), load_external_data=False).graph for g in graphs}
    results = {}
    for variant in variants:
        result = VariantResult(variant, tolerances[variant], min_agreement)
        results[variant] = result
        written = []
        try:
            for graph in graphs:
                target = variant_file(graph, variant)
                written.append(target)
                CONVERTERS[variant](os.path.join(directory, graph), os.path.join(directory, target))
                result.files[graph] = target
                result.sizes[target] = os.path.getsize(os.path.join(directory, target))
                converted = onnx.load(os.path.join(directory, target), load_external_data=False).graph
                names = layer_names or []
                result.layers[graph] = (
                    int8_layers(float_graphs[graph], converted, names)
                    if variant == INT8
                    else fp16_layers(float_graphs[graph], converted, names)
                )
            runners = _graph_runners(directory, io, plan, functools.partial(variant_file, variant=variant))
            result.reason = _gate(result, runners, io, feeds, wants)
        except Exception as error:  # a converter or ONNX Runtime refusing the graph: the variant only
            result.reason = f"the {variant} conversion failed: {type(error).__name__}: {error}"
        result.published = result.reason is None
        if not result.published:
            log.warning("variant %s not published: %s", variant, result.reason)
            for target in written:
                path = os.path.join(directory, target)
                if os.path.lexists(path):
                    os.unlink(path)
            result.sizes = {}
    return results


def _gate(
    result: VariantResult,
    runners: dict[str, Callable[[dict[str, np.ndarray]], dict[str, Any]]],
    io: ModelIO,
    feeds: list[dict[str, np.ndarray]],
    wants: list[dict[str, np.ndarray]],
) -> str | None:
    """Fill `result.figures`; return why the variant fails the gate (None: it passes)."""
    failures = []
    for graph, run in runners.items():
        figures = {info.name: OutputFigures() for info in io.outputs}
        for feed, want in zip(feeds, wants):
            got = run(feed)
            for info in io.outputs:
                figures[info.name].add(want[info.name], np.asarray(got[info.name]), is_class_scores(info))
        for info in io.outputs:
            scores = is_class_scores(info)
            entry = figures[info.name].to_json(scores)
            result.figures[f"{graph}/{info.name}"] = entry
            allowed = result.tolerance * max(1.0, entry["max_abs_fp32"])
            if entry["max_abs_diff"] > allowed:
                failures.append(
                    f"{variant_file(graph, result.variant)} output '{info.name}': max |difference| to fp32 "
                    f"{entry['max_abs_diff']:.3e} exceeds the tolerance {allowed:.3e} "
                    f"({result.tolerance} x max(1, max|fp32| {entry['max_abs_fp32']:.3g}))"
                )
            if scores and entry["argmax_agreement"] < result.min_agreement:
                failures.append(
                    f"{variant_file(graph, result.variant)} output '{info.name}': arg-max agreement with fp32 "
                    f"{entry['argmax_agreement']:.4f} ({entry['rows']} rows) is below --variant_min_agreement "
                    f"{result.min_agreement}"
                )
    return "; ".join(failures) or None
