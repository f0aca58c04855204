"""``rnnkit serve`` (also ``python -m serving``): TF Serving's flags plus rnnkit's own.

Importing this module loads only argparse: keras, rnnkit and TensorFlow stay out until a
command runs (and TensorFlow only for ``--backend tf`` or a non-zero gRPC ``--port``).
"""

from __future__ import annotations

import argparse
import logging
import sys

BACKENDS = ("onnx", "tf")
DEVICES = ("cpu", "gpu", "auto")
# rnnkit_serving.core.signature.DEFAULT_LIMITS and rnnkit_serving.fronts.grpc.tfs's defaults, written out so that this module
# imports nothing heavy (a test keeps them equal)
DEFAULT_MAX_BATCH_SIZE = 1024
DEFAULT_MAX_SEQUENCE_LENGTH = 8192
DEFAULT_MAX_REQUEST_ELEMENTS = 8 << 20
DEFAULT_GRPC_TIMEOUT_MS = 30_000
DEFAULT_GRPC_MAX_CONCURRENT_RPCS = 64


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, received {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port 0-65535 (0 = off), received {text}")
    return value


def _flag(text: str) -> bool:
    """TF Serving's bool flags: `--enable_batching`, `--enable_batching=true`, `--enable_batching=false`."""
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"must be true or false, received {text}")


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    tfs = parser.add_argument_group("TensorFlow Serving flags")
    tfs.add_argument("--port", type=_port, default=8500, help="gRPC port (default 8500; 0 = no gRPC, no TensorFlow)")
    tfs.add_argument("--rest_api_port", type=_port, default=8501, help="REST port (default 8501; 0 = no REST)")
    tfs.add_argument("--model_name", default="default", help="name of the model at --model_base_path")
    tfs.add_argument("--model_base_path", help="model directory holding integer version directories")
    tfs.add_argument(
        "--model_config_file", help="ModelServerConfig text file (as `rnnkit export` writes models.config)"
    )
    tfs.add_argument(
        "--rest_api_timeout_in_ms", type=int, default=30_000, help="REST request timeout (default 30000; 504 after)"
    )
    tfs.add_argument(
        "--enable_batching",
        type=_flag,
        nargs="?",
        const=True,
        default=False,
        help="merge concurrent predictions into batches (exact for variable-length sequences)",
    )
    tfs.add_argument(
        "--batching_parameters_file",
        help="BatchingParameters text file: max_batch_size, batch_timeout_micros, num_batch_threads, "
        "max_enqueued_batches (default: TF Serving's 1000, 0, CPUs, 10)",
    )
    tfs.add_argument(
        "--ssl_config_file",
        help="SSLConfig text file (server_key, server_cert, custom_ca as PEM text; client_verify): "
        "TLS on gRPC and REST",
    )
    tfs.add_argument(
        "--file_system_poll_wait_seconds",
        type=float,
        default=1.0,
        help="how often the base paths are rescanned for new/removed versions (default 1; 0 = only at start)",
    )
    kserve = parser.add_argument_group("KServe v2 / Triton flags")
    kserve.add_argument(
        "--grpc_inference_port",
        type=_port,
        default=0,
        help="KServe v2 gRPC port (inference.GRPCInferenceService, as Triton's --grpc-port; KServe runtimes use 8081;"
        " default 0 = off)",
    )
    own = parser.add_argument_group("rnnkit flags")
    own.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    own.add_argument("--backend", choices=BACKENDS, default="onnx", help="runtime: onnx (default) or tf (SavedModel)")
    own.add_argument("--device", choices=DEVICES, default="cpu", help="cpu (default), gpu (CUDA, else CPU), auto")
    own.add_argument("--strict_device", action="store_true", help="fail instead of falling back from GPU to CPU")
    own.add_argument(
        "--variant",
        choices=("fp32", "int8", "fp16"),
        default="fp32",
        help="which exported ONNX graphs run: fp32 (default), int8 or fp16 (published by `rnnkit export --quantize`; "
        "fp16 is meant for --device gpu); the metadata endpoint reports it",
    )
    own.add_argument("--intra_op_threads", type=int, default=1, help="runtime threads per op (default 1; 0 = runtime)")
    own.add_argument("--inter_op_threads", type=int, default=1, help="runtime threads across ops (default 1)")
    own.add_argument("--max_request_bytes", type=_positive, default=16 << 20, help="request size limit (16 MiB)")
    own.add_argument(
        "--max_batch_size",
        type=_positive,
        default=DEFAULT_MAX_BATCH_SIZE,
        help=f"largest batch a request may hold (default {DEFAULT_MAX_BATCH_SIZE})",
    )
    own.add_argument(
        "--max_sequence_length",
        type=_positive,
        default=DEFAULT_MAX_SEQUENCE_LENGTH,
        help=f"most time steps a request may hold (default {DEFAULT_MAX_SEQUENCE_LENGTH})",
    )
    own.add_argument(
        "--max_request_elements",
        type=_positive,
        default=DEFAULT_MAX_REQUEST_ELEMENTS,
        help="most tensor elements of all inputs of one request together, checked on the declared shapes "
        f"before anything is allocated (default {DEFAULT_MAX_REQUEST_ELEMENTS})",
    )
    own.add_argument(
        "--allow_non_finite_inputs",
        action="store_true",
        help="pass NaN/Infinity inputs to the model (default: refused with 400 / INVALID_ARGUMENT)",
    )
    own.add_argument("--rest_workers", type=_positive, default=4, help="threads running REST requests (default 4)")
    own.add_argument("--grpc_workers", type=_positive, default=8, help="threads running gRPC requests (default 8)")
    own.add_argument(
        "--grpc_timeout_in_ms",
        type=int,
        default=DEFAULT_GRPC_TIMEOUT_MS,
        help=f"server-side deadline of a gRPC Predict (default {DEFAULT_GRPC_TIMEOUT_MS}; <= 0: the client's only)",
    )
    own.add_argument(
        "--grpc_max_concurrent_rpcs",
        type=_positive,
        default=DEFAULT_GRPC_MAX_CONCURRENT_RPCS,
        help=f"gRPC calls accepted at once; more get RESOURCE_EXHAUSTED (default {DEFAULT_GRPC_MAX_CONCURRENT_RPCS})",
    )
    own.add_argument(
        "--grpc_tensor_content", action="store_true", help="reply with tensor_content instead of typed *_val fields"
    )
    own.add_argument("--drain_seconds", type=float, default=30.0, help="how long SIGTERM waits for requests (30)")
    own.add_argument(
        "--num_versions",
        type=_positive,
        default=1,
        help="serve the newest N versions of each model (default 1; a config's model_version_policy wins)",
    )
    own.add_argument(
        "--batching_bucket_width",
        type=int,
        default=0,
        help="length buckets for batching padded sequences: 0 = quarter-octaves (default), N = N steps wide",
    )
    own.add_argument(
        "--session_idle_seconds",
        type=float,
        default=60.0,
        help="a streaming session (sequence_id) idle this long is dropped (default 60)",
    )
    own.add_argument(
        "--max_sessions", type=_positive, default=1000, help="most live streaming sessions (default 1000; then 429)"
    )
    own.add_argument("--log_level", default="WARNING", help="logging level (default WARNING)")
    parser.set_defaults(func=run)
    return parser


def add_serve_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model repository over TF Serving's REST and gRPC APIs (ONNX Runtime or TF)",
        description="A TF-Serving-compatible server for the repository `rnnkit export` writes.",
    )
    configure_parser(parser)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from rnnkit_serving.runtime.backend import RuntimeOptions
    from rnnkit_serving.config.batching_config import BatchingParameters, read_batching_parameters
    from rnnkit_serving.errors import ServingError
    from rnnkit_serving.config.model_config import VersionPolicy
    from rnnkit_serving.fronts.rest.app import RestOptions
    from rnnkit_serving.server.model_server import ModelServer, ServerOptions, load_registry, model_configs
    from rnnkit_serving.scheduling.session_store import SessionOptions
    from rnnkit_serving.core.signature import Limits
    from rnnkit_serving.config.text_format import ConfigError
    from rnnkit_serving.config.tls import SSLConfig, read_ssl_config

    try:
        batching: BatchingParameters | None = None
        if args.enable_batching:
            batching = read_batching_parameters(args.batching_parameters_file, args.batching_bucket_width)
        elif args.batching_parameters_file:
            raise ValueError("--batching_parameters_file needs --enable_batching")
        sessions = SessionOptions(args.session_idle_seconds, args.max_sessions)
        if sessions.idle_seconds <= 0:
            raise ValueError(f"--session_idle_seconds must be positive, received {sessions.idle_seconds:g}")
        ssl: SSLConfig | None = read_ssl_config(args.ssl_config_file) if args.ssl_config_file else None
        configs = model_configs(args.model_name, args.model_base_path, args.model_config_file)
        limits = Limits(args.max_batch_size, args.max_sequence_length, args.max_request_elements)
        registry = load_registry(
            configs,
            args.backend,
            args.device,
            limits,
            RuntimeOptions(args.intra_op_threads, args.inter_op_threads, args.strict_device, args.variant),
            VersionPolicy("latest", args.num_versions),
        )
    except (ConfigError, ServingError, ValueError) as error:
        print(f"rnnkit serve: {error}", file=sys.stderr)
        return 2
    if not registry.available():
        print(f"rnnkit serve: no model version could be loaded from {[c.base_path for c in configs]}", file=sys.stderr)
        return 1
    options = ServerOptions(
        host=args.host,
        rest_api_port=args.rest_api_port,
        port=args.port,
        grpc_inference_port=args.grpc_inference_port,
        rest=RestOptions(args.rest_api_timeout_in_ms, args.max_request_bytes, args.rest_workers),
        grpc_workers=args.grpc_workers,
        grpc_timeout_ms=args.grpc_timeout_in_ms,
        grpc_max_concurrent_rpcs=args.grpc_max_concurrent_rpcs,
        limits=limits,
        allow_non_finite_inputs=args.allow_non_finite_inputs,
        grpc_tensor_content=args.grpc_tensor_content,
        drain_seconds=args.drain_seconds,
        batching=batching,
        sessions=sessions,
        poll_seconds=args.file_system_poll_wait_seconds,
        ssl=ssl,
    )
    try:
        return ModelServer(registry, options).serve_forever()
    except (OSError, ValueError, ImportError) as error:
        print(f"rnnkit serve: {error}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving", description="rnnkit's TF-Serving-compatible server")
    args = configure_parser(parser).parse_args(argv)
    return int(args.func(args))
