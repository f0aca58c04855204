"""Eager dispatch: a free batch thread takes what is queued at once (batch_timeout_micros is never
waited for); requests gather only while every batch thread is busy, and go together when one frees;
answers stay exact."""

import os
import threading
import time

import numpy as np
import pytest
import serving_repo

from rnnkit_serving import FakeBackend, Predictor, Signature, TensorSpec
from rnnkit_serving.config.batching_config import BatchingParameters
from rnnkit_serving.scheduling.batching import Batcher

FOREVER_US = 600_000_000  # 10 minutes: a test that waited for it would time out instead of passing
SIG = Signature("serving_default", (TensorSpec("a", "float32", (None,)),), (TensorSpec("b", "float32", (None,)),))


class Held:
    """A fake runtime whose first call blocks until released; records each call's rows."""

    def __init__(self):
        self.rows = []
        self.threads = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, inputs):
        with self.lock:
            self.rows.append(inputs["a"].tolist())
            self.threads.append(threading.current_thread().name)
            first = len(self.rows) == 1
        if first:
            self.started.set()
            self.release.wait(30)
        return {"b": inputs["a"] * 10 + 1}


def fake(held):
    return Predictor("held", 1, {"serving_default": FakeBackend(SIG, held)})


def one(value):
    return {"a": np.array([value], np.float32)}


def settle():
    """Let the batch threads look at the queue (only ever makes a wrong dispatch more likely)."""
    time.sleep(0.05)


@pytest.fixture(scope="module")
def repo():
    return serving_repo.shared_repository()


def test_a_request_that_finds_the_model_idle_does_not_wait_for_the_timeout(repo):
    with Predictor.load(os.path.join(repo, "lstm")) as predictor:
        batcher = Batcher(BatchingParameters(32, FOREVER_US, 2, 100))
        try:
            rng = np.random.default_rng(0)
            for _ in range(5):  # one at a time: each runs alone, at once, and exactly
                x = rng.normal(size=(1, int(rng.integers(2, 9)), 3)).astype(np.float32)
                got = batcher.submit(predictor, predictor.validate({"x": x})).result(timeout=60)
                want = predictor.predict({"x": x})
                for name in want:
                    np.testing.assert_array_equal(got[name], want[name])
        finally:
            batcher.close()


def test_requests_gather_while_every_batch_thread_is_busy_and_go_together():
    held = Held()
    predictor = fake(held)
    batcher = Batcher(BatchingParameters(8, FOREVER_US, 1, 100))  # one batch thread
    try:
        first = batcher.submit(predictor, one(1.0))
        assert held.started.wait(30)
        later = [batcher.submit(predictor, one(v)) for v in (2.0, 3.0, 4.0)]
        settle()
        assert held.rows == [[1.0]] and not any(f.done() for f in later)  # the only thread is busy
        held.release.set()
        assert [f.result(30)["b"].tolist() for f in later] == [[21.0], [31.0], [41.0]]
        assert first.result(30)["b"].tolist() == [11.0]
        assert held.rows == [[1.0], [2.0, 3.0, 4.0]]  # what gathered went as one batch, without the timeout
    finally:
        held.release.set()
        batcher.close()


def test_a_free_thread_takes_a_request_at_once_while_another_batch_runs():
    held = Held()
    predictor = fake(held)
    batcher = Batcher(BatchingParameters(8, FOREVER_US, 2, 100))
    try:
        first = batcher.submit(predictor, one(1.0))
        assert held.started.wait(30)
        second = batcher.submit(predictor, one(7.0))
        assert second.result(30)["b"].tolist() == [71.0]  # ran on the free thread, no timeout waited
        assert not first.done() and held.rows == [[1.0], [7.0]]
    finally:
        held.release.set()
        batcher.close()
    assert first.result(30)["b"].tolist() == [11.0]


def test_a_blocking_request_with_a_free_slot_runs_on_its_own_thread_else_queues():
    held = Held()
    held.release.set()  # the first call does not block here
    predictor = fake(held)
    batcher = Batcher(BatchingParameters(8, FOREVER_US, 1, 100))
    try:
        assert batcher.run(predictor, one(3.0))["b"].tolist() == [31.0]
        assert held.threads == [threading.current_thread().name]  # no hand-off to a batch thread
        held.release.clear()
        held.rows.clear()
        held.started.clear()
        blocked = batcher.submit(predictor, one(1.0))  # occupies the only slot (first call blocks again)
        assert held.started.wait(30)
        answers = []
        caller = threading.Thread(target=lambda: answers.append(batcher.run(predictor, one(4.0))))
        caller.start()
        deadline = time.monotonic() + 30
        while not batcher._groups and time.monotonic() < deadline:  # until the caller has queued
            time.sleep(0.005)
        settle()
        assert not answers and held.rows == [[1.0]]  # no free slot: it queued
        held.release.set()
        caller.join(30)
        assert answers[0]["b"].tolist() == [41.0] and blocked.result(30)["b"].tolist() == [11.0]
        assert held.threads[-1].startswith("rnnkit-batch")
    finally:
        held.release.set()
        batcher.close()


def test_a_request_that_must_not_wait_runs_at_once_while_every_slot_is_busy():
    """wait=False (a request the REST front runs on its event loop): no free slot, yet it runs at once on the
    calling thread as a batch of one, and what queued behind the busy slot is still batched afterwards."""
    held = Held()
    predictor = fake(held)
    batcher = Batcher(BatchingParameters(8, FOREVER_US, 1, 100))
    try:
        blocked = batcher.submit(predictor, one(1.0))  # the only slot, held
        assert held.started.wait(30)
        queued = batcher.submit(predictor, one(2.0))
        settle()
        assert batcher.run(predictor, one(5.0), wait=False)["b"].tolist() == [51.0]
        assert held.threads[-1] == threading.current_thread().name and held.rows == [[1.0], [5.0]]
        held.release.set()
        assert blocked.result(30)["b"].tolist() == [11.0] and queued.result(30)["b"].tolist() == [21.0]
    finally:
        held.release.set()
        batcher.close()


def test_single_thread_batcher_runs_what_gathered_after_each_batch(repo):
    """One batch thread, many concurrent callers of random lengths: every answer is its own
    unbatched answer, and later batches hold several requests."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(5)
    with Predictor.load(os.path.join(repo, "lstm")) as predictor:
        requests = [
            {"x": rng.normal(size=(int(rng.integers(1, 3)), int(rng.integers(1, 16)), 3)).astype(np.float32)}
            for _ in range(40)
        ]
        want = [predictor.predict(r) for r in requests]
        sizes = []
        run = predictor.run

        def recorded(arrays, signature_name="serving_default"):
            sizes.append(next(iter(arrays.values())).shape[0])
            return run(arrays, signature_name)

        predictor.run = recorded
        batcher = Batcher(BatchingParameters(16, FOREVER_US, 1, 100))
        try:
            with ThreadPoolExecutor(12) as pool:
                got = list(pool.map(lambda r: batcher.predict(predictor, r), requests))
        finally:
            batcher.close()
    for g, w in zip(got, want):
        for name in w:
            assert g[name].shape == w[name].shape
            np.testing.assert_allclose(g[name], w[name], atol=1e-5, rtol=0)
    assert sum(sizes) >= sum(r["x"].shape[0] for r in requests) and max(sizes) > 2
