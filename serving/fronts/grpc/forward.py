"""Worker-to-worker KServe gRPC hops (``--server_workers N``, :mod:`rnnkit_serving.core.workers`).

A ModelInfer (or one ModelStreamInfer request) that is a chunk of a sequence another worker owns is
sent unchanged to that worker's private Unix socket as a unary ModelInfer, with the sequence header
when the client sent one; the owner's answer comes back as it was, and its error as a
:class:`~rnnkit_serving.errors.ServingError` of the same code and text.
"""

from __future__ import annotations

import threading
from typing import Any

from rnnkit_serving.codecs.kserve import grpc as kserve_grpc_codec
from rnnkit_serving.codecs.kserve import sequence as kserve_sequence
from rnnkit_serving.core.workers import WorkerRing
from rnnkit_serving.errors import Code, ServingError

_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    # a restarted owner is reachable again within a second, not after grpc's default backoff (up to 120 s)
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class GrpcRelay:
    def __init__(self, ring: WorkerRing, timeout_s: float | None) -> None:
        self.ring = ring
        self.timeout_s = timeout_s
        self._stubs: dict[int, Any] = {}
        self._channels: list[Any] = []
        self._lock = threading.Lock()

    def _stub(self, worker: int) -> Any:
        with self._lock:
            stub = self._stubs.get(worker)
            if stub is None:
                import grpc

                channel = grpc.insecure_channel(f"unix:{self.ring.grpc_socket(worker)}", options=_CHANNEL_OPTIONS)
                self._channels.append(channel)
                stub = self._stubs[worker] = kserve_grpc_codec.protos().pb2_grpc.GRPCInferenceServiceStub(channel)
            return stub

    def owner_elsewhere(self, model_name: str, sequence_id: int | str) -> int | None:
        """The worker holding this sequence when it is not this one, else None."""
        owner = self.ring.owner(model_name, sequence_id)
        return None if owner == self.ring.index else owner

    def model_infer(self, worker: int, request: Any, sequence_header: str | None, what: str) -> Any:
        import grpc

        metadata = [(kserve_sequence.SEQUENCE_HEADER, sequence_header)] if sequence_header is not None else None
        try:
            return self._stub(worker).ModelInfer(request, metadata=metadata, timeout=self.timeout_s)
        except grpc.RpcError as error:
            code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
            details = (error.details() if hasattr(error, "details") else None) or str(error)
            if code == grpc.StatusCode.UNAVAILABLE:
                raise ServingError(
                    Code.UNAVAILABLE,
                    f"{what} is held by server worker {worker}, which did not answer ({details}); "
                    "it may be restarting: retry later",
                ) from None
            raise ServingError(Code[code.name], details) from None

    def close(self) -> None:
        with self._lock:
            for channel in self._channels:
                channel.close()
            self._channels.clear()
            self._stubs.clear()
