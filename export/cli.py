"""``rnnkit export``: the command-line face of ``export_model``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator

from rnnkit_export.report import DEFAULT_MIN_AGREEMENT, DEFAULT_TOLERANCE, FORMATS, VARIANT_TOLERANCES, VARIANTS

LIBRARY_LOGGERS = ("tensorflow", "absl", "tf2onnx", "keras", "h5py", "onnxruntime")
OWN_MODULES = r"(rnnkit|rnnkit_export)(\.|$)"  # warnings from these modules are the command's own
DESCRIPTION = "Export a .keras model into a TF Serving / Triton / rnnkit model repository."


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a verified model version (SavedModel + fused-op ONNX) into a model repository",
        description=DESCRIPTION,
    )
    configure_parser(parser)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``rnnkit export`` on its own (the documentation's CLI reference reads it)."""
    return configure_parser(argparse.ArgumentParser(prog="rnnkit export", description=DESCRIPTION))


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``rnnkit export``'s arguments to `parser`."""
    parser.add_argument("model", help="path of a .keras file")
    parser.add_argument("--model_base_path", required=True, help="repository root (e.g. models)")
    parser.add_argument("--model_name", required=True, help="model name (directory under the base path)")
    parser.add_argument(
        "--serving_base_path",
        default=None,
        help="where servers will mount the repository (e.g. /models): models.config names <it>/<model> instead "
        "of this machine's path (default: the absolute --model_base_path)",
    )
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
    parser.add_argument(
        "--quantize",
        default=None,
        help=f"also write reduced-precision variants of every ONNX graph, comma-separated subset of {VARIANTS} "
        "(model.int8.onnx, ...); each is published only if it passes the accuracy gate",
    )
    parser.add_argument(
        "--variant_min_agreement",
        type=float,
        default=DEFAULT_MIN_AGREEMENT,
        help=f"gate: least arg-max agreement with fp32 on class-score outputs ({DEFAULT_MIN_AGREEMENT}); "
        f"max |diff| must also stay within {VARIANT_TOLERANCES} x max(1, max|fp32|)",
    )
    parser.add_argument(
        "--calibration_data",
        default=None,
        metavar="FILE.npz",
        help="gate: also compare the variants on these inputs (one array per model input, same names)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="also show TensorFlow, absl and tf2onnx log lines and warnings"
    )
    parser.set_defaults(func=run)
    return parser


@contextlib.contextmanager
def library_output(verbose: bool) -> Iterator[None]:
    """Where TensorFlow's, absl's and tf2onnx's output goes while the command runs.

    Default: the command prints only its own lines. Native output on file descriptor 2 (the
    start-up and device lines of TensorFlow's C++ runtime and absl, which TF_CPP_MIN_LOG_LEVEL
    does not cover before absl is initialised) goes to a temporary file that is discarded;
    Python's ``sys.stderr`` keeps the real stderr; the library loggers are set to ERROR and
    Python warnings raised outside rnnkit/export are ignored. ``verbose``: all of it passes, with
    TensorFlow's C++ log at INFO when TensorFlow is not imported yet.
    """
    if verbose:
        if "tensorflow" not in sys.modules:
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        with _log_warnings_to_stderr():
            yield
        return
    loggers = {name: logging.getLogger(name) for name in LIBRARY_LOGGERS}
    levels = {name: logger.level for name, logger in loggers.items()}
    python_stderr = sys.stderr
    try:
        on_fd2 = python_stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # replaced by a test harness: not on fd 2
        on_fd2 = False
    python_stderr.flush()
    real_fd2 = os.dup(2)
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        warnings.filterwarnings("default", module=OWN_MODULES)
        for logger in loggers.values():
            logger.setLevel(logging.ERROR)
        os.dup2(sink.fileno(), 2)
        if on_fd2:
            sys.stderr = open(real_fd2, "w", buffering=1, closefd=False)
        try:
            with _log_warnings_to_stderr():
                yield
        finally:
            sys.stderr.flush()
            if on_fd2:
                sys.stderr.close()
                sys.stderr = python_stderr
            os.dup2(real_fd2, 2)
            os.close(real_fd2)
            for name, logger in loggers.items():
                logger.setLevel(levels[name])


@contextlib.contextmanager
def _log_warnings_to_stderr() -> Iterator[None]:
    """Log records of WARNING and above to the current ``sys.stderr`` unless logging is set up."""
    root = logging.getLogger()
    handler = None
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    level = root.level
    root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.setLevel(level)
        if handler is not None:
            root.removeHandler(handler)


def run(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.model) or not args.model.endswith(".keras"):
        print(f"rnnkit export: MODEL must be an existing .keras file. Received: {args.model!r}", file=sys.stderr)
        return 2
    with library_output(args.verbose):
        return _export(args)


def _export(args: argparse.Namespace) -> int:
    import keras

    import rnnkit.layers  # noqa: F401  (registers rnnkit classes for deserialization)
    from rnnkit_export.api import ExportOptions, export_model
    from rnnkit_export.report import ExportError

    try:
        model = keras.saving.load_model(args.model)
    except Exception as error:  # a corrupt or foreign file
        print(f"rnnkit export: {args.model!r} is not a loadable Keras model: {error}", file=sys.stderr)
        return 2
    options = ExportOptions(
        version=args.version,
        formats=args.formats,
        opset=args.opset,
        strict=args.strict,
        verify=args.verify,
        tolerance=args.tolerance,
        streaming=args.streaming,
        serving_base_path=args.serving_base_path,
        quantize=args.quantize,
        variant_min_agreement=args.variant_min_agreement,
        calibration_data=args.calibration_data,
    )
    try:
        report = export_model(model, args.model_base_path, args.model_name, options)
    except (ExportError, ValueError) as error:
        print(f"rnnkit export: {error}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0
