"""Parity, always on: Keras vs the reloaded SavedModel vs ONNX Runtime on the same inputs.

Several batch sizes and lengths; every other row is right-padded with zeros (so masking
models see padding) and one row gets a hole. Streamable models are also fed in chunks through
the ``step`` signature and ``step.onnx``; encoder-decoder models through the encoder, then the
decoder step in chunks; the chunked answer must equal the full one.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rnnkit_export.analysis.model_io import ModelIO, TensorInfo
from rnnkit_export.report import ExportError
from rnnkit_export.savedmodel.warmup import sample_inputs
from rnnkit_export.streaming.step import EncoderDecoder, StreamingPlan
from rnnkit_serving.core.repository_format import (
    DECODER_STEP_FILE,
    DECODER_STEP_SIGNATURE,
    DEFAULT_SIGNATURE,
    ENCODER_FILE,
    ENCODER_SIGNATURE,
    MODEL_FILE,
    ONNX_FORMAT,
    SAVEDMODEL_FORMAT,
    STEP_FILE,
    STEP_SIGNATURE,
)

CASES = ((1, 5), (3, 11), (4, 17))
CHUNKS = (2, 3)  # chunk lengths cycled over the sequence (the last chunk takes the rest)
SIDES = {  # backend key -> what produced its answers (for error messages)
    SAVEDMODEL_FORMAT: f"the SavedModel ({DEFAULT_SIGNATURE})",
    f"{SAVEDMODEL_FORMAT}_step": f"the SavedModel's {STEP_SIGNATURE} signature fed in chunks",
    ONNX_FORMAT: f"{MODEL_FILE} (ONNX Runtime)",
    f"{ONNX_FORMAT}_step": f"{STEP_FILE} (ONNX Runtime) fed in chunks",
}
Feed = dict[str, np.ndarray]
Run = Callable[[Feed], dict[str, Any]]


class GraphKind(enum.Enum):
    """Which graph of a version a parity comparison concerns. A failing ``STREAMING`` comparison
    drops the streaming graphs (``streaming="auto"``); a failing ``FULL`` one fails the export."""

    FULL = "full"  # serving_default / model.onnx: the model itself
    STREAMING = "streaming"  # step graphs fed in chunks, encoder + decoder step


@dataclass(frozen=True)
class Runner:
    """One backend whose full-sequence answers are compared with Keras's.

    ``backend``: the key prefix (``onnx``, ``savedmodel_step``, ``onnx_encoder_decoder``, ...);
    ``graph``: whether it runs the full model or the streaming graphs; ``run``: inputs by name ->
    outputs by name (streaming graphs: chunk by chunk, states carried).
    """

    backend: str
    graph: GraphKind
    run: Run


@dataclass(frozen=True)
class ParityFailure:
    """The worst comparison of a failed parity check: ``key`` (``"<backend>/<output>"``), its max
    |difference| and the kind of graph it concerns."""

    key: str
    max_abs_diff: float
    graph: GraphKind


@dataclass
class ParityResult:
    """Max |Keras - backend| per ``"<backend>/<output>"`` key over every case, against `tolerance`.

    ``graphs``: key -> the kind of graph the comparison concerns (keys recorded without a kind are
    full-model comparisons); ``cases``: the ``[batch, steps]`` cases run. ``to_json`` is what
    ``rnnkit.json`` holds under ``parity``.
    """

    tolerance: float
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # "<backend>/<output>" -> max |diff|
    cases: list[list[int]] = field(default_factory=list)
    graphs: dict[str, GraphKind] = field(default_factory=dict)  # "<backend>/<output>" -> graph kind

    @property
    def worst(self) -> tuple[str, float]:
        if not self.max_abs_diff:
            return ("", 0.0)
        key = max(self.max_abs_diff, key=lambda k: self.max_abs_diff[k])
        return key, self.max_abs_diff[key]

    @property
    def passed(self) -> bool:
        return self.worst[1] <= self.tolerance

    @property
    def failure(self) -> ParityFailure | None:
        """The worst comparison when it exceeds the tolerance (None: parity holds)."""
        if self.passed:
            return None
        key, gap = self.worst
        return ParityFailure(key, gap, self.graphs.get(key, GraphKind.FULL))

    def record(self, key: str, want: Any, got: Any, graph: GraphKind = GraphKind.FULL) -> None:
        """Record max |want - got| under `key` ("<backend>/<output>"); shapes are compared first."""
        got = np.asarray(got)
        want = np.asarray(want)
        if want.shape != got.shape:
            backend, _, output = key.partition("/")
            case = f" (batch {self.cases[-1][0]}, {self.cases[-1][1]} steps)" if self.cases else ""
            raise ExportError(
                f"parity check failed for output '{output}'{case}: Keras gives shape {tuple(want.shape)} but "
                f"{SIDES.get(backend, backend)} gives shape {tuple(got.shape)}; the shapes must be equal"
            )
        diff = float(np.abs(want.astype(np.float64) - got.astype(np.float64)).max()) if want.size else 0.0
        self.max_abs_diff[key] = max(self.max_abs_diff.get(key, 0.0), diff)
        self.graphs[key] = graph

    def to_json(self) -> dict[str, Any]:
        key, value = self.worst
        return {
            "tolerance": self.tolerance,
            "passed": self.passed,
            "worst": {"output": key, "max_abs_diff": value},
            "max_abs_diff": self.max_abs_diff,
            "cases": self.cases,
        }


def parity_inputs(io: ModelIO, batch: int, steps: int, seed: int) -> dict[str, np.ndarray]:
    arrays = sample_inputs(io.inputs, batch, steps, seed)
    for info in io.inputs:
        array = arrays[info.name]
        if array.ndim < 2 or info.shape[1] is not None:
            continue
        for row in range(1, batch, 2):  # right padding on every other row
            array[row, max(1, steps - 1 - row) :] = 0
        if batch > 2 and steps > 4:  # a hole
            array[2, 1] = 0
    return arrays


def is_sequence(info: TensorInfo) -> bool:
    return len(info.shape) >= 3 and info.shape[1] is None


def run_chunked(
    run_step: Any,
    outputs: list[TensorInfo],
    plan: StreamingPlan,
    inputs: dict[str, np.ndarray],
    states: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Feed `inputs` through a step graph in chunks (sequence inputs cut, side inputs whole)."""
    batch = next(iter(inputs.values())).shape[0]
    steps = max((inputs[n].shape[1] for n in plan.sequence_inputs), default=1)
    if states is None:
        states = {t.name: np.zeros([batch, int(t.shape[1] or 0)], np.float32) for t in plan.state_inputs()}
    pieces: dict[str, list[np.ndarray]] = {t.name: [] for t in outputs}
    start, index = 0, 0
    while start < steps:
        stop = steps if index >= 2 else min(steps, start + CHUNKS[index % len(CHUNKS)])
        feed = {name: array[:, start:stop] if name in plan.sequence_inputs else array for name, array in inputs.items()}
        result = run_step({**feed, **states})
        for layer in plan.layers:
            for state_in, state_out in zip(layer.inputs(), layer.outputs()):
                states[state_in] = np.asarray(result[state_out])
        for info in outputs:
            pieces[info.name].append(np.asarray(result[info.name]))
        start, index = stop, index + 1
    return {
        info.name: np.concatenate(pieces[info.name], axis=1)
        if info.name in plan.sequence_outputs
        else pieces[info.name][-1]
        for info in outputs
    }


def run_encoder_then_decoder(
    run_encoder: Any, run_decoder: Any, pair: EncoderDecoder, inputs: dict[str, np.ndarray]
) -> Any:
    """The encoder on the source inputs, then the decoder step over the target inputs in chunks."""
    states = {k: np.asarray(v) for k, v in run_encoder({t.name: inputs[t.name] for t in pair.source}).items()}
    source = {t.name for t in pair.source}
    targets = {name: array for name, array in inputs.items() if name not in source}
    return run_chunked(run_decoder, pair.decoder_io.outputs, pair.plan, targets, states)


def _savedmodel_runner(loaded: Any, name: str) -> Run:
    import tensorflow as tf

    signature = loaded.signatures[name]

    def run(feed: Feed) -> dict[str, Any]:
        return {k: v.numpy() for k, v in signature(**{n: tf.constant(a) for n, a in feed.items()}).items()}

    return run


def _onnx_runner(path: str) -> Run:
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(feed: Feed) -> dict[str, Any]:
        return dict(zip(names, session.run(names, feed)))

    return run


def _graph_runners(
    backend: str, io: ModelIO, plan: StreamingPlan, full: Run, step: Run | None, encoder_decoder: tuple[Run, Run] | None
) -> list[Runner]:
    """The runners of one backend: the full model, the step graph in chunks (``<backend>_step``),
    the encoder then the decoder step in chunks (``<backend>_encoder_decoder``)."""
    runners = [Runner(backend, GraphKind.FULL, full)]
    if step is not None:
        runners.append(
            Runner(f"{backend}_step", GraphKind.STREAMING, lambda feed: run_chunked(step, io.outputs, plan, feed))
        )
    pair = plan.encoder_decoder
    if encoder_decoder is not None and pair is not None:
        encoder, decoder = encoder_decoder
        runners.append(
            Runner(
                f"{backend}_encoder_decoder",
                GraphKind.STREAMING,
                lambda feed: run_encoder_then_decoder(encoder, decoder, pair, feed),
            )
        )
    return runners


def _savedmodel_runners(directory: str, io: ModelIO, plan: StreamingPlan) -> list[Runner]:
    import tensorflow as tf

    loaded = tf.saved_model.load(directory)
    full = _savedmodel_runner(loaded, DEFAULT_SIGNATURE)
    step = _savedmodel_runner(loaded, STEP_SIGNATURE) if plan.reason is None else None
    pair = None
    if plan.encoder_decoder is not None:
        pair = (_savedmodel_runner(loaded, ENCODER_SIGNATURE), _savedmodel_runner(loaded, DECODER_STEP_SIGNATURE))
    return _graph_runners(SAVEDMODEL_FORMAT, io, plan, full, step, pair)


def _onnx_runners(directory: str, io: ModelIO, plan: StreamingPlan) -> list[Runner]:
    full = _onnx_runner(os.path.join(directory, MODEL_FILE))
    step = _onnx_runner(os.path.join(directory, STEP_FILE)) if plan.reason is None else None
    pair = None
    if plan.encoder_decoder is not None:
        pair = (
            _onnx_runner(os.path.join(directory, ENCODER_FILE)),
            _onnx_runner(os.path.join(directory, DECODER_STEP_FILE)),
        )
    return _graph_runners(ONNX_FORMAT, io, plan, full, step, pair)


def check_parity(
    model: Any, io: ModelIO, plan: StreamingPlan, directory: str, formats: list[str], tolerance: float
) -> ParityResult:
    """Parity of every graph written: ``<backend>/<output>`` for the full model, ``<backend>_step``
    for the chunked step graph, ``<backend>_encoder_decoder`` for encoder + chunked decoder step
    (the latter two recorded as `GraphKind.STREAMING` comparisons)."""
    result = ParityResult(tolerance)
    runners: list[Runner] = []
    if SAVEDMODEL_FORMAT in formats:
        runners += _savedmodel_runners(directory, io, plan)
    if ONNX_FORMAT in formats:
        runners += _onnx_runners(directory, io, plan)
    for seed, (batch, steps) in enumerate(CASES):
        inputs = parity_inputs(io, batch, steps, seed)
        result.cases.append([batch, steps])
        want = {k: np.asarray(v) for k, v in io.call(model, inputs).items()}
        for runner in runners:
            got = runner.run(inputs)
            for info in io.outputs:
                if info.name not in got:
                    raise ExportError(
                        f"parity check failed: {SIDES.get(runner.backend, runner.backend)} has no output "
                        f"'{info.name}' (its outputs: {sorted(got)})"
                    )
                result.record(f"{runner.backend}/{info.name}", want[info.name], got[info.name], runner.graph)
    return result


def zero_padding_invariant(model: Any, io: ModelIO, extra_steps: int = 4, tolerance: float = 1e-5) -> bool:
    """Whether appending all-zero steps leaves the model's answers unchanged (sequence outputs
    compared on the original steps). True for models that mask zero padding (``Masking(0)``,
    ``Embedding(mask_zero=True)``); a server may then batch requests of different lengths by
    right-padding them with zeros and slicing sequence outputs back, and stay exact."""
    timed = [t for t in io.inputs if len(t.shape) >= 2 and t.shape[1] is None]
    if not timed:
        return False
    inputs = parity_inputs(io, 3, 7, seed=11)
    padded = {
        name: np.concatenate([a, np.zeros((a.shape[0], extra_steps, *a.shape[2:]), a.dtype)], axis=1)
        if any(t.name == name for t in timed)
        else a
        for name, a in inputs.items()
    }
    short = io.call(model, inputs)
    long = io.call(model, padded)
    for info in io.outputs:
        a, b = np.asarray(short[info.name]), np.asarray(long[info.name])
        if is_sequence(info):
            b = b[:, : a.shape[1]]
        if a.shape != b.shape or float(np.abs(a - b).max()) > tolerance:
            return False
    return True
