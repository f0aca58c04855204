"""Which worker process owns a streaming sequence, and where each worker listens privately
(``--server_workers N``, :mod:`rnnkit_serving.server.workers`).

With N > 1 workers, every worker binds the public ports with ``SO_REUSEPORT`` and the kernel spreads
*connections* over them; a sequence's state (its RNN carry) lives in one worker's session store.
Each sequence therefore has one owner, chosen by a hash of the model name and the sequence id that
every worker computes alike; a worker that receives a chunk of a sequence it does not own relays
it unchanged to the owner over the owner's private Unix socket, where it is served like any request.

Pure Python, no dependency: the CLI and every layer above may read it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

MAX_WORKERS = 256  # --server_workers beyond this is a typo, not a host


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the host's count): ``--server_workers auto``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def parse_workers(text: str) -> int:
    """``--server_workers``: a positive integer, or ``auto`` (the usable CPUs)."""
    value = text.strip().lower()
    if value == "auto":
        return usable_cpus()
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"expected a positive integer or 'auto', received {text!r}") from None
    if not 1 <= number <= MAX_WORKERS:
        raise ValueError(f"expected a positive integer up to {MAX_WORKERS} or 'auto', received {text!r}")
    return number


def sequence_owner(model_name: str, sequence_id: int | str, count: int) -> int:
    """The worker (0 .. count-1) holding the state of `sequence_id` of `model_name`.

    A stable hash (not Python's per-process salted ``hash``): every worker agrees. An integer id and
    its decimal string name the same owner, so the header and the parameter forms always meet."""
    digest = hashlib.blake2b(f"{model_name}\0{sequence_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


@dataclass(frozen=True)
class WorkerRing:
    """This worker's place among `count` workers of one server; `directory` holds their private sockets."""

    index: int
    count: int
    directory: str

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"worker index {self.index} is not in 0..{self.count - 1}")

    def owner(self, model_name: str, sequence_id: int | str) -> int:
        return sequence_owner(model_name, sequence_id, self.count)

    def rest_socket(self, index: int) -> str:
        """The Unix socket path of worker `index`'s private REST listener."""
        return os.path.join(self.directory, f"w{index}.rest.sock")

    def grpc_socket(self, index: int) -> str:
        """The Unix socket path of worker `index`'s private KServe gRPC listener."""
        return os.path.join(self.directory, f"w{index}.grpc.sock")

    def peers(self) -> list[int]:
        return [index for index in range(self.count) if index != self.index]
