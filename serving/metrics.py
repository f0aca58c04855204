"""Prometheus metrics under TF Serving's names, so dashboards built for TF Serving work unchanged.

``:tensorflow:serving:request_count{model_name,status}`` (counter) and
``:tensorflow:serving:request_latency{model_name,API,entrypoint}`` (histogram in microseconds,
buckets 10 µs x 1.8^i, i < 33, successful requests only), as ``util/prometheus_exporter.cc``
prints them. The histogram is rendered by prometheus-client; the counter is printed in TF
Serving's form because prometheus-client would rename it ``..._total``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import HistogramMetricFamily

from serving.errors import Code

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
LATENCY_BUCKETS_US: tuple[float, ...] = tuple(10.0 * 1.8**i for i in range(33))
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Thread-safe request counters and latency histograms for one server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}
        self._latency: dict[tuple[str, str, str], list[float]] = {}  # bucket counts + [sum]
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)

    def record(self, model_name: str, api: str, entrypoint: str, code: Code, latency_us: float) -> None:
        with self._lock:
            key = (model_name, code.name)
            self._counts[key] = self._counts.get(key, 0) + 1
            if code is not Code.OK:
                return
            cells = self._latency.setdefault((model_name, api, entrypoint), [0.0] * (len(LATENCY_BUCKETS_US) + 2))
            for index, bound in enumerate(LATENCY_BUCKETS_US):
                if latency_us <= bound:
                    cells[index] += 1
                    break
            else:
                cells[len(LATENCY_BUCKETS_US)] += 1
            cells[-1] += latency_us

    def collect(self) -> Iterator[Any]:
        """prometheus-client collector protocol: the latency histogram family."""
        family = HistogramMetricFamily(
            REQUEST_LATENCY,
            "Distribution of wall-time (in microseconds) for Tensorflow Serving request.",
            labels=["model_name", "API", "entrypoint"],
        )
        with self._lock:
            snapshot = {key: list(cells) for key, cells in self._latency.items()}
        for (model, api, entrypoint), cells in sorted(snapshot.items()):
            cumulative, buckets = 0.0, []
            for bound, count in zip((*LATENCY_BUCKETS_US, float("inf")), cells[:-1]):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else f"{bound:g}", cumulative))
            family.add_metric([model, api, entrypoint], buckets, cells[-1])
        yield family

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
