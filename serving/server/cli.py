"""``rnnkit serve`` (also ``python -m serving``): TF Serving's flags plus rnnkit's own.

Importing this module loads only argparse and the defaults (:mod:`rnnkit_serving.core.defaults`, where
every flag's default is written once): keras, rnnkit and TensorFlow stay out until a command runs (and
TensorFlow only for ``--backend tf`` or a non-zero gRPC ``--port``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from rnnkit_serving.core import defaults as D


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, received {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, received {text!r}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, received {text}")
    return value


def _milliseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 60_000:
        raise argparse.ArgumentTypeError(f"must be a number of milliseconds 0-60000, received {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port 0-65535 (0 = off), received {text}")
    return value


def _workers(text: str) -> int:
    from rnnkit_serving.core.workers import parse_workers

    try:
        return parse_workers(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


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
    tfs.add_argument(
        "--port", type=_port, default=D.PORT, help=f"gRPC port (default {D.PORT}; 0 = no gRPC, no TensorFlow)"
    )
    tfs.add_argument(
        "--rest_api_port",
        type=_port,
        default=D.REST_API_PORT,
        help=f"REST port (default {D.REST_API_PORT}; 0 = no REST)",
    )
    tfs.add_argument("--model_name", default=D.MODEL_NAME, help="name of the model at --model_base_path")
    tfs.add_argument("--model_base_path", help="model directory holding integer version directories")
    tfs.add_argument(
        "--model_config_file", help="ModelServerConfig text file (as `rnnkit export` writes models.config)"
    )
    tfs.add_argument(
        "--rest_api_timeout_in_ms",
        type=int,
        default=D.REST_API_TIMEOUT_MS,
        help=f"REST request timeout (default {D.REST_API_TIMEOUT_MS}; 504 after)",
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
        default=D.POLL_SECONDS,
        help=f"how often the base paths are rescanned for new/removed versions (default {D.POLL_SECONDS:g}; "
        "0 = only at start)",
    )
    kserve = parser.add_argument_group("KServe v2 / Triton flags")
    kserve.add_argument(
        "--grpc_inference_port",
        type=_port,
        default=D.GRPC_INFERENCE_PORT,
        help="KServe v2 gRPC port (inference.GRPCInferenceService, as Triton's --grpc-port; KServe runtimes use 8081;"
        f" default {D.GRPC_INFERENCE_PORT} = off)",
    )
    own = parser.add_argument_group("rnnkit flags")
    own.add_argument("--host", default=D.HOST, help=f"address to bind (default {D.HOST}; 0.0.0.0 for all)")
    own.add_argument(
        "--backend", choices=D.BACKENDS, default=D.BACKEND, help="runtime: onnx (default) or tf (SavedModel)"
    )
    own.add_argument("--device", choices=D.DEVICES, default=D.DEVICE, help="cpu (default), gpu (CUDA, else CPU), auto")
    own.add_argument("--strict_device", action="store_true", help="fail instead of falling back from GPU to CPU")
    own.add_argument(
        "--variant",
        choices=D.RUNTIME_VARIANTS,
        default=D.VARIANT,
        help="which exported ONNX graphs run: fp32 (default), int8 or fp16 (published by `rnnkit export --quantize`; "
        "fp16 is meant for --device gpu); the metadata endpoint reports it",
    )
    own.add_argument(
        "--intra_op_threads",
        type=int,
        default=D.INTRA_OP_THREADS,
        help=f"runtime threads per op (default {D.INTRA_OP_THREADS}; 0 = runtime)",
    )
    own.add_argument(
        "--inter_op_threads",
        type=int,
        default=D.INTER_OP_THREADS,
        help=f"runtime threads across ops (default {D.INTER_OP_THREADS})",
    )
    own.add_argument(
        "--max_request_bytes",
        type=_positive,
        default=D.MAX_REQUEST_BYTES,
        help=f"request size limit ({D.MAX_REQUEST_BYTES >> 20} MiB)",
    )
    own.add_argument(
        "--max_batch_size",
        type=_positive,
        default=D.MAX_BATCH_SIZE,
        help=f"largest batch a request may hold (default {D.MAX_BATCH_SIZE})",
    )
    own.add_argument(
        "--max_sequence_length",
        type=_positive,
        default=D.MAX_SEQUENCE_LENGTH,
        help="most time steps a request may hold: axis 1, when its length is not fixed, of (batch, time, features) "
        f"inputs and of (batch, time) integer token ids (default {D.MAX_SEQUENCE_LENGTH})",
    )
    own.add_argument(
        "--max_request_elements",
        type=_positive,
        default=D.MAX_REQUEST_ELEMENTS,
        help="most tensor elements of all inputs of one request together, checked on the declared shapes "
        f"before anything is allocated (default {D.MAX_REQUEST_ELEMENTS})",
    )
    own.add_argument(
        "--allow_non_finite_inputs",
        action="store_true",
        help="pass NaN/Infinity inputs to the model (default: refused with 400 / INVALID_ARGUMENT)",
    )
    own.add_argument(
        "--server_workers",
        type=_workers,
        default=D.SERVER_WORKERS,
        help=f"server processes sharing every port (SO_REUSEPORT), each with its own models, batcher and "
        f"sessions; sequences are routed to the process that holds them and metrics are summed over all; "
        f"auto = the usable CPUs (default {D.SERVER_WORKERS}: one process, as before)",
    )
    own.add_argument(
        "--rest_workers",
        type=_positive,
        default=D.REST_WORKERS,
        help=f"threads running REST requests (default {D.REST_WORKERS})",
    )
    own.add_argument(
        "--rest_inline_ms",
        type=_milliseconds,
        default=D.REST_INLINE_MS,
        help=f"with nothing else in flight, a REST request whose like ran within this many ms runs on the event "
        f"loop instead of a worker thread, saving two thread wake-ups (it never waits for a batch; not with "
        f"several server workers; default {D.REST_INLINE_MS:g}; 0 = always a worker thread)",
    )
    own.add_argument(
        "--grpc_workers",
        type=_positive,
        default=D.GRPC_WORKERS,
        help=f"gRPC requests run at once (default {D.GRPC_WORKERS}; each admitted call also has a thread to wait in, "
        "up to --grpc_max_concurrent_rpcs)",
    )
    own.add_argument(
        "--grpc_timeout_in_ms",
        type=int,
        default=D.GRPC_TIMEOUT_MS,
        help=f"server-side deadline of a gRPC Predict (default {D.GRPC_TIMEOUT_MS}; <= 0: the client's only)",
    )
    own.add_argument(
        "--grpc_max_concurrent_rpcs",
        type=_positive,
        default=D.GRPC_MAX_CONCURRENT_RPCS,
        help=f"gRPC calls accepted at once; more get RESOURCE_EXHAUSTED (default {D.GRPC_MAX_CONCURRENT_RPCS})",
    )
    own.add_argument(
        "--grpc_tensor_content", action="store_true", help="reply with tensor_content instead of typed *_val fields"
    )
    own.add_argument(
        "--drain_seconds",
        type=float,
        default=D.DRAIN_SECONDS,
        help=f"how long SIGTERM waits for requests ({D.DRAIN_SECONDS:g})",
    )
    own.add_argument(
        "--num_versions",
        type=_positive,
        default=D.NUM_VERSIONS,
        help=f"serve the newest N versions of each model (default {D.NUM_VERSIONS}; a config's model_version_policy "
        "wins)",
    )
    own.add_argument(
        "--batching_bucket_width",
        type=int,
        default=D.BATCHING_BUCKET_WIDTH,
        help="length buckets for batching padded sequences: 0 = quarter-octaves (default), N = N steps wide",
    )
    own.add_argument(
        "--session_idle_seconds",
        type=float,
        default=D.SESSION_IDLE_SECONDS,
        help=f"a streaming session (sequence_id) idle this long is dropped (default {D.SESSION_IDLE_SECONDS:g})",
    )
    own.add_argument(
        "--max_sessions",
        type=_positive,
        default=D.MAX_SESSIONS,
        help=f"most live streaming sessions (default {D.MAX_SESSIONS}; then 429)",
    )
    own.add_argument(
        "--max_sequence_id_length",
        type=_positive,
        default=D.MAX_SEQUENCE_ID_LENGTH,
        help=f"longest string sequence_id in UTF-8 bytes (default {D.MAX_SEQUENCE_ID_LENGTH}; then 400)",
    )
    edges = parser.add_argument_group("connection limits (every port)")
    edges.add_argument(
        "--max_header_bytes",
        type=_positive,
        default=D.MAX_HEADER_BYTES,
        help=f"a REST request line + headers or a gRPC metadata block (default {D.MAX_HEADER_BYTES}; then 431)",
    )
    edges.add_argument(
        "--header_timeout_seconds",
        type=_positive_float,
        default=D.HEADER_TIMEOUT_SECONDS,
        help="from connecting (or the last answer) to the end of a request's headers, also the TLS/HTTP2 "
        f"handshake of gRPC; slower connections are closed (default {D.HEADER_TIMEOUT_SECONDS:g})",
    )
    edges.add_argument(
        "--body_timeout_seconds",
        type=_positive_float,
        default=D.BODY_TIMEOUT_SECONDS,
        help=f"the longest pause while a REST body arrives (default {D.BODY_TIMEOUT_SECONDS:g}; then 408)",
    )
    edges.add_argument(
        "--min_body_rate",
        type=_positive_float,
        default=D.MIN_BODY_RATE,
        help="bytes a second a REST body must average: it must have arrived within one --body_timeout_seconds "
        f"plus its size over this rate (default {D.MIN_BODY_RATE:g}; then 408)",
    )
    edges.add_argument(
        "--max_connections",
        type=_positive,
        default=D.MAX_CONNECTIONS,
        help=f"open connections per port (default {D.MAX_CONNECTIONS}); REST keeps "
        f"{D.HEALTH_RESERVE_CONNECTIONS} more for health and readiness probes",
    )
    edges.add_argument(
        "--idle_connection_seconds",
        type=_positive_float,
        default=D.IDLE_CONNECTION_SECONDS,
        help="a gRPC connection without a call is closed after this long (REST keep-alive: 5 s) "
        f"(default {D.IDLE_CONNECTION_SECONDS:g})",
    )
    edges.add_argument(
        "--grpc_max_streams",
        type=_positive,
        default=D.GRPC_MAX_STREAMS,
        help=f"open KServe ModelStreamInfer streams per port, below --grpc_workers (default {D.GRPC_MAX_STREAMS})",
    )
    edges.add_argument(
        "--grpc_stream_idle_seconds",
        type=_positive_float,
        default=D.GRPC_STREAM_IDLE_SECONDS,
        help=f"a stream without a request this long is cancelled (default {D.GRPC_STREAM_IDLE_SECONDS:g})",
    )
    edges.add_argument(
        "--grpc_message_timeout_seconds",
        type=_positive_float,
        default=D.GRPC_MESSAGE_TIMEOUT_SECONDS,
        help="a unary gRPC call whose request message has not arrived this long after the call is cancelled "
        f"(default {D.GRPC_MESSAGE_TIMEOUT_SECONDS:g})",
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
    """``rnnkit serve``. With ``--server_workers N`` > 1 this process supervises N workers instead of serving
    (:mod:`rnnkit_serving.server.workers`); each of them runs :func:`serve` with the supervisor's flags."""
    return serve(args)


def serve(args: argparse.Namespace, ring: Any = None, ready: Any = None) -> int:
    """Serve `args`. `ring` and `ready`: in a worker of ``--server_workers N``
    (:mod:`rnnkit_serving.server.worker_main`), its :class:`~rnnkit_serving.core.workers.WorkerRing` and what it
    calls once serving."""
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    count = getattr(args, "server_workers", D.SERVER_WORKERS)
    if ring is None and count > 1:
        if args.ssl_config_file:
            print(
                "rnnkit serve: --server_workers above 1 cannot be combined with --ssl_config_file yet", file=sys.stderr
            )
            return 2
        from rnnkit_serving.server.workers import supervise

        return supervise(args, count)
    from rnnkit_serving.config.batching_config import BatchingParameters, read_batching_parameters
    from rnnkit_serving.config.connections import ConnectionLimits
    from rnnkit_serving.config.model_config import VersionPolicy
    from rnnkit_serving.config.text_format import ConfigError
    from rnnkit_serving.config.tls import SSLConfig, read_ssl_config
    from rnnkit_serving.core.signature import Limits
    from rnnkit_serving.errors import ServingError
    from rnnkit_serving.fronts.rest.app import RestOptions
    from rnnkit_serving.runtime.backend import RuntimeOptions
    from rnnkit_serving.scheduling.session_store import SessionOptions
    from rnnkit_serving.server.model_server import ModelServer, ServerOptions, load_registry, model_configs

    try:
        batching: BatchingParameters | None = None
        if args.enable_batching:
            batching = read_batching_parameters(args.batching_parameters_file, args.batching_bucket_width)
        elif args.batching_parameters_file:
            raise ValueError("--batching_parameters_file needs --enable_batching")
        sessions = SessionOptions(args.session_idle_seconds, args.max_sessions, args.max_sequence_id_length)
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
        rest=RestOptions(args.rest_api_timeout_in_ms, args.max_request_bytes, args.rest_workers, args.rest_inline_ms),
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
        workers=ring,
        connections=ConnectionLimits(
            max_header_bytes=args.max_header_bytes,
            header_timeout_s=args.header_timeout_seconds,
            body_timeout_s=args.body_timeout_seconds,
            min_body_rate=args.min_body_rate,
            max_connections=args.max_connections,
            idle_connection_s=args.idle_connection_seconds,
            grpc_max_streams=args.grpc_max_streams,
            grpc_stream_idle_s=args.grpc_stream_idle_seconds,
            grpc_message_timeout_s=args.grpc_message_timeout_seconds,
        ),
    )
    try:
        return ModelServer(registry, options).serve_forever(ready)
    except (OSError, ValueError, ImportError) as error:
        print(f"rnnkit serve: {error}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m rnnkit_serving`` (``rnnkit serve`` adds the same flags to its subcommand)."""
    parser = argparse.ArgumentParser(prog="python -m serving", description="rnnkit's TF-Serving-compatible server")
    return configure_parser(parser)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
