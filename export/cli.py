"""``rnnkit export``: the command-line face of ``export_model``."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from export.report import DEFAULT_TOLERANCE, FORMATS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a verified model version (SavedModel + fused-op ONNX) into a model repository",
        description="Export a .keras model into a TF Serving / Triton / rnnkit model repository.",
    )
    parser.add_argument("model", help="path of a .keras file")
    parser.add_argument("--model_base_path", required=True, help="repository root (e.g. models)")
    parser.add_argument("--model_name", required=True, help="model name (directory under the base path)")
    parser.add_argument("--version", type=int, default=None, help="version number (default: next integer)")
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated subset of {FORMATS}")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (14-18, default 17)")
    parser.add_argument("--strict", action="store_true", help="fail if a recurrent layer cannot be fused")
    parser.add_argument("--no-verify", dest="verify", action="store_false", help="skip the parity check")
    parser.add_argument(
        "--streaming",
        choices=("auto", "off", "required"),
        default="auto",
        help="step graphs: auto (only where chunked streaming is provably exact), off, required (fail if not)",
    )
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="parity tolerance (1e-5)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    if not os.path.isfile(args.model) or not args.model.endswith(".keras"):
        print(f"rnnkit export: MODEL must be an existing .keras file. Received: {args.model!r}", file=sys.stderr)
        return 2
    import keras

    import rnnkit.layers  # noqa: F401  (registers rnnkit classes for deserialization)
    from export.api import export_model
    from export.report import ExportError

    try:
        model = keras.saving.load_model(args.model)
    except Exception as error:  # a corrupt or foreign file
        print(f"rnnkit export: {args.model!r} is not a loadable Keras model: {error}", file=sys.stderr)
        return 2
    try:
        report = export_model(
            model,
            args.model_base_path,
            args.model_name,
            version=args.version,
            formats=args.formats,
            opset=args.opset,
            strict=args.strict,
            verify=args.verify,
            tolerance=args.tolerance,
            streaming=args.streaming,
        )
    except (ExportError, ValueError) as error:
        print(f"rnnkit export: {error}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0
