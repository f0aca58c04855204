"""One worker of ``rnnkit serve --server_workers N``: ``python -m rnnkit_serving.server.worker_main DIR INDEX``.

The supervisor (:mod:`rnnkit_serving.server.workers`) starts it with its private directory (which holds its flags)
and the worker's index; it serves those flags as that worker. Not a command for users.
"""

from __future__ import annotations

import sys

from rnnkit_serving.server.cli import serve
from rnnkit_serving.server.workers import worker_context


def main(directory: str, index: str) -> int:
    args, ring, ready = worker_context(directory, index)
    return serve(args, ring, ready)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
