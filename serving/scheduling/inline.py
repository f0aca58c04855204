"""Which REST jobs run on the event loop itself instead of a worker thread (``--rest_inline_ms``).

A REST request's decode, runtime call and encode run in a worker thread, so that a slow model can
neither stall the other connections nor escape ``--rest_api_timeout_in_ms``. The hand-off has a price
of its own: the worker thread must be woken, and then the event loop, two cross-thread wake-ups that
measured ~0.2-0.3 ms per request on a 2-core VM (``bench/transport_floor.py``: the same minimal server
with and without the hand-off), a quarter of everything rnnkit added around a 100x64 LSTM request.

When nothing else is in flight on the loop, the hand-off protects no one; it only costs. So a job
runs inline when all of these hold:

- no other request of this front is running or waiting in a worker (:attr:`InlineRuns.busy` is 0):
  nobody is kept waiting but a request that arrives during the job, for at most the job's time;
- the same model has recently answered a request at least as large (body bytes) within the budget
  (``--rest_inline_ms``), timed where it ran: sizes never seen, or that ran slow, go to a thread.
  Only jobs that succeeded teach it (a refused body, however large, says nothing of what a served one
  costs). One job over the budget, inline or not, or one that timed out, forgets what the model had
  shown; one that held the *loop* over the budget also pauses the learning (``COOL_DOWN_S``: 1 s,
  doubling with each such job in a row up to 60 s): a client alternating cheap and costly requests of
  the same size to one model gets at most one costly job on the loop per pause. Slow jobs in threads
  (a burst of load) pause nothing: the next fast threaded one teaches again;
- the job is not a chunk of a sequence: a chunk takes its session's lock, which a worker thread of
  another front (gRPC) may hold, so :meth:`Dispatch.stream <rnnkit_serving.dispatch.Dispatch.stream>`
  raises :class:`NotInline` before it takes anything and the job runs in a thread instead;
- the server runs one process (the fronts ask :meth:`Dispatch.inline_runs
  <rnnkit_serving.dispatch.Dispatch.inline_runs>`): a sequence chunk may be relayed to another
  process, and waiting for it may not happen on the loop.

With batching on, a request run inline never waits for a batch (:func:`running_inline`; the batcher
runs it at once as a batch of one, which it does anyway for a request that finds nothing queued).

:attr:`InlineRuns.busy` counts a job handed to a thread until the job has *ended*, not until its request
stopped waiting for it: a job that timed out (or whose request was cancelled) may still run, and nothing
runs on the loop beside it.

A job run inline cannot be cut short by the request timeout; it is by construction one whose like
recently took no more than the budget (5 ms by default, against a 30 s timeout). The object belongs
to one event loop and is used from that loop's thread only, so it needs no lock.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
_ON_LOOP: contextvars.ContextVar[bool] = contextvars.ContextVar("rnnkit_on_loop", default=False)


def running_inline() -> bool:
    """Whether the current job runs on the event loop (:meth:`InlineRuns.run`): it must not wait for a batch."""
    return _ON_LOOP.get()


class NotInline(Exception):
    """Raised by a job that finds it runs on the loop but must not (a sequence chunk): it has changed
    nothing yet, and :meth:`Dispatch.in_worker <rnnkit_serving.dispatch.Dispatch.in_worker>` runs it again
    in a worker thread."""


COOL_DOWN_S = (1.0, 60.0)  # after a slow job nothing is learned for the first, doubling up to the second
FORGIVE_S = 600.0  # a slow job this long after the previous one starts the doubling over
_MOST_DOUBLINGS = 16


class InlineRuns:
    def __init__(self, budget_ms: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not budget_ms > 0:
            raise ValueError(f"the inline budget must be > 0 ms, got {budget_ms!r}")
        self.budget_ms = budget_ms
        self.busy = 0  # jobs of this front in a worker thread, or queued for one, until they end
        self.inline = 0  # jobs run inline so far (the tests and the metrics read it)
        self._clock = clock
        self._fast_up_to: dict[str, int] = {}  # model -> the largest body that ran within the budget
        self._paused_until: dict[str, float] = {}  # model -> nothing is learned before this (after a slow job)
        self._slow_runs: dict[str, tuple[int, float]] = {}  # model -> (slow jobs in a row, when the last was)

    def may_inline(self, key: str, size: int) -> bool:
        """Whether a job of model `key` on a `size`-byte body may run on the loop now."""
        return self.busy == 0 and size <= self._fast_up_to.get(key, -1)

    def observed(self, key: str, size: int, elapsed_ms: float, succeeded: bool = True, on_loop: bool = False) -> None:
        """Learn from one job of model `key` on a `size`-byte body that ran `elapsed_ms` where it ran (`on_loop`:
        inline) and `succeeded` or raised."""
        if elapsed_ms > self.budget_ms:
            self.forget(key)
            if on_loop:  # it held the loop: nothing is learned of `key` for a while
                self._pause(key)
        elif succeeded and size > self._fast_up_to.get(key, -1) and self._clock() >= self._paused_until.get(key, 0):
            self._fast_up_to[key] = size

    def forget(self, key: str) -> None:
        """A job of `key` ran slow, or its time is unknown (it timed out in its thread): run the next ones in
        threads until a threaded one is fast again (a slow job in a thread, under load say, held no one up)."""
        self._fast_up_to.pop(key, None)

    def _pause(self, key: str) -> None:
        now = self._clock()
        count, last = self._slow_runs.get(key, (0, -FORGIVE_S))
        count = 1 if now - last > FORGIVE_S else min(count + 1, _MOST_DOUBLINGS)
        self._slow_runs[key] = (count, now)
        self._paused_until[key] = now + min(COOL_DOWN_S[0] * 2 ** (count - 1), COOL_DOWN_S[1])

    def run(self, key: str, size: int, job: Callable[[], T]) -> T:
        """Run `job` here, now (the caller checked :meth:`may_inline`), and learn from its time. A job that
        raises :class:`NotInline` teaches nothing."""
        self.inline += 1
        token = _ON_LOOP.set(True)
        started = time.perf_counter()
        succeeded, learn = False, True
        try:
            result = job()
            succeeded = True
            return result
        except NotInline:
            self.inline -= 1
            learn = False
            raise
        finally:
            if learn:
                self.observed(key, size, (time.perf_counter() - started) * 1e3, succeeded, on_loop=True)
            _ON_LOOP.reset(token)
