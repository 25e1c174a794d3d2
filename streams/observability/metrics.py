"""Prometheus metrics and the health endpoints every long-running process serves.

One HTTP server per process on ``METRICS_HOST:METRICS_PORT`` (loopback unless configured):

* ``/metrics``: Prometheus text format;
* ``/healthz``: liveness, 200 while the process's event loop answers;
* ``/readyz``: readiness, 200 once the process owns its partitions and has restored its state.

Amounts are exported as floats because that is what Prometheus stores: they are for dashboards
and alerting, never for billing (ClickHouse holds the exact decimals).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger("streams.metrics")

BUCKET_KINDS = ("free", "trial", "pack", "voucher", "cash")

# Every metric this package exports; the Grafana dashboard in infra/ may only use these (a test
# checks).
METRIC_NAMES = (
    "billing_events_consumed_total",
    "billing_events_rated_total",
    "billing_events_applied_total",
    "billing_events_rejected_total",
    "billing_events_duplicate_total",
    "billing_deductions_total",
    "billing_rated_amount_total",
    "billing_bucket_amount_total",
    "billing_alerts_total",
    "billing_settlement_lines_total",
    "billing_hour_close_delay_seconds",
    "billing_consumer_lag",
    "billing_event_age_seconds",
    "billing_worker_round_seconds",
    "billing_sink_batch_rows",
    "billing_sink_insert_seconds",
    "billing_sink_insert_failures_total",
    "billing_sink_rows_total",
    "billing_sink_halted_total",
)


def _name(counter_name: str) -> str:
    """prometheus-client appends ``_total`` to counters itself."""
    return counter_name.removesuffix("_total")


class PipelineMetrics:
    """The metrics of one process, in a registry of its own (tests build several per process)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.consumed = Counter(
            _name("billing_events_consumed_total"),
            "Input events decoded from the events topic",
            registry=r,
        )
        self.rated = Counter(
            _name("billing_events_rated_total"), "Usage events rated and paid", registry=r
        )
        self.applied = Counter(
            _name("billing_events_applied_total"),
            "Account events applied (top-ups, packs, ...)",
            registry=r,
        )
        self.rejected = Counter(
            _name("billing_events_rejected_total"),
            "Events sent to the dead-letter topic",
            ["reason"],
            registry=r,
        )
        self.duplicates = Counter(
            _name("billing_events_duplicate_total"),
            "Redelivered or duplicated events dropped",
            registry=r,
        )
        self.deductions = Counter(
            _name("billing_deductions_total"),
            "Deductions emitted",
            ["profile", "currency"],
            registry=r,
        )
        self.rated_amount = Counter(
            _name("billing_rated_amount_total"),
            "Rated amount (float: dashboards only)",
            ["profile", "currency"],
            registry=r,
        )
        self.bucket_amount = Counter(
            _name("billing_bucket_amount_total"),
            "Amount paid per bucket kind, and unbilled",
            ["profile", "currency", "bucket"],
            registry=r,
        )
        self.alerts = Counter(_name("billing_alerts_total"), "Alerts emitted", ["kind"], registry=r)
        self.settlement_lines = Counter(
            _name("billing_settlement_lines_total"),
            "Settlement lines emitted",
            ["granularity", "line_type"],
            registry=r,
        )
        self.hour_close_delay = Histogram(
            "billing_hour_close_delay_seconds",
            "Wall-clock time from a period's end to its settlement line",
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 6 * 3600, 86400),
            registry=r,
        )
        self.lag = Gauge(
            "billing_consumer_lag",
            "Messages behind the partition's end",
            ["group", "topic", "partition"],
            registry=r,
        )
        self.event_age = Gauge(
            "billing_event_age_seconds",
            "Wall clock minus the Kafka timestamp of the last message handled "
            "on the partition (ticks included, so it grows while an owned partition makes no "
            "progress)",
            ["group", "topic", "partition"],
            registry=r,
        )
        # process_* (CPU, resident memory, open files, start time): restarts and memory are alerted
        # on
        ProcessCollector(registry=r)
        self._handled: dict[tuple[str, str, int], float] = {}
        self.round_seconds = Histogram(
            "billing_worker_round_seconds",
            "Time to process one round of events (without output acks)",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.sink_batch_rows = Histogram(
            "billing_sink_batch_rows",
            "Rows per sink batch",
            buckets=(1, 10, 100, 500, 1000, 5000, 10000, 50000),
            registry=r,
        )
        self.sink_insert_seconds = Histogram(
            "billing_sink_insert_seconds",
            "ClickHouse insert latency",
            ["table"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.sink_insert_failures = Counter(
            _name("billing_sink_insert_failures_total"),
            "Failed ClickHouse inserts (retried)",
            ["table"],
            registry=r,
        )
        self.sink_rows = Counter(
            _name("billing_sink_rows_total"), "Rows inserted into ClickHouse", ["table"], registry=r
        )
        self.sink_halted = Counter(
            _name("billing_sink_halted_total"),
            "Sink stops on a record it cannot read or an insert "
            "ClickHouse rejects for good (exit code 3)",
            ["table", "reason"],
            registry=r,
        )
        self._tallied = {
            "consumed": self.consumed,
            "rated": self.rated,
            "applied": self.applied,
            "duplicate": self.duplicates,
        }
        self._synced: dict[str, int] = {}

    # ------------------------------------------------------------ worker

    def count_outcome(self, outcome: Any, now_ms: int) -> None:
        """One engine outcome (apply or advance): deductions, alerts, settlement lines."""
        d = outcome.deduction
        if d is not None:
            labels = (d.profile, d.currency)
            self.deductions.labels(*labels).inc()
            self.rated_amount.labels(*labels).inc(float(d.rated_amount))
            for split in d.splits:
                self.bucket_amount.labels(*labels, split.bucket_kind).inc(float(split.amount))
            unbilled = d.unbilled_amount
            if unbilled:
                self.bucket_amount.labels(*labels, "unbilled").inc(float(unbilled))
        for alert in outcome.alerts:
            self.alerts.labels(alert["kind"]).inc()
        for line in outcome.settlements:
            self.settlement_lines.labels(line["granularity"], line["line_type"]).inc()
            if line["line_type"] == "regular":
                self.hour_close_delay.observe(max(0.0, (now_ms - line["period_end"]) / 1000))

    def sync_counts(self, counts: dict[str, int]) -> None:
        """Bring the event counters up to the worker's running tally (``consumed``, ``rated``,
        ``applied``, ``duplicate``, ``rejected:<code>``): once per round, not once per event."""
        for key, total in counts.items():
            step = total - self._synced.get(key, 0)
            if step <= 0:
                continue
            self._synced[key] = total
            if key.startswith("rejected:"):
                self.rejected.labels(key.split(":", 1)[1]).inc(step)
            elif key in self._tallied:
                self._tallied[key].inc(step)

    def labels_by_metric(self) -> dict[str, set[str]]:
        """Exported name -> label names, for checking dashboards against what is exported."""
        out = {}
        for value in vars(self).values():
            if isinstance(value, (Counter, Gauge, Histogram)):
                name = value._name + ("_total" if isinstance(value, Counter) else "")
                out[name] = set(value._labelnames)
        return out

    def set_lag(self, group: str, lags: Iterable[tuple[str, int, int]]) -> None:
        """The lags given are all this process owns now: partitions it lost disappear (from the
        event ages too)."""
        self.lag.clear()
        owned = set()
        for topic, partition, lag in lags:
            self.lag.labels(group, topic, str(partition)).set(max(0, lag))
            owned.add((group, topic, partition))
        self._handled = {k: v for k, v in self._handled.items() if k[0] != group or k in owned}

    def mark_handled(self, group: str, topic: str, timestamps: dict[int, float]) -> None:
        """partition -> Kafka timestamp of the last message handled there, in seconds (faust's
        ``message.timestamp``), once per round."""
        for partition, timestamp in timestamps.items():
            self._handled[(group, topic, partition)] = timestamp

    def exposition(self) -> bytes:
        now = time.time()
        self.event_age.clear()
        for (group, topic, partition), timestamp in list(self._handled.items()):
            self.event_age.labels(group, topic, str(partition)).set(max(0.0, now - timestamp))
        return generate_latest(self.registry)


async def serve(host: str, port: int, metrics: PipelineMetrics, ready: Callable[[], bool]):
    """Start the HTTP endpoints on the running loop; returns the aiohttp runner (``await
    runner.cleanup()``)."""
    from aiohttp import web

    async def metrics_view(request: web.Request) -> web.Response:
        return web.Response(
            body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def health_view(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def ready_view(request: web.Request) -> web.Response:
        ok = ready()
        return web.Response(text="ready\n" if ok else "not ready\n", status=200 if ok else 503)

    web_app = web.Application()
    web_app.router.add_get("/metrics", metrics_view)
    web_app.router.add_get("/healthz", health_view)
    web_app.router.add_get("/readyz", ready_view)
    runner = web.AppRunner(web_app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("metrics and health on http://%s:%d/metrics /healthz /readyz", host, port)
    return runner
