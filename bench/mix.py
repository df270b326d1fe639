"""A generated mix of deliveries shaped like real provider traffic, and where it must end.

What it is for: ``bench/pipeline.py --input mixed`` (and the end-to-end
bench) measure the worker on every path it has, not only the shortest one,
and check afterwards that every order ended exactly where its deliveries
lead (docs/performance.md, "Worker pipeline"). Stories, each one order's (or
one checkout's) deliveries in the order a provider sends them:

- ``single``: partner checkout CREATED, PENDING, ACTIVE, the payment (a
  payments-provider JWT), the confirmation PDF;
- ``recheckout``: a checkout whose payment fails, a second checkout, PENDING,
  ACTIVE, its payment, the PDF, then an envelope partial refund;
- ``multi``: one partner checkout of 2-4 orders, each order's PENDING and
  ACTIVE, one payment for all of them, each order's PDF;
- ``vignette``: a vignette-sales HMAC report of one to three sale rows (each
  row is an order: active rows end ACTIVE with their Kapsch id, others
  PENDING with the report's vignette id);
- ``sandbox``: partner-sandbox PENDING, ACTIVE and PDF, landing in the
  sandbox environment.

About 30 % of deliveries are then sent again by their provider right after
the first copy (a new delivery id; a third of them re-serialized: other
whitespace and key order). Stories interleave at random; each story's own
deliveries keep their order, as the gateway's partitioning by ordering key
keeps them. The bodies come from ``tests/support/traffic.py`` (the spec's
example payloads), so the mix follows those files.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from hookline.core.adapters import ordering_key
from hookline.core.sources import Source, load_sources
from hookline.gateway.envelope import new_delivery_id, raw_envelope
from hookline.schemas import codec

from hookline.supervisor import dev_secrets
from tests.support import traffic
from tests.support.signing import hmac_signature, payments_body

STORY_WEIGHTS = {"single": 40, "recheckout": 12, "multi": 18, "vignette": 15, "sandbox": 15}
RETRY_SHARE = 0.30
RESERIALIZED_SHARE = 1 / 3
HEADERS = {"content-type": "application/json", "user-agent": "hookline-bench"}


@dataclass(frozen=True)
class Delivery:
    source: str  # a source name of infra/sources.dev.toml
    body: bytes
    label: str  # what it is, for the printed proportions
    retry: bool = False
    story: int = 0  # deliveries of one story must arrive in order


@dataclass(frozen=True)
class MixRecord:
    """A raw record as the gateway writes it: topic, key, value and partitioning key."""

    topic: str
    key: bytes  # the delivery id
    value: bytes  # the Avro WebhookEnvelope
    ordering_key: bytes
    label: str


@dataclass
class Mix:
    records: list[MixRecord]
    #: (environment, order id) -> the fields its final ``orders.state`` must have.
    expected: dict[tuple[str, str], dict[str, Any]]
    stories: Counter[str] = field(default_factory=Counter)

    def proportions(self) -> dict[str, float]:
        """Share of deliveries per kind (source and event), retries counted apart."""
        counts = Counter(r.label for r in self.records)
        return {k: round(v / len(self.records), 4) for k, v in sorted(counts.items())}


def reserialized(body: bytes) -> bytes:
    """A provider retry that re-serializes: other whitespace and key order, same content."""
    document = json.loads(body)
    return json.dumps(dict(reversed(list(document.items()))), indent=2).encode()


def _paid(tx: str, secrets: dict[str, str]) -> Delivery:
    claims = traffic.payment_claims(tx, "completed")
    return Delivery("payments", payments_body(claims, secrets["PAYMENTS_SECRET"]), "payments paid")


def _want(tx: str, order: str, **extra: Any) -> dict[str, Any]:
    return {
        "transaction_id": tx,
        "order_status": "ACTIVE",
        "payment_status": "SUCCEEDED",
        "confirmation_pdf_url": traffic.pdf_url(order),
        **extra,
    }


def _story(
    kind: str, tag: str, n: int, rng: random.Random, secrets: dict[str, str]
) -> tuple[list[Delivery], dict[tuple[str, str], dict[str, Any]]]:
    tx = f"tr-{tag}-{n:06d}"
    order = f"{tag}-{n:06d}"
    if kind == "single":
        return [
            Delivery("partner", traffic.checkout(tx, [order], "CREATED"), "partner checkout"),
            Delivery("partner", traffic.order_status(order, "PENDING", tx), "partner status"),
            Delivery("partner", traffic.order_status(order, "ACTIVE", tx), "partner status"),
            _paid(tx, secrets),
            Delivery("partner", traffic.confirmation(order, tx), "partner pdf"),
        ], {("production", order): _want(tx, order, refunded_amount=None)}
    if kind == "recheckout":
        declined = f"tr-{tag}-{n:06d}-declined"
        failed = traffic.payment_claims(declined, "failed")
        refund = traffic.envelope_event(
            f"wh-{tag}-{n:06d}",
            "subscription_event_refund",
            {"order_id": order, "amount": 5.0, "currency": "EUR"},
        )
        return [
            Delivery("partner", traffic.checkout(declined, [order], "CREATED"), "partner checkout"),
            Delivery(
                "payments", payments_body(failed, secrets["PAYMENTS_SECRET"]), "payments failed"
            ),
            Delivery("partner", traffic.checkout(tx, [order], "CREATED"), "partner checkout"),
            Delivery("partner", traffic.order_status(order, "PENDING", tx), "partner status"),
            Delivery("partner", traffic.order_status(order, "ACTIVE", tx), "partner status"),
            _paid(tx, secrets),
            Delivery("partner", traffic.confirmation(order, tx), "partner pdf"),
            Delivery("envelope", refund, "envelope refund"),
        ], {("production", order): _want(tx, order, refunded_amount=Decimal("5.0000"))}
    if kind == "multi":
        orders = [f"{order}-{i}" for i in range(rng.randint(2, 4))]
        story = [Delivery("partner", traffic.checkout(tx, orders, "CREATED"), "partner checkout")]
        for o in orders:
            story.append(
                Delivery("partner", traffic.order_status(o, "PENDING", tx), "partner status")
            )
            story.append(
                Delivery("partner", traffic.order_status(o, "ACTIVE", tx), "partner status")
            )
        story.append(_paid(tx, secrets))
        story += [Delivery("partner", traffic.confirmation(o, tx), "partner pdf") for o in orders]
        return story, {("production", o): _want(tx, o) for o in orders}
    if kind == "vignette":
        rows = [(f"{order}-r{i}", rng.random() < 0.7) for i in range(rng.randint(1, 3))]
        body = traffic.sale_success(
            tx, [(row, active, f"kp-{row}" if active else None) for row, active in rows], "vg_top"
        )
        want = {
            ("production", row): {
                "transaction_id": tx,
                "order_status": "ACTIVE" if active else "PENDING",
                "payment_status": "SUCCEEDED",
                "vignette_id": f"kp-{row}" if active else "vg_top",
            }
            for row, active in rows
        }
        return [Delivery("vignette-sales", body, "vignette-sales report")], want
    if kind == "sandbox":
        return [
            Delivery("partner-sandbox", traffic.order_status(order, "PENDING"), "sandbox status"),
            Delivery("partner-sandbox", traffic.order_status(order, "ACTIVE"), "sandbox status"),
            Delivery("partner-sandbox", traffic.confirmation(order), "sandbox pdf"),
        ], {
            ("sandbox", order): {
                "order_status": "ACTIVE",
                "confirmation_pdf_url": traffic.pdf_url(order),
            }
        }
    raise ValueError(kind)


def deliveries(
    count: int, tag: str, seed: int = 7
) -> tuple[list[Delivery], dict[tuple[str, str], dict[str, Any]], Counter[str]]:
    """At least ``count`` deliveries (retries included), interleaved; and their final states."""
    rng = random.Random(seed)
    secrets = dev_secrets()
    kinds, weights = zip(*STORY_WEIGHTS.items(), strict=True)
    sequences: list[list[Delivery]] = []
    expected: dict[tuple[str, str], dict[str, Any]] = {}
    stories: Counter[str] = Counter()
    total = 0
    while total < count:
        kind = rng.choices(kinds, weights)[0]
        story, want = _story(kind, tag, len(sequences), rng, secrets)
        with_retries: list[Delivery] = []
        for delivery in story:
            delivery = replace(delivery, story=len(sequences))
            with_retries.append(delivery)
            if rng.random() < RETRY_SHARE / (1 - RETRY_SHARE):  # of all deliveries
                body = delivery.body
                if rng.random() < RESERIALIZED_SHARE:
                    body = reserialized(body)
                with_retries.append(replace(delivery, body=body, label="retry", retry=True))
        sequences.append(with_retries)
        expected.update(want)
        stories[kind] += 1
        total += len(with_retries)
    out: list[Delivery] = []
    while sequences:
        index = rng.randrange(len(sequences))
        out.append(sequences[index].pop(0))
        if not sequences[index]:
            sequences[index] = sequences[-1]
            sequences.pop()
    return out, expected, stories


def _signed_headers(source: Source, body: bytes, secrets: dict[str, str]) -> dict[str, str]:
    if source.verify == "hmac-sha256":
        return {**HEADERS, "x-signature": hmac_signature(body, secrets["VIGNETTE_SALES_SECRET"])}
    return HEADERS


def encode(items: list[Delivery], sources_path: Any) -> list[MixRecord]:
    """Each delivery as the gateway writes it to ``<env>.webhooks.raw``."""
    secrets = dev_secrets()
    sources = load_sources(sources_path, secrets)
    out = []
    for item in items:
        source = sources[item.source]
        received_at = int(time.time() * 1000)
        delivery_id = new_delivery_id(received_at)
        headers = _signed_headers(source, item.body, secrets)
        envelope = raw_envelope(source, item.body, headers, "127.0.0.1", received_at, delivery_id)
        out.append(
            MixRecord(
                f"{source.environment}.webhooks.raw",
                delivery_id.encode(),
                codec.encode(codec.WEBHOOK_ENVELOPE, envelope),
                ordering_key(source.kind, json.loads(item.body)).encode(),
                item.label,
            )
        )
    return out


def mix(count: int, tag: str, sources_path: Any, seed: int = 7) -> Mix:
    items, expected, stories = deliveries(count, tag, seed)
    return Mix(encode(items, sources_path), expected, stories)


def mismatches(
    latest: dict[tuple[str, str], dict[str, Any]], expected: dict[tuple[str, str], dict[str, Any]]
) -> list[tuple[tuple[str, str], dict[str, Any], dict[str, Any] | None]]:
    """(order, wanted, got) for every order whose latest state is not the expected one."""
    wrong = []
    for order, want in expected.items():
        state = latest.get(order)
        got = None if state is None else {k: state.get(k) for k in want}
        if got != want:
            wrong.append((order, want, got))
    return wrong
