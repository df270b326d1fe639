"""The gateway's Prometheus metrics (all prefixed ``hookline_gateway_``).

Label values are bounded: an unknown source is counted as ``unknown`` so a
scanner cannot create one time series per URL it tries.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

disable_created_metrics()  # *_created series only add noise to every scrape

OUTCOMES = (
    "accepted",
    "unauthorized",
    "bad_request",
    "too_large",
    "unavailable",
    "not_found",
    "body_timeout",
    "busy",
    "client_gone",
    "too_slow",
)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.deliveries = Counter(
            "hookline_gateway_deliveries",
            "Webhook requests by source and outcome.",
            ["source", "outcome"],
            registry=self.registry,
        )
        self.verification_failures = Counter(
            "hookline_gateway_verification_failures",
            "Requests refused by verification, by source and reason.",
            ["source", "reason"],
            registry=self.registry,
        )
        self.publish_seconds = Histogram(
            "hookline_gateway_publish_seconds",
            "Time from send to Kafka acknowledgement (acks=all) for raw records.",
            ["environment"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "hookline_gateway_requests_in_flight",
            "Webhook requests being handled now.",
            registry=self.registry,
        )
        self.unverified_body_bytes = Gauge(
            "hookline_gateway_unverified_body_bytes",
            "Bytes of request bodies held now for senders not yet verified.",
            registry=self.registry,
        )
        self.connections_closed = Counter(
            "hookline_gateway_connections_closed",
            "Connections the gateway closed before or between requests, by reason "
            "(headers_too_large, header_timeout, idle, too_many_connections, bad_request).",
            ["reason"],
            registry=self.registry,
        )
        self.body_bytes = Histogram(
            "hookline_gateway_body_bytes",
            "Size of accepted webhook bodies.",
            buckets=(256, 1024, 4096, 16384, 65536, 262144, 1048576),
            registry=self.registry,
        )
