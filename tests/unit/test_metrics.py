"""observe_all must expose exactly what one observe per amount exposes."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hookline.streams.metrics import observe_all
from prometheus_client import CollectorRegistry, Histogram

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def _pair() -> tuple[CollectorRegistry, Any, CollectorRegistry, Any]:
    one, many = CollectorRegistry(), CollectorRegistry()
    return (
        one,
        Histogram("latency_seconds", "doc", ["environment"], buckets=BUCKETS, registry=one),
        many,
        Histogram("latency_seconds", "doc", ["environment"], buckets=BUCKETS, registry=many),
    )


def test_observe_all_matches_observe_one_by_one_on_bounds_and_between_them() -> None:
    rng = random.Random(7)
    amounts = [*BUCKETS, 0.0, 1e9, *(rng.uniform(0, 400) for _ in range(500))]
    amounts += [rng.choice(BUCKETS) for _ in range(50)]  # exactly on a bound: that bucket
    one_registry, one, all_registry, all_ = _pair()
    for amount in amounts:
        one.labels("production").observe(amount)
    observe_all(all_.labels("production"), amounts[:300])
    observe_all(all_.labels("production"), amounts[300:])
    observe_all(all_.labels("production"), [])
    expected, got = _samples(one_registry), _samples(all_registry)
    total = ("latency_seconds_sum", (("environment", "production"),))
    # The sum is added per batch, not per amount: equal up to float rounding.
    assert got.pop(total) == pytest.approx(expected.pop(total), rel=1e-12)
    assert got == expected
    assert _samples(all_registry)[("latency_seconds_count", (("environment", "production"),))] == (
        len(amounts)
    )


def test_a_histogram_without_the_private_fields_is_observed_one_by_one() -> None:
    seen: list[float] = []

    class Plain:
        def observe(self, amount: float) -> None:
            seen.append(amount)

    observe_all(Plain(), [0.5, 2.0])  # type: ignore[arg-type]
    assert seen == [0.5, 2.0]
