"""What an export produced: written as ``rnnkit.json`` in the version directory and printed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# the repository format (file names, manifest format, formats, variants) is the server's contract
from rnnkit_serving.core.repository_format import FORMATS, FP16, INT8, MANIFEST_FORMAT, VARIANTS

__all__ = [
    "DEFAULT_MIN_AGREEMENT",
    "DEFAULT_TOLERANCE",
    "FORMATS",
    "MANIFEST_FORMAT",
    "VARIANTS",
    "VARIANT_TOLERANCES",
    "ExportError",
    "ExportReport",
    "variant_summary",
]

DEFAULT_TOLERANCE = 1e-5  # float32 parity, max |difference|
# --quantize: `VARIANTS` are the reduced-precision variants of the ONNX graphs (rnnkit_export.variants)
DEFAULT_MIN_AGREEMENT = 0.99  # variant gate: least arg-max agreement with fp32 on class-score outputs
# variant gate: max |variant - fp32| allowed, relative to the output's scale: tolerance * max(1, max |fp32|)
VARIANT_TOLERANCES = {INT8: 0.05, FP16: 0.01}


class ExportError(RuntimeError):
    """Export failed; nothing was published (the message says what and where)."""


@dataclass
class ExportReport:
    """What `export_model` returns and writes as ``rnnkit.json`` (``to_json`` adds ``format``).

    - ``model_name``, ``version``, ``path``: the published version directory.
    - ``formats``: the formats written (`FORMATS` order); ``inputs`` / ``outputs``: name, numpy
      dtype and shape (None for dynamic axes) of each of the model's tensors, by their own names.
    - ``signatures``: the SavedModel's signatures (``serving_default``, ``step``, ``encoder``,
      ``decoder_step``); ``warmup_records``: requests in the TF Serving warmup file.
    - ``streaming``: the streaming plan (``streamable``, ``mode``, ``reason``, ``layer``,
      ``states``, and ``encoder_decoder`` for encoder-decoder models).
    - ``fused_layers``: recurrent layers that became one fused ONNX op; ``fallbacks``: layer ->
      why it stayed a loop; ``swapped_native_layers``: Keras layers exported as their rnnkit twins.
    - ``op_census`` / ``step_op_census`` / ``encoder_op_census`` / ``decoder_step_op_census``: op
      type -> count in each ONNX graph (empty when the graph was not written).
    - ``parity``: the parity check (``rnnkit_export.verify.parity.ParityResult.to_json``), None
      without ``verify``; ``zero_padding_invariant``: whether zero right-padding is exact.
    - ``versions``: the tool versions; ``opset``: the ONNX opset (None without ONNX).
    - ``files``: every other file of the version -> bytes; ``variants``: ``--quantize`` results.
    """

    model_name: str
    version: int
    path: str
    formats: list[str]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    signatures: list[str] = field(default_factory=list)
    streaming: dict[str, Any] = field(default_factory=dict)
    fused_layers: list[str] = field(default_factory=list)
    fallbacks: dict[str, str] = field(default_factory=dict)
    swapped_native_layers: list[str] = field(default_factory=list)
    op_census: dict[str, int] = field(default_factory=dict)
    step_op_census: dict[str, int] = field(default_factory=dict)
    encoder_op_census: dict[str, int] = field(default_factory=dict)
    decoder_step_op_census: dict[str, int] = field(default_factory=dict)
    warmup_records: int = 0
    parity: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    opset: int | None = None
    padding: str = "any"  # masks of any shape (right/left padding, holes) are honoured
    # Appending all-zero steps leaves the answers unchanged (see rnnkit_export.verify.parity.zero_padding_invariant):
    # a server may batch different lengths by zero right-padding and stay exact.
    zero_padding_invariant: bool = False
    files: dict[str, int] = field(default_factory=dict)  # every other file of the version -> bytes
    # --quantize: variant -> published?, files, gate figures, per-node report (rnnkit_export.variants)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"format": MANIFEST_FORMAT, **self.__dict__}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True)

    def summary(self) -> str:
        lines = [f"exported {self.model_name} version {self.version} -> {self.path}"]
        lines.append(f"  formats: {', '.join(self.formats)}; signatures: {', '.join(self.signatures) or '-'}")
        ins = ", ".join(f"{t['name']} {t['dtype']}{t['shape']}" for t in self.inputs)
        outs = ", ".join(f"{t['name']} {t['dtype']}{t['shape']}" for t in self.outputs)
        lines.append(f"  inputs: {ins}\n  outputs: {outs}")
        if self.op_census:
            fused = {k: v for k, v in self.op_census.items() if k in ("LSTM", "GRU", "RNN", "Loop", "Scan")}
            lines.append(f"  ONNX opset {self.opset}: fused ops {fused}; layers fused: {', '.join(self.fused_layers)}")
        for layer, reason in self.fallbacks.items():
            lines.append(f"  NOT fused (loop fallback): {layer}: {reason}")
        if self.swapped_native_layers:
            lines.append(f"  keras.layers replaced by rnnkit twins: {', '.join(self.swapped_native_layers)}")
        streaming = self.streaming
        if streaming.get("streamable"):
            lines.append(f"  streaming: step graph with {len(streaming['states'])} state tensor(s)")
        elif streaming.get("encoder_decoder"):
            pair = streaming["encoder_decoder"]
            lines.append(
                f"  streaming: encoder graph + decoder step graph with {len(pair['states'])} state tensor(s) "
                f"({streaming.get('reason')})"
            )
        else:
            lines.append(f"  streaming: none ({streaming.get('reason')})")
        padding = "exact (zero padding is masked)" if self.zero_padding_invariant else "same-length only"
        lines.append(f"  batching of different lengths: {padding}")
        if self.parity is not None:
            worst = self.parity["worst"]
            verdict = "ok" if self.parity["passed"] else "FAILED"
            lines.append(
                f"  parity {verdict}: worst {worst['output'] or '-'} max|diff| {worst['max_abs_diff']:.2e} "
                f"(tolerance {self.parity['tolerance']:.0e})"
            )
        for variant, entry in self.variants.items():
            lines.extend(variant_summary(variant, entry))
        return "\n".join(lines)


def variant_summary(variant: str, entry: dict[str, Any]) -> list[str]:
    """Lines for one variant of ``rnnkit.json``'s ``variants``: published or why not, the gate's
    figures, what became int8/fp16 and what stayed fp32."""
    figures = entry["gate"].values()
    shares = [f["argmax_agreement"] for f in figures if "argmax_agreement" in f]
    worst = max((f["max_abs_diff"] for f in figures), default=0.0)
    agreement = f", arg-max agreement {min(shares):.4f} (min {entry['min_agreement']})" if shares else ""
    if entry["published"]:
        lines = [f"  variant {variant}: published {', '.join(entry['files'].values())}"]
    else:
        lines = [f"  variant {variant}: NOT published: {entry['reason']}"]
    if entry["gate"]:
        lines.append(f"    gate: max|diff| to fp32 {worst:.2e} (tolerance {entry['tolerance']} x scale){agreement}")
    rows = [row for graph in entry["layers"].values() for row in graph]
    if variant == INT8:
        done = sorted({f"{r['layer']} {r['op']}->{r['as']}" for r in rows if r["int8"]})
        kept = sorted({f"{r['layer']} {r['op']} ({r['reason']})" for r in rows if not r["int8"]})
        lines.append(f"    int8: {', '.join(done) or '-'}")
        if kept:
            lines.append(f"    fp32: {'; '.join(kept)}")
    elif rows:
        lines.append(f"    fp32 (rest fp16): {', '.join(sorted({r['op'] for r in rows}))}")
    return lines
