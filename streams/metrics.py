"""The worker's Prometheus metrics (prefixed ``hookline_worker_``).

Served at the worker's own ``/metrics`` (``hookline worker --web-port``).
Consumer lag is read from Faust's monitor at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


def observe_all(histogram: Histogram, amounts: Sequence[float]) -> None:
    """``histogram.observe(amount)`` for each amount: counted per bucket, then added once.

    Why: the end-to-end latency is observed for every order change, and
    ``observe`` takes a lock and walks the buckets for each one; a batch's
    changes are counted here with one bisect each and added per bucket, the
    same counts and sum. It reads prometheus_client's per-child
    ``_upper_bounds``, ``_buckets`` and ``_sum`` (its version is pinned;
    tests/unit/test_metrics.py compares the result with ``observe``); a
    histogram without them is observed one amount at a time.
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:
        for amount in amounts:
            histogram.observe(amount)
        return
    counts = [0] * len(bounds)
    for amount in amounts:
        counts[bisect_left(bounds, amount)] += 1  # the first bound >= amount; the last is +Inf
    total.inc(sum(amounts))
    for bucket, count in zip(buckets, counts, strict=True):
        if count:
            bucket.inc(count)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._awaiting: _AwaitingCollector | None = None
        r = self.registry
        self.events = Counter(
            "hookline_worker_events",
            "Canonical events emitted, by environment, source and canonical type.",
            ["environment", "source", "type"],
            registry=r,
        )
        self.duplicates = Counter(
            "hookline_worker_duplicates_dropped",
            "Deliveries dropped as a provider's retry of an earlier one.",
            ["environment", "source"],
            registry=r,
        )
        self.replays = Counter(
            "hookline_worker_replayed_inputs",
            "Inputs reprocessed after a restart whose effect was already stored.",
            ["environment", "stage"],
            registry=r,
        )
        self.dead_letters = Counter(
            "hookline_worker_dead_letters",
            "Deliveries sent to the dead-letter topic, by stage.",
            ["environment", "stage"],
            registry=r,
        )
        self.rejected = Counter(
            "hookline_worker_rejected_transitions",
            "Transitions the state rules refused (late lower order status, PENDING after FAILED).",
            ["environment", "field", "from_status", "to_status"],
            registry=r,
        )
        self.conflicts = Counter(
            "hookline_worker_join_conflicts",
            "Double payments: a second transaction succeeded for an order already paid "
            "(the order keeps the first; logged with both transaction ids).",
            ["environment"],
            registry=r,
        )
        self.dedup_conflicts = Counter(
            "hookline_worker_dedup_conflicts",
            "Deliveries whose dedup key (an envelope id) came back with different content: "
            "dead-lettered with stage dedup, nothing changed.",
            ["environment", "source"],
            registry=r,
        )
        self.state_changes = Counter(
            "hookline_worker_state_changes",
            "Order state changes produced (one orders.changes record each).",
            ["environment"],
            registry=r,
        )
        self.republished = Counter(
            "hookline_worker_republished_changes",
            "Order changes sent again because the worker that decided them died before "
            "committing their inputs, perhaps before sending them (streams/redelivery.py). "
            "Byte-identical repeats of a version.",
            ["environment"],
            registry=r,
        )
        self.end_to_end = Histogram(
            "hookline_worker_end_to_end_seconds",
            "Gateway received_at to order state produced.",
            ["environment"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.expired = Counter(
            "hookline_worker_expired_keys",
            "Table keys deleted after their window (dedup) or retention (join), or orders "
            "retired after the order retention.",
            ["environment", "table"],
            registry=r,
        )
        self.fenced = Counter(
            "hookline_worker_fenced_changelog_records",
            "Changelog records a table recovery skipped because a newer consumer-group "
            "generation had already written that partition: late writes of a worker that "
            "lost its partitions while paused (streams/fencing.py).",
            ["environment", "table"],
            registry=r,
        )
        self.unreadable = Counter(
            "hookline_worker_unreadable_records",
            "Records of a schema this release does not know (a newer release wrote them), "
            "by stage: never acked unread; their partition waits for a worker that can "
            "read them (docs/operations.md, upgrading workers).",
            ["environment", "stage"],
            registry=r,
        )
        self.held_partitions = Gauge(
            "hookline_worker_held_partitions",
            "Input partitions a stage holds at a record it cannot read (see "
            "hookline_worker_unreadable_records): nothing past it is processed or committed.",
            ["environment", "stage"],
            registry=r,
        )
        self.abandoned_batches = Counter(
            "hookline_worker_abandoned_batches",
            "Batches dropped unsent and uncommitted because the worker was no longer a member "
            "of the group's generation it read them in (evicted, e.g. after a long pause); "
            "their inputs are read again after the rebalance.",
            ["environment", "stage"],
            registry=r,
        )
        self.record_errors = Counter(
            "hookline_worker_record_errors",
            "Records a stage dead-lettered because processing them raised an error no rule "
            "anticipated (a bug the record exposed; the dead letter has the reason).",
            ["environment", "stage"],
            registry=r,
        )
        self.processing_guarantee = Enum(
            "hookline_worker_processing_guarantee",
            "The processing guarantee in force: exactly_once (Kafka transactions) or "
            "at_least_once (docs/consumers.md says what each lets a consumer rely on).",
            states=["exactly_once", "at_least_once"],
            registry=r,
        )
        self.batch_size = Histogram(
            "hookline_worker_batch_size",
            "Inputs per processed batch, by stage.",
            ["stage"],
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2000),
            registry=r,
        )

    def watch_lag(self, app: Any) -> None:
        self.registry.register(_LagCollector(app))

    def watch_awaiting(self, environment: str, tracker: Any) -> None:
        """Export ``tracker.total()`` (streams/activation.py) for one environment."""
        if self._awaiting is None:
            self._awaiting = _AwaitingCollector()
            self.registry.register(self._awaiting)
        self._awaiting.trackers[environment] = tracker


class _AwaitingCollector(Collector):
    def __init__(self) -> None:
        self.trackers: dict[str, Any] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "hookline_worker_orders_awaiting_activation",
            "Orders on this worker's partitions whose payment SUCCEEDED and whose order_status "
            "is not ACTIVE or REFUNDED yet.",
            labels=["environment"],
        )
        for environment, tracker in sorted(self.trackers.items()):
            family.add_metric([environment], tracker.total())
        yield family


class _LagCollector(Collector):
    """Consumer lag per partition: log end offset minus committed offset."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "hookline_worker_consumer_lag",
            "Records not yet committed, per topic partition owned by this worker.",
            labels=["topic", "partition"],
        )
        monitor = self.app.monitor
        committed = monitor.tp_committed_offsets or {}
        for tp, end in sorted((monitor.tp_end_offsets or {}).items()):
            done = committed.get(tp)
            lag = end - done if done is not None else end
            family.add_metric([tp.topic, str(tp.partition)], max(lag, 0))
        yield family
