"""The one request path (rnnkit_serving.dispatch) driven directly with fake backends: one test per step
(resolve, validate, limits, schedule on the predictor or the batcher, sessions, timeout, metrics)."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rnnkit_serving import FakeBackend, Limits, Predictor, Signature, TensorSpec
from rnnkit_serving.config.batching_config import BatchingParameters
from rnnkit_serving.core.metrics import Metrics
from rnnkit_serving.core.workers import WorkerRing
from rnnkit_serving.dispatch import Call, Dispatch, ModelView, Target
from rnnkit_serving.errors import Code, ServingError
from rnnkit_serving.registry import ModelRegistry
from rnnkit_serving.scheduling.batching import Batcher
from rnnkit_serving.scheduling.inline import InlineRuns, NotInline

X = TensorSpec("x", "float32", (None, None, 1))
Y = TensorSpec("y", "float32", (None, None, 1))
H_IN, H_OUT = TensorSpec("h_in", "float32", (None, 2)), TensorSpec("h_out", "float32", (None, 2))
DEFAULT = Signature("serving_default", (X,), (Y,))
STEP = Signature("step", (X, H_IN), (Y, H_OUT))


@dataclass
class Request:
    """What a front's codec would hand over: input values by name for one signature."""

    inputs: dict
    signature_name: str = "serving_default"
    decoded_by: list = field(default_factory=list)


def scaled(factor):
    return lambda inputs: {"y": inputs["x"] * factor}


def step(inputs):
    """A 'recurrence' checkable by hand: the state adds up every value seen, y = x + state."""
    h = inputs["h_in"] + inputs["x"].sum(axis=1)
    return {"y": inputs["x"] + inputs["h_in"][:, None, :1], "h_out": h}


def model(version, factor, limits=None):
    backends = {"serving_default": FakeBackend(DEFAULT, scaled(factor)), "step": FakeBackend(STEP, step)}
    return Predictor("m", version, backends, limits or Limits())


def decode(request):
    def run(predictor):
        request.decoded_by.append(predictor.version)
        return request

    return run


@pytest.fixture
def dispatch():
    registry = ModelRegistry.of([model(1, 10.0, Limits(2, 3)), model(2, 2.0, Limits(2, 3))])
    yield Dispatch(registry, Metrics(), limits=Limits())  # no server-wide limits: the versions' own apply
    registry.close()


def x(batch=1, steps=2):
    return np.ones((batch, steps, 1), np.float32)


# ------------------------------------------------------------------------------- 1. resolve


def test_unknown_model_is_not_found_before_decoding(dispatch):
    request = Request({"x": x()})
    with pytest.raises(ServingError, match=r"Servable not found for request: Latest\(nope\)") as caught:
        dispatch.predict(Target("nope"), decode(request))
    assert caught.value.code is Code.NOT_FOUND and request.decoded_by == []
    assert dispatch.metric_name("nope") == "(unknown)" and dispatch.metric_name("m") == "m"


def test_bad_version_or_label_is_refused_with_tf_serving_texts(dispatch):
    with pytest.raises(ServingError, match=r"Servable not found for request: Specific\(m, 7\)") as caught:
        dispatch.predict(Target("m", 7), decode(Request({"x": x()})))
    assert caught.value.code is Code.NOT_FOUND
    with pytest.raises(ServingError, match="Unrecognized servable version label: stable") as caught:
        dispatch.predict(Target("m", label="stable"), decode(Request({"x": x()})))
    assert caught.value.code is Code.INVALID_ARGUMENT
    assert dispatch.ready(Target("m", 1)) and not dispatch.ready(Target("m", 7))


def test_the_named_version_runs_and_no_version_means_the_newest(dispatch):
    newest = dispatch.predict(Target("m"), decode(Request({"x": x()})))
    assert (newest.model, newest.version) == ("m", 2) and newest.outputs["y"].tolist() == [[[2.0], [2.0]]]
    first = dispatch.predict(Target("m", 1), decode(Request({"x": x()})))
    assert first.version == 1 and first.outputs["y"].tolist() == [[[10.0], [10.0]]]
    assert first.request.decoded_by == [1]  # the codec saw the version it runs on


# -------------------------------------------------------------------- 2. validate, 3. limits


def test_validation_refuses_before_the_runtime():
    backend = FakeBackend(DEFAULT, scaled(1.0))
    dispatch = Dispatch(ModelRegistry.of([Predictor("m", 1, {"serving_default": backend})]))
    with pytest.raises(
        ServingError, match=r"input 'x' expects rank 3 with shape \[-1, -1, 1\], received shape \[1, 2\]"
    ):
        dispatch.predict(Target("m"), decode(Request({"x": np.ones((1, 2), np.float32)})))
    with pytest.raises(ServingError, match=r"expects inputs \['x'\]; missing \['x'\], unexpected \['z'\]"):
        dispatch.predict(Target("m"), decode(Request({"z": x()})))
    assert backend.calls == 0


def test_limits_refuse_batch_size_and_sequence_length(dispatch):
    with pytest.raises(ServingError, match=r"batch size 3, above the server limit 2 \(--max_batch_size\)") as caught:
        dispatch.predict(Target("m"), decode(Request({"x": x(batch=3)})))
    assert caught.value.code is Code.INVALID_ARGUMENT
    with pytest.raises(ServingError, match=r"4 time steps, above the server limit 3 \(--max_sequence_length\)"):
        dispatch.predict(Target("m"), decode(Request({"x": x(steps=4)})))
    assert dispatch.limits_for(dispatch.lease(Target("m")).predictor) == Limits(2, 3)


def test_a_request_uses_the_limits_its_view_was_built_with():
    """The server ⊓ version limits are worked out once a request, in its model view; validation and the element
    budget read them from the view (a view whose limits say otherwise is obeyed, so nothing recomputes them)."""
    server = Dispatch(ModelRegistry.of([]), limits=Limits(8, 100, 1000))

    class Version:
        limits = Limits(4, None, 5000)

    assert server.limits_for(Version()) == Limits(4, 100, 1000)
    sig = Signature(
        "serving_default", (TensorSpec("x", "float32", (None, None, 1)),), (TensorSpec("y", "float32", (None, 1)),)
    )
    predictor = Predictor("m", 1, {"serving_default": FakeBackend(sig, lambda i: {"y": i["x"][:, 0]})})
    view = ModelView(predictor, Limits(16, 200, 2000))  # looser than the server's on purpose: read, not recomputed
    assert server.limits_for(view) == Limits(16, 200, 2000) and server.element_budget(view).limit == 2000
    assert server.validate(view, {"x": np.ones((12, 1, 1), np.float32)}, "serving_default")["x"].shape == (12, 1, 1)
    with pytest.raises(ServingError, match=r"batch size 17, above the server limit 16 \(--max_batch_size\)"):
        server.validate(view, {"x": np.ones((17, 1, 1), np.float32)}, "serving_default")


# ---------------------------------------------------------------------------- 4. schedule


def test_with_a_batcher_predictions_go_through_it():
    metrics = Metrics()
    registry = ModelRegistry.of([model(1, 3.0)])
    batcher = Batcher(BatchingParameters(max_batch_size=4, batch_timeout_micros=0, num_batch_threads=1), metrics)
    dispatch = Dispatch(registry, metrics, batcher)
    try:
        answer = dispatch.predict(Target("m"), decode(Request({"x": x(batch=2)})))
        assert answer.outputs["y"].tolist() == [[[3.0], [3.0]], [[3.0], [3.0]]]
        with pytest.raises(ServingError, match="Task size 5 is larger than maximum input batch size 4"):
            dispatch.predict(Target("m"), decode(Request({"x": x(batch=5)})))  # the batcher's own refusal
        sizes = next(
            f for f in text_string_to_metric_families(metrics.render().decode()) if f.name.endswith("batch_size")
        )
        assert [s.value for s in sizes.samples if s.name.endswith("_count")] == [1.0]  # one batch ran
        assert dispatch.worker_threads(4) == 4 + 4 * 1  # request threads that wait for batches are added
    finally:
        batcher.close()
        registry.close()
    assert Dispatch(ModelRegistry()).worker_threads(4) == 4


def test_a_sequence_stays_on_the_version_it_started_on(dispatch):
    start = dispatch.stream(Target("m", 1), "s", True, False, decode(Request({"x": x(steps=2)})))
    assert start.version == 1 and start.outputs["y"].tolist() == [[[1.0], [1.0]]]  # zero state
    later = dispatch.stream(Target("m"), "s", False, False, decode(Request({"x": x(steps=1)})))
    assert later.version == 1 and later.outputs["y"].tolist() == [[[3.0]]]  # state 2 carried over
    dispatch.registry.model("m").predictors.pop(1)  # version 1 no longer served
    with pytest.raises(ServingError, match="sequence 's' started on version 1 of model 'm', which is no longer"):
        dispatch.stream(Target("m"), "s", False, False, decode(Request({"x": x(steps=1)})))
    assert dispatch.sessions.live() == {}


def test_stream_chunks_get_the_servers_limits_as_predictions_do():
    """A version loaded without limits of its own, served by a dispatch with tighter ones: a chunk of
    a sequence is refused with the same message as a prediction (the server's limits, not the version's)."""
    registry = ModelRegistry.of([model(1, 1.0)])  # Predictor(..., limits=Limits()): no bound of its own
    dispatch = Dispatch(registry, Metrics(), limits=Limits(max_batch_size=2, max_sequence_length=3))
    try:
        for inputs, text in (
            ({"x": x(steps=4)}, "input 'x' has 4 time steps, above the server limit 3 (--max_sequence_length)"),
            ({"x": x(batch=3)}, "input 'x' has batch size 3, above the server limit 2 (--max_batch_size)"),
        ):
            refusals = []
            for run in (
                lambda inputs=inputs: dispatch.predict(Target("m"), decode(Request(inputs))),
                lambda inputs=inputs: dispatch.stream(Target("m"), "s", True, False, decode(Request(inputs))),
                lambda inputs=inputs: dispatch.infer(
                    Target("m"), Sequence("s", True, False), lambda *_: Request(inputs)
                ),
            ):
                with pytest.raises(ServingError) as caught:
                    run()
                refusals.append((caught.value.code, caught.value.message))
            assert refusals == [(Code.INVALID_ARGUMENT, text)] * 3
        ok = dispatch.stream(Target("m"), "s", True, False, decode(Request({"x": x(batch=2, steps=3)})))
        assert ok.outputs["y"].shape == (2, 3, 1)
    finally:
        registry.close()


@dataclass(frozen=True)
class Sequence:
    id: str
    start: bool
    end: bool


def test_fronts_decode_against_a_read_only_view_and_kserve_infer_picks_predict_or_stream(dispatch):
    seen = []

    def decode_kserve(view, partial):
        seen.append((type(view), view.name, view.version, sorted(view.signatures), partial, view.limits))
        return Request({"x": x(steps=1)})

    whole = dispatch.infer(Target("m", 1), None, decode_kserve)  # no sequence: one prediction
    assert whole.outputs["y"].tolist() == [[[10.0]]] and dispatch.sessions.live() == {}
    chunk = dispatch.infer(Target("m", 1), Sequence("s", True, False), decode_kserve)  # a chunk: the session
    assert chunk.outputs["y"].tolist() == [[[1.0]]] and dispatch.sessions.live() == {"m": 1}
    assert seen == [(ModelView, "m", 1, ["serving_default", "step"], False, Limits(2, 3))] * 2  # not encoder-decoder
    view = dispatch.inspect(Target("m"), lambda view: view)
    assert not isinstance(view, Predictor) and view.signature().name == "serving_default"
    with pytest.raises(AttributeError):
        view.limits = Limits()
    with pytest.raises(ServingError, match='Serving signature key "nope" not found.'):
        view.signature("nope")


# ----------------------------------------------------------------------------- 5. timeout


def test_timeout_answers_deadline_exceeded_and_fast_jobs_return():
    dispatch = Dispatch(ModelRegistry())
    release = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(ServingError, match=r"Request timed out after 50 ms \(--some_timeout\)") as caught:
            asyncio.run(dispatch.in_worker(pool, lambda: release.wait(30), 50, "--some_timeout"))
        assert caught.value.code is Code.DEADLINE_EXCEEDED
        release.set()
        assert asyncio.run(dispatch.in_worker(pool, lambda: 42, 0, "--some_timeout")) == 42  # 0: no timeout


def test_a_timed_out_job_keeps_the_front_busy_until_it_ends():
    now = [100.0]
    dispatch = Dispatch(ModelRegistry())
    # 40 ms: the timed-out job (>= 50 ms) is slow, while a loaded machine (CI) cannot make the others slow
    inline = InlineRuns(40.0, clock=lambda: now[0])
    inline.observed("m", 100, 1.0)
    release = threading.Event()

    async def time_out_then_end() -> None:
        with pytest.raises(ServingError, match=r"Request timed out after 50 ms"):
            # a job that may not run inline (larger than seen) times out in its thread: its time is unknown
            await dispatch.in_worker(pool, lambda: release.wait(30), 50, "--t", inline, ("m", 200))
        # its request gave up, but the job still runs: the front is busy, nothing may run on the loop
        assert inline.busy == 1 and not inline.may_inline("m", 100)
        release.set()
        for _ in range(500):
            if inline.busy == 0:
                break
            await asyncio.sleep(0.01)
        assert inline.busy == 0

    def ran_on() -> threading.Thread:
        return asyncio.run(dispatch.in_worker(pool, threading.current_thread, 0, "--t", inline, ("m", 100)))

    with ThreadPoolExecutor(1) as pool:
        asyncio.run(time_out_then_end())
        # a threaded job teaches the policy on the loop (a slow job in a thread held no one up: no pause); the
        # next one of that size runs on the loop's thread
        assert ran_on() is not threading.current_thread() and inline.may_inline("m", 100)
        assert ran_on() is threading.current_thread() and inline.inline == 1


def test_only_jobs_that_succeeded_teach_the_inline_policy():
    """A body refused at once (a megabyte of spaces, say) says nothing of what a served body of that size costs."""
    dispatch = Dispatch(ModelRegistry())
    inline = InlineRuns(200.0)  # a loaded machine (CI) cannot make a no-op job slow

    def refused() -> None:
        raise ServingError(Code.INVALID_ARGUMENT, "no")

    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(ServingError, match="no"):
            asyncio.run(dispatch.in_worker(pool, refused, 0, "--t", inline, ("m", 1 << 20)))
        assert inline.busy == 0 and not inline.may_inline("m", 10)
        asyncio.run(dispatch.in_worker(pool, lambda: None, 0, "--t", inline, ("m", 1000)))
        assert inline.may_inline("m", 1000) and not inline.may_inline("m", 1001)
        with pytest.raises(ServingError, match="no"):  # inline now, and failing: still nothing learned
            asyncio.run(dispatch.in_worker(pool, refused, 0, "--t", inline, ("m", 1000)))
        inline.observed("m", 1 << 20, 0.1, succeeded=False)
        assert inline.inline == 1 and not inline.may_inline("m", 1001)


def test_slow_runs_on_the_loop_in_a_row_pause_the_learning_longer_each_time():
    now = [0.0]
    inline = InlineRuns(5.0, clock=lambda: now[0])

    def paused_for() -> float:
        """How long after now a fast job first teaches the policy again (to 0.25 s)."""
        start = now[0]
        while True:
            inline.observed("m", 10, 1.0)
            if inline.may_inline("m", 10):
                waited = now[0] - start
                now[0] = start
                inline._fast_up_to.clear()
                return waited
            now[0] += 0.25

    inline.observed("m", 10, 9.0)  # over the budget in a thread: forgotten, nothing paused
    assert paused_for() == 0.0
    inline.observed("m", 10, 9.0, on_loop=True)  # over the budget on the loop
    assert paused_for() == 1.0
    inline.observed("m", 10, 9.0, on_loop=True)
    assert paused_for() == 2.0
    for _ in range(10):
        inline.observed("m", 10, 9.0, on_loop=True)
    assert paused_for() == 60.0  # at most
    now[0] += 601.0  # slow runs on the loop this far apart start over
    inline.observed("m", 10, 9.0, on_loop=True)
    assert paused_for() == 1.0


def test_a_sequence_chunk_never_runs_on_the_loop():
    """Its session's lock may be held by another front's thread: Dispatch.stream refuses the loop before it
    changes anything, and the job runs in a worker thread."""
    predictor = Predictor("m", 1, {"serving_default": FakeBackend(DEFAULT, lambda inputs: inputs)}, Limits())
    dispatch = Dispatch(ModelRegistry.of([predictor]))
    inline = InlineRuns(5.0)
    inline.observed("m", 10, 1.0)
    decoded = []

    def chunk() -> threading.Thread:
        dispatch.stream(Target("m"), "s1", True, False, lambda view: decoded.append(view))
        return threading.current_thread()

    with pytest.raises(NotInline, match="sequence 's1' of model 'm'"):
        inline.run("m", 10, chunk)
    assert decoded == [] and dispatch.live_sessions() == {} and inline.inline == 0
    assert inline.may_inline("m", 10)  # a job refused on the loop teaches nothing

    def job() -> threading.Thread:
        try:
            return chunk()
        except (ServingError, AttributeError):  # no real chunk here: what matters is where it ran
            return threading.current_thread()

    with ThreadPoolExecutor(1) as pool:
        thread = asyncio.run(dispatch.in_worker(pool, job, 0, "--t", inline, ("m", 10)))
    assert thread is not threading.current_thread() and len(decoded) == 1 and inline.inline == 0


def test_with_batching_a_job_on_the_loop_never_waits_for_a_batch():
    """The only batch slot is held by another request; a job run inline still answers at once, on the loop's
    thread, while the same job from a worker thread would queue behind the slot."""
    release, entered = threading.Event(), threading.Event()

    def model(inputs):
        if inputs["x"].ravel()[0] == 1.0:
            entered.set()
            release.wait(30)
        return {"y": inputs["x"] * 2}

    batcher = Batcher(BatchingParameters(max_batch_size=4, batch_timeout_micros=0, num_batch_threads=1), Metrics())
    predictor = Predictor("m", 1, {"serving_default": FakeBackend(DEFAULT, model)}, Limits())
    dispatch = Dispatch(ModelRegistry.of([predictor]), batcher=batcher)
    inline = dispatch.inline_runs(5.0)
    try:
        with ThreadPoolExecutor(2) as pool:
            held = pool.submit(dispatch.predict, Target("m"), lambda view: Request({"x": x()}))
            assert entered.wait(10)
            inline.observed("m", 10, 1.0)

            def job():
                answer = dispatch.predict(Target("m"), lambda view: Request({"x": x() * 3}))
                return answer.outputs["y"].ravel().tolist(), threading.current_thread()

            values, thread = asyncio.run(dispatch.in_worker(pool, job, 5000, "--t", inline, ("m", 10)))
            assert values == [6.0, 6.0] and thread is threading.current_thread() and inline.inline == 1
            release.set()
            assert held.result(10).outputs["y"].ravel().tolist() == [2.0, 2.0]
    finally:
        release.set()
        batcher.close()


def test_the_inline_policy_learns_per_model_and_size_and_yields_to_requests_in_flight():
    inline = InlineRuns(5.0)
    assert not inline.may_inline("m", 10)  # nothing seen
    inline.observed("m", 1000, 4.9)
    assert inline.may_inline("m", 1000) and inline.may_inline("m", 10) and not inline.may_inline("m", 1001)
    assert not inline.may_inline("other", 10)  # per model
    inline.observed("m", 2000, 6.0)  # over the budget: everything learned of m is forgotten
    assert not inline.may_inline("m", 10)
    inline.observed("m", 1000, 1.0)
    inline.busy = 1  # another request is in a worker thread
    assert not inline.may_inline("m", 10)
    inline.busy = 0
    assert inline.run("m", 10, lambda: 7) == 7 and inline.inline == 1
    with pytest.raises(ValueError, match=r"the inline budget must be > 0 ms, got 0"):
        InlineRuns(0)


def test_nothing_may_run_inline_with_several_processes_or_no_budget():
    assert isinstance(Dispatch(ModelRegistry()).inline_runs(5.0), InlineRuns)
    assert Dispatch(ModelRegistry()).inline_runs(0) is None
    ring = WorkerRing(index=0, count=2, directory="/nonexistent")
    assert Dispatch(ModelRegistry(), workers=ring).inline_runs(5.0) is None


# ----------------------------------------------------------------------------- 6. metrics


def test_metrics_count_every_model_request_and_time_the_successful_ones():
    metrics = Metrics()
    dispatch = Dispatch(ModelRegistry(), metrics)
    dispatch.record(Call("REST", "m", "predict"), Code.OK)
    dispatch.record(Call("GRPC", "(unknown)", "Predict"), Code.NOT_FOUND)
    dispatch.record(Call("REST"), Code.OK)  # not a model request: not recorded
    text = metrics.render().decode()
    assert ':tensorflow:serving:request_count{model_name="m",status="OK"} 1' in text
    assert ':tensorflow:serving:request_count{model_name="(unknown)",status="NOT_FOUND"} 1' in text
    latency = next(f for f in text_string_to_metric_families(text) if f.name == ":tensorflow:serving:request_latency")
    counts = {
        (s.labels["model_name"], s.labels["entrypoint"]): s.value for s in latency.samples if s.name.endswith("_count")
    }
    assert counts == {("m", "REST"): 1.0}
