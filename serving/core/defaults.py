"""Every default of the server, once, beside the flag that changes it.

``rnnkit serve`` (:mod:`rnnkit_serving.server.cli`), the option classes
(:class:`~rnnkit_serving.server.model_server.ServerOptions`, :class:`~rnnkit_serving.fronts.rest.http_io.RestOptions`,
:class:`~rnnkit_serving.scheduling.session_store.SessionOptions`,
:class:`~rnnkit_serving.runtime.backend.RuntimeOptions`), the request limits
(:data:`rnnkit_serving.core.signature.DEFAULT_LIMITS`) and the gRPC fronts all read them from here.

Pure Python with no dependency: the CLI imports it before anything heavy. Every client-chosen size
has a finite default here (ARCHITECTURE.md, "edges are part of the design").
"""

from __future__ import annotations

from rnnkit_serving.core.repository_format import FP32, VARIANTS

# ---------------------------------------------------------------------------------- addresses
HOST = "127.0.0.1"  # --host (0.0.0.0 for all interfaces)
PORT = 8500  # --port: TF Serving gRPC; 0 = off (and no TensorFlow protos)
REST_API_PORT = 8501  # --rest_api_port; 0 = off
GRPC_INFERENCE_PORT = 0  # --grpc_inference_port: KServe v2 gRPC; 0 = off
MODEL_NAME = "default"  # --model_name

# ------------------------------------------------------------------------------------ runtime
BACKENDS = ("onnx", "tf")  # --backend choices: ONNX Runtime, TensorFlow SavedModel
BACKEND = "onnx"  # --backend
DEVICES = ("cpu", "gpu", "auto")  # --device choices
DEVICE = "cpu"  # --device
# --variant choices: which precision of the exported ONNX graphs runs (model.onnx, or a variant export
# published behind its accuracy gate: model.int8.onnx, model.fp16.onnx; rnnkit.json "variants")
RUNTIME_VARIANTS = (FP32, *VARIANTS)
VARIANT = FP32  # --variant
INTRA_OP_THREADS = 1  # --intra_op_threads (0 = the runtime's own)
INTER_OP_THREADS = 1  # --inter_op_threads

# --------------------------------------------------------------------------- request limits
# A 16 MiB body (--max_request_bytes) holds at most ~8 M JSON numbers, so the element budget refuses
# nothing a body of the default size can carry as JSON; what it stops is a small gRPC message
# *declaring* a huge shape (typed values repeat their last value to fill it).
MAX_REQUEST_BYTES = 16 << 20  # --max_request_bytes: a REST body, a gRPC message
MAX_BATCH_SIZE = 1024  # --max_batch_size
MAX_SEQUENCE_LENGTH = 8192  # --max_sequence_length
MAX_REQUEST_ELEMENTS = 8 << 20  # --max_request_elements: all inputs of one request together

# -------------------------------------------------------------------------- threads, timeouts
REST_API_TIMEOUT_MS = 30_000  # --rest_api_timeout_in_ms; <= 0 disables
GRPC_TIMEOUT_MS = 30_000  # --grpc_timeout_in_ms (as REST's); <= 0: the client's deadline only
# --server_workers: processes sharing every port; 1 = one process (the tests start many servers on 2 cores)
SERVER_WORKERS = 1
REST_WORKERS = 4  # --rest_workers: threads running decode + runtime + encode
# --rest_inline_ms: with nothing else in flight, a REST request whose like ran within this budget skips the
# worker thread (rnnkit_serving.scheduling.inline); 0 = always a worker thread
REST_INLINE_MS = 5.0
GRPC_WORKERS = 8  # --grpc_workers
GRPC_MAX_CONCURRENT_RPCS = 64  # --grpc_max_concurrent_rpcs: x 16 MiB messages, at most ~1 GiB of requests held
DRAIN_SECONDS = 30.0  # --drain_seconds: how long SIGTERM waits for requests in flight
POLL_SECONDS = 1.0  # --file_system_poll_wait_seconds; <= 0: read the base paths once

# ------------------------------------------------------------------------ versions, sessions
NUM_VERSIONS = 1  # --num_versions: the newest N versions of each model serve
BATCHING_BUCKET_WIDTH = 0  # --batching_bucket_width: 0 = quarter-octave length buckets
SESSION_IDLE_SECONDS = 60.0  # --session_idle_seconds
MAX_SESSIONS = 1000  # --max_sessions
# a string sequence id's UTF-8 bytes (integer ids are Triton's uint64): 1000 sessions x 256 B, not x 15 MiB
MAX_SEQUENCE_ID_LENGTH = 256  # --max_sequence_id_length

# ------------------------------------------------------------------------ connections (edges)
# Every connection a client opens is bounded in size, time and number, on the REST and gRPC ports.
MAX_HEADER_BYTES = 32 << 10  # --max_header_bytes: a REST request line + headers, a gRPC metadata block
HEADER_TIMEOUT_SECONDS = 10.0  # --header_timeout_seconds: connect (or last response) -> end of headers
BODY_TIMEOUT_SECONDS = 30.0  # --body_timeout_seconds: the longest pause while a declared body arrives
MIN_BODY_RATE = 500  # --min_body_rate: bytes a second a REST body must average (+ one pause's grace)
MAX_CONNECTIONS = 512  # --max_connections: open connections per port (REST; gRPC per port)
HEALTH_RESERVE_CONNECTIONS = 16  # REST connections beyond --max_connections that serve health/readiness only
IDLE_CONNECTION_SECONDS = 60.0  # --idle_connection_seconds: a gRPC connection with no call is closed
GRPC_MAX_STREAMS = 4  # --grpc_max_streams: open ModelStreamInfer streams per port (< --grpc_workers)
GRPC_STREAM_IDLE_SECONDS = 60.0  # --grpc_stream_idle_seconds: a stream with no request this long is cancelled
# --grpc_message_timeout_seconds: a unary call's request message must have arrived this long after the call (a
# 16 MiB message then needs ~280 KB/s); a call sending headers only holds a server thread until then
GRPC_MESSAGE_TIMEOUT_SECONDS = 60.0
