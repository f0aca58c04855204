"""The connection-level limits of every port: sizes, times and counts a client cannot exceed.

One value read by the REST guard (:mod:`rnnkit_serving.fronts.rest.connections`), the gRPC server
builder (channel arguments) and the KServe gRPC stream servicer; each field names its flag, which
error messages quote.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from rnnkit_serving.core import defaults


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int = defaults.MAX_HEADER_BYTES  # --max_header_bytes
    header_timeout_s: float = defaults.HEADER_TIMEOUT_SECONDS  # --header_timeout_seconds
    body_timeout_s: float = defaults.BODY_TIMEOUT_SECONDS  # --body_timeout_seconds
    min_body_rate: float = defaults.MIN_BODY_RATE  # --min_body_rate (bytes a second)
    max_connections: int = defaults.MAX_CONNECTIONS  # --max_connections
    health_reserve: int = defaults.HEALTH_RESERVE_CONNECTIONS  # REST only, not a flag
    idle_connection_s: float = defaults.IDLE_CONNECTION_SECONDS  # --idle_connection_seconds
    grpc_max_streams: int = defaults.GRPC_MAX_STREAMS  # --grpc_max_streams
    grpc_stream_idle_s: float = defaults.GRPC_STREAM_IDLE_SECONDS  # --grpc_stream_idle_seconds
    grpc_message_timeout_s: float = defaults.GRPC_MESSAGE_TIMEOUT_SECONDS  # --grpc_message_timeout_seconds

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if not value > 0 and item.name != "health_reserve":
                raise ValueError(f"connection limit {item.name} must be positive; received {value!r}")

    def grpc_channel_args(self) -> list[tuple[str, int]]:
        """grpcio server options enforcing these limits on a gRPC port."""
        return [
            ("grpc.max_metadata_size", self.max_header_bytes),
            ("grpc.absolute_max_metadata_size", self.max_header_bytes),
            ("grpc.max_connection_idle_ms", int(self.idle_connection_s * 1000)),
            ("grpc.max_allowed_incoming_connections", self.max_connections),
            ("grpc.server_handshake_timeout_ms", int(self.header_timeout_s * 1000)),
        ]


FLAGS = {
    "max_header_bytes": "--max_header_bytes",
    "header_timeout_s": "--header_timeout_seconds",
    "body_timeout_s": "--body_timeout_seconds",
    "min_body_rate": "--min_body_rate",
    "max_connections": "--max_connections",
    "idle_connection_s": "--idle_connection_seconds",
    "grpc_max_streams": "--grpc_max_streams",
    "grpc_stream_idle_s": "--grpc_stream_idle_seconds",
    "grpc_message_timeout_s": "--grpc_message_timeout_seconds",
}
DEFAULT_CONNECTIONS = ConnectionLimits()
