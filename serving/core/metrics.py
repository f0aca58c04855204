"""Prometheus metrics under TF Serving's names, so dashboards built for TF Serving work unchanged.

``:tensorflow:serving:request_count{model_name,status}`` (counter) and
``:tensorflow:serving:request_latency{model_name,API,entrypoint}`` (histogram in microseconds,
buckets 10 µs x 1.8^i, i < 33, successful requests only), as ``util/prometheus_exporter.cc``
prints them. The histogram is rendered by prometheus-client; the counter is printed in TF
Serving's form because prometheus-client would rename it ``..._total``.

Serving II adds ``:tensorflow:serving:batching_session:queuing_latency{thread_pool_name}``
(TF Serving's name: microseconds a request waited for its batch), and rnnkit's own
``:rnnkit:serving:batch_size{model_name,signature_name}`` (rows per runtime call),
``:rnnkit:serving:live_sessions{model_name}``, ``:rnnkit:serving:evicted_sessions_total{model_name}``
(idle sessions dropped) and ``:rnnkit:serving:loaded_versions{model_name}``.

:meth:`Metrics.traffic` summarises the same counts per model for the landing page, with latency
percentiles over each model's last ``RECENT_WINDOW`` successful requests (a bounded ring per model
label; labels are bounded by the dispatch: served names and ``(unknown)``).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from rnnkit_serving.errors import Code

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
QUEUING_LATENCY = ":tensorflow:serving:batching_session:queuing_latency"
BATCH_SIZE = ":rnnkit:serving:batch_size"
LIVE_SESSIONS = ":rnnkit:serving:live_sessions"
EVICTED_SESSIONS = ":rnnkit:serving:evicted_sessions"
LOADED_VERSIONS = ":rnnkit:serving:loaded_versions"
LATENCY_BUCKETS_US: tuple[float, ...] = tuple(10.0 * 1.8**i for i in range(33))
BATCH_BUCKETS: tuple[float, ...] = tuple(float(2**i) for i in range(11))
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RECENT_WINDOW = 1000  # successful requests per model the landing page's percentiles are taken over
PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Traffic:
    """One model's requests: counts by status since start, and latency percentiles (nearest rank, in
    microseconds, over its last `window` successful requests; empty when there were none)."""

    counts: dict[str, int]
    window: int
    percentiles_us: dict[int, float]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def nearest_rank(values: Sequence[float], percentile: float) -> float:
    """The nearest-rank percentile of `values` (not empty): the smallest value with at least
    `percentile` % of the values at or below it."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * percentile // 100))  # ceil(n * p / 100), at least the first
    return ordered[int(rank) - 1]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _observe(
    table: dict[tuple[str, ...], list[float]], key: tuple[str, ...], bounds: Sequence[float], value: float
) -> None:
    cells = table.setdefault(key, [0.0] * (len(bounds) + 2))  # one per bucket, +Inf, then the sum
    cells[bisect_left(bounds, value)] += 1  # the first bucket whose bound is >= value; len(bounds): +Inf
    cells[-1] += value


class Metrics:
    """Thread-safe request counters and latency histograms for one server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}
        self._latency: dict[tuple[str, ...], list[float]] = {}  # bucket counts + [sum]
        self._queuing: dict[tuple[str, ...], list[float]] = {}
        self._batch_sizes: dict[tuple[str, ...], list[float]] = {}
        self._recent: dict[str, deque[float]] = {}  # model name -> last RECENT_WINDOW successful latencies
        # read when scraped: model name -> count
        self.live_sessions: Callable[[], Mapping[str, int]] | None = None
        self.evicted_sessions: Callable[[], Mapping[str, int]] | None = None
        self.loaded_versions: Callable[[], Mapping[str, int]] | None = None

    def record(self, model_name: str, api: str, entrypoint: str, code: Code, latency_us: float) -> None:
        with self._lock:
            key = (model_name, code.name)
            self._counts[key] = self._counts.get(key, 0) + 1
            if code is not Code.OK:
                return
            _observe(self._latency, (model_name, api, entrypoint), LATENCY_BUCKETS_US, latency_us)
            recent = self._recent.get(model_name)
            if recent is None:
                recent = self._recent[model_name] = deque(maxlen=RECENT_WINDOW)
            recent.append(latency_us)

    def traffic(self) -> dict[str, Traffic]:
        """Per model label: requests by status and recent latency percentiles (read only)."""
        with self._lock:
            counts: dict[str, dict[str, int]] = {}
            for (model, status), count in self._counts.items():
                counts.setdefault(model, {})[status] = count
            recent = {model: list(values) for model, values in self._recent.items()}
        return {
            model: Traffic(
                dict(sorted(by_status.items())),
                len(recent.get(model, ())),
                {p: nearest_rank(recent[model], p) for p in PERCENTILES} if recent.get(model) else {},
            )
            for model, by_status in counts.items()
        }

    def record_batch(
        self, model_name: str, signature_name: str, rows: int, waits_us: Sequence[float], thread_pool_name: str
    ) -> None:
        """One runtime call of `rows` merged rows; how long each request in it waited in the queue."""
        with self._lock:
            _observe(self._batch_sizes, (model_name, signature_name), BATCH_BUCKETS, float(rows))
            for wait in waits_us:
                _observe(self._queuing, (thread_pool_name,), LATENCY_BUCKETS_US, wait)

    def state(self) -> dict[str, Any]:
        """Everything this process counted, as JSON-able lists (what a worker sends the worker that is
        scraped, ``--server_workers``): :func:`merge_states` adds several up."""
        with self._lock:
            state: dict[str, Any] = {
                "counts": [[model, status, count] for (model, status), count in self._counts.items()],
                "latency": [[list(key), list(cells)] for key, cells in self._latency.items()],
                "queuing": [[list(key), list(cells)] for key, cells in self._queuing.items()],
                "batch_sizes": [[list(key), list(cells)] for key, cells in self._batch_sizes.items()],
            }
        for name, source in (
            ("live_sessions", self.live_sessions),
            ("evicted_sessions", self.evicted_sessions),
            ("loaded_versions", self.loaded_versions),
        ):
            state[name] = None if source is None else {model: int(value) for model, value in source().items()}
        return state

    def collect(self) -> Iterator[Any]:
        """prometheus-client collector protocol: histograms, then the gauges read now."""
        return _families(self.state())

    def render(self, others: Sequence[Mapping[str, Any]] = ()) -> bytes:
        """The exposition text; with `others` (other workers' :meth:`state`), of all of them together."""
        merged = merge_states([self.state(), *others]) if others else self.state()
        counts = sorted((model, status, count) for model, status, count in merged["counts"])
        lines = [
            f"# HELP {REQUEST_COUNT} The total number of requests.",
            f"# TYPE {REQUEST_COUNT} counter",
        ]
        lines += [
            f'{REQUEST_COUNT}{{model_name="{_escape(model)}",status="{status}"}} {count}'
            for model, status, count in counts
        ]
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_StateCollector(merged))
        return ("\n".join(lines) + "\n").encode() + generate_latest(registry)


class _StateCollector:
    def __init__(self, state: Mapping[str, Any]) -> None:
        self.state = state

    def collect(self) -> Iterator[Any]:
        return _families(self.state)


def merge_states(states: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Several workers' :meth:`Metrics.state` as one: counts and histogram cells added, live and evicted
    sessions added (each worker holds its own sequences), loaded versions the most any worker serves
    (each worker loads the same repository)."""
    counts: dict[tuple[str, str], int] = {}
    tables: dict[str, dict[tuple[str, ...], list[float]]] = {"latency": {}, "queuing": {}, "batch_sizes": {}}
    gauges: dict[str, dict[str, int] | None] = {
        "live_sessions": None,
        "evicted_sessions": None,
        "loaded_versions": None,
    }
    for state in states:
        for model, status, count in state["counts"]:
            counts[(model, status)] = counts.get((model, status), 0) + int(count)
        for name, table in tables.items():
            for key, cells in state[name]:
                into = table.setdefault(tuple(key), [0.0] * len(cells))
                for index, value in enumerate(cells):
                    into[index] += value
        for name in gauges:
            source = state.get(name)
            if source is None:
                continue
            into_gauge = gauges[name] = gauges[name] or {}
            for model, value in source.items():
                if name == "loaded_versions":
                    into_gauge[model] = max(into_gauge.get(model, 0), int(value))
                else:
                    into_gauge[model] = into_gauge.get(model, 0) + int(value)
    return {
        "counts": [[model, status, count] for (model, status), count in counts.items()],
        **{name: [[list(key), cells] for key, cells in table.items()] for name, table in tables.items()},
        **gauges,
    }


def _families(state: Mapping[str, Any]) -> Iterator[Any]:
    tables = [
        (
            REQUEST_LATENCY,
            "Distribution of wall-time (in microseconds) for Tensorflow Serving request.",
            ["model_name", "API", "entrypoint"],
            LATENCY_BUCKETS_US,
            {tuple(key): cells for key, cells in state["latency"]},
        ),
        (
            QUEUING_LATENCY,
            "Distribution of wall-time (in microseconds) that requests spent queued for batching.",
            ["thread_pool_name"],
            LATENCY_BUCKETS_US,
            {tuple(key): cells for key, cells in state["queuing"]},
        ),
        (
            BATCH_SIZE,
            "Rows per runtime call after dynamic batching.",
            ["model_name", "signature_name"],
            BATCH_BUCKETS,
            {tuple(key): cells for key, cells in state["batch_sizes"]},
        ),
    ]
    for name, help_text, labels, bounds, snapshot in tables:
        if not snapshot and name != REQUEST_LATENCY:
            continue
        family = HistogramMetricFamily(name, help_text, labels=labels)
        for key, cells in sorted(snapshot.items()):
            cumulative, buckets = 0.0, []
            for bound, count in zip((*bounds, float("inf")), cells[:-1]):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else f"{bound:g}", cumulative))
            family.add_metric(list(key), buckets, cells[-1])
        yield family
    gauges: list[tuple[str, str, str, bool]] = [
        (LIVE_SESSIONS, "Streaming sessions (sequences) holding RNN state.", "live_sessions", False),
        (EVICTED_SESSIONS, "Streaming sessions dropped after their idle timeout.", "evicted_sessions", True),
        (LOADED_VERSIONS, "Model versions serving requests.", "loaded_versions", False),
    ]
    for name, help_text, field_name, counter in gauges:
        values = state.get(field_name)
        if values is None:
            continue
        gauge: Any = (
            CounterMetricFamily(name, help_text, labels=["model_name"])
            if counter
            else GaugeMetricFamily(name, help_text, labels=["model_name"])
        )
        for model, value in sorted(values.items()):
            gauge.add_metric([model], float(value))
        yield gauge
