"""When a REST ``:predict`` runs on the event loop instead of a worker thread.

At low load the hop to a worker thread (~0.15 ms) costs more than it buys, so a small
``:predict`` of a model whose recent requests were fast runs inline when no other request is
being handled; under load requests spread over the worker threads (and cores). Batched requests
wait for their batch and so never run inline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from serving.rest_http import RestOptions

AUTO_INLINE_MAX_BYTES = 16 << 10  # larger bodies always go to a worker thread
RECENT_WEIGHT = 0.2  # weight of the newest :predict duration in a model's running estimate

T = TypeVar("T")


class InlinePolicy:
    def __init__(self, options: RestOptions, batching: bool) -> None:
        self.options = options
        self.batching = batching
        self.recent_predict_us: dict[str, float] = {}  # model name -> running estimate of :predict time
        self.active = 0  # requests being handled now (changed on the event loop only)

    def runs_inline(self, model: str, body_bytes: int) -> bool:
        """Whether a :predict for `model` runs on the event loop instead of a worker thread."""
        if body_bytes <= self.options.inline_body_bytes:
            return True
        if self.batching or self.options.inline_predict_us <= 0 or body_bytes > AUTO_INLINE_MAX_BYTES:
            return False  # a batched request waits for its batch: it must never block the loop
        if self.active > 1:
            return False  # under load, requests spread over the worker threads (and cores)
        return self.recent_predict_us.get(model, float("inf")) < self.options.inline_predict_us

    def measured(self, model: str, job: Callable[[], T]) -> T:
        """Run `job` (one :predict of `model`) and fold its duration into the model's estimate."""
        # CPU time of this thread (decode, runtime with one intra-op thread, encode): unlike wall time it
        # leaves out waiting for the GIL, so a request measured in a worker thread is not overrated.
        started = time.thread_time()
        try:
            return job()
        finally:
            took = (time.thread_time() - started) * 1e6
            previous = self.recent_predict_us.get(model)
            estimate = took if previous is None else (1 - RECENT_WEIGHT) * previous + RECENT_WEIGHT * took
            self.recent_predict_us[model] = estimate
