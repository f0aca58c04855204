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
    for index, bound in enumerate(bounds):
        if value <= bound:
            cells[index] += 1
            break
    else:
        cells[len(bounds)] += 1
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
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)

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

    def collect(self) -> Iterator[Any]:
        """prometheus-client collector protocol: histograms, then the gauges read now."""
        with self._lock:
            tables = [
                (
                    REQUEST_LATENCY,
                    "Distribution of wall-time (in microseconds) for Tensorflow Serving request.",
                    ["model_name", "API", "entrypoint"],
                    LATENCY_BUCKETS_US,
                    {key: list(cells) for key, cells in self._latency.items()},
                ),
                (
                    QUEUING_LATENCY,
                    "Distribution of wall-time (in microseconds) that requests spent queued for batching.",
                    ["thread_pool_name"],
                    LATENCY_BUCKETS_US,
                    {key: list(cells) for key, cells in self._queuing.items()},
                ),
                (
                    BATCH_SIZE,
                    "Rows per runtime call after dynamic batching.",
                    ["model_name", "signature_name"],
                    BATCH_BUCKETS,
                    {key: list(cells) for key, cells in self._batch_sizes.items()},
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
        gauges: list[tuple[str, str, Callable[[], Mapping[str, int]] | None, bool]] = [
            (LIVE_SESSIONS, "Streaming sessions (sequences) holding RNN state.", self.live_sessions, False),
            (EVICTED_SESSIONS, "Streaming sessions dropped after their idle timeout.", self.evicted_sessions, True),
            (LOADED_VERSIONS, "Model versions serving requests.", self.loaded_versions, False),
        ]
        for name, help_text, source, counter in gauges:
            if source is None:
                continue
            gauge: Any = (
                CounterMetricFamily(name, help_text, labels=["model_name"])
                if counter
                else GaugeMetricFamily(name, help_text, labels=["model_name"])
            )
            for model, value in sorted(source().items()):
                gauge.add_metric([model], float(value))
            yield gauge

    def render(self) -> bytes:
        with self._lock:
            counts = sorted(self._counts.items())
        lines = [
            f"# HELP {REQUEST_COUNT} The total number of requests.",
            f"# TYPE {REQUEST_COUNT} counter",
        ]
        lines += [
            f'{REQUEST_COUNT}{{model_name="{_escape(model)}",status="{status}"}} {count}'
            for (model, status), count in counts
        ]
        return ("\n".join(lines) + "\n").encode() + generate_latest(self._registry)
