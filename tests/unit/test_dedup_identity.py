"""Each kind's deduplication identity, end to end with streams/dedup.py (PRODUCT.md section 4).

``adapter.dedup_identity(document, ignore) -> (dedup key, content digest)``; normalize
prefixes the key with ``"<source>|"`` and ``ignore`` is the source's ``dedup_ignore``.
"canonical JSON" is SHA-256 (hex) of the JSON with sorted keys, no whitespace, integral
floats written as integers, minus the ``ignore`` dotted paths. As the tests below prove:

============== ============================================ ====================================
kind           dedup key                                    content digest
============== ============================================ ====================================
partner        ``"json:" + digest``                         canonical JSON of the whole body
vignette-sales ``"json:" + digest``                         canonical JSON of the whole body
payments       ``"claims:" + digest``                       canonical JSON of the JWT claims
                                                            minus ``iat``, ``exp``, ``nbf``,
                                                            ``jti`` (the token itself, its
                                                            header and signature do not count)
envelope       ``"id:" + id`` (the envelope's ``id``)       canonical JSON of the whole body
============== ============================================ ====================================

So for partner, vignette-sales and payments a re-serialized retry (whitespace, key
order, ``15.70`` written ``15.7``, ``3`` written ``3.0``) or one differing only in an
ignored field is the same key, and any other change is another key (a new delivery).
For envelope, the same ``id`` is always the same key: the same content is a DUPLICATE,
other content a CONFLICT (dead-lettered by intake). Every copy of a key shares its
ordering key, so all copies meet in one raw partition.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from typing import Any

import jwt.api_jws
import pytest
from hookline.core.adapters import adapter_for, ordering_key, payments
from hookline.core.json_object import loads_object
from hookline.streams.dedup import Seen, classify, new_entry

from tests.unit.helpers import T0, payload_bytes

KEY = "payments-jwt-key-0123456789abcdef-0123"
IGNORE = ("sent_at", "meta.attempt")
HOUR = 3_600_000
SIGNED_FIRST = {"iat": 1_795_255_200, "exp": 1_795_255_500, "jti": "first"}
SIGNED_AGAIN = {"iat": 1_795_258_800, "exp": 1_795_259_100, "nbf": 1_795_258_800, "jti": "again"}

CASES = [
    ("partner", "partner-order-status.json"),
    ("partner", "partner-checkout-multi.json"),
    ("partner", "partner-checkout-single.json"),
    ("partner", "partner-order-confirmation.json"),
    ("vignette-sales", "vignette-sales-success.json"),
    ("vignette-sales", "vignette-sales-failure.json"),
    ("payments", "payments-claims.json"),
    ("envelope", "envelope-refund.json"),
    ("envelope", "envelope-user-create.json"),
]
IDS = [name.removesuffix(".json") for _, name in CASES]


# -- building deliveries ---------------------------------------------------------------------


def sha(value: Any) -> str:
    """The canonical digest written out (for content without integral floats)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def with_claims(content: bytes, extra: dict[str, Any]) -> bytes:
    """``content`` (a JSON object's text) with ``extra`` members appended, the rest as is."""
    if not extra:
        return content
    return content.rstrip().removesuffix(b"}") + b"," + json.dumps(extra)[1:].encode()


def document(kind: str, content: bytes, signing: dict[str, Any] | None = None) -> dict[str, Any]:
    """The document the worker's adapter sees for a body (payments: for a JWT of these claims)."""
    if kind == "payments":
        claims = with_claims(content, SIGNED_FIRST if signing is None else signing)
        token = jwt.api_jws.encode(claims, KEY, algorithm="HS256")
        content = json.dumps({"token": token}).encode()
    return loads_object(content)


def _rewrite(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: _rewrite(value) for key, value in reversed(node.items())}
    if isinstance(node, list):
        return [_rewrite(value) for value in node]
    if isinstance(node, int) and not isinstance(node, bool):
        return float(node)
    return node


def reserialized(content: bytes) -> bytes:
    """The same content written otherwise: keys reversed, 3 as 3.0, 15.70 as 15.7, \\u escapes."""
    return json.dumps(_rewrite(json.loads(content)), indent=3, ensure_ascii=True).encode()


def edited(content: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    value = json.loads(content)
    change(value)
    return json.dumps(value).encode()


def identity(kind: str, doc: dict[str, Any], ignore: tuple[str, ...] = ()) -> tuple[str, str]:
    key, digest = adapter_for(kind).dedup_identity(doc, ignore)
    assert isinstance(key, str)
    assert len(digest) == 64
    return key, digest


# -- the table above ---------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "name"), CASES, ids=IDS)
def test_each_kinds_key_and_digest(kind: str, name: str) -> None:
    content = payload_bytes(name)
    key, digest = identity(kind, document(kind, content))
    parsed = json.loads(content)
    assert digest == sha(parsed)  # payments: the claims without the signing claims
    if kind == "envelope":
        assert key == "id:" + parsed["id"]
    elif kind == "payments":
        assert key == "claims:" + digest
    else:
        assert key == "json:" + digest


# -- retries are the same delivery ----------------------------------------------------------------


@pytest.mark.parametrize(("kind", "name"), CASES, ids=IDS)
def test_reserialized_retry_has_the_same_identity(kind: str, name: str) -> None:
    content = payload_bytes(name)
    retry = reserialized(content)
    assert retry != content
    if b"15.70" in content:
        assert b"15.70" not in retry
        assert b"15.7" in retry
    first = document(kind, content, SIGNED_FIRST)
    again = document(kind, retry, SIGNED_AGAIN)
    assert first != again or kind != "payments"  # payments: another token
    assert identity(kind, first) == identity(kind, again)
    assert identity(kind, first, IGNORE) == identity(kind, again, IGNORE)


def test_payments_resigned_with_another_key_and_header_is_the_same_key() -> None:
    content = payload_bytes("payments-claims.json")
    claims = with_claims(content, SIGNED_FIRST)
    first = {"token": jwt.api_jws.encode(claims, KEY, algorithm="HS256")}
    again = {
        "token": jwt.api_jws.encode(
            with_claims(reserialized(content), SIGNED_AGAIN),
            "another-signing-key-0123456789abcdef",
            algorithm="HS256",
            headers={"kid": "k2"},
        )
    }
    assert first["token"] != again["token"]
    assert identity("payments", first) == identity("payments", again)


# -- a change is another delivery (envelope: a conflict) ---------------------------------------


def _set(*path: Any, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(node: dict[str, Any]) -> None:
        target: Any = node
        for step in path[:-1]:
            target = target[step]
        assert path[-1] in target
        assert target[path[-1]] != value
        target[path[-1]] = value

    return change


CHANGES: dict[str, Callable[[dict[str, Any]], None]] = {
    "partner-order-status.json": _set("plate", value="AB123CE"),
    "partner-checkout-multi.json": _set("orders", 1, "amount", value=15.71),
    "partner-checkout-single.json": _set("status", value="SUCCESS"),
    "partner-order-confirmation.json": _set("pdf_url", value="https://files.example.com/x.pdf"),
    "vignette-sales-success.json": _set(
        "vignetteSale", "data", "saleRows", 0, "kapschProperties", "price", "amount", value=30.69
    ),
    "vignette-sales-failure.json": _set("vignetteSale", "error", "code", value="TIMEOUT"),
    "payments-claims.json": _set("paymentStatus", value="failed"),
    "envelope-refund.json": _set("data", "amount", value=7.85),
    "envelope-user-create.json": _set("data", "user_id", value="usr_10"),
}


@pytest.mark.parametrize(("kind", "name"), CASES, ids=IDS)
def test_a_meaningful_change_is_another_key_or_a_conflict(kind: str, name: str) -> None:
    content = payload_bytes(name)
    key, digest = identity(kind, document(kind, content))
    other_key, other_digest = identity(kind, document(kind, edited(content, CHANGES[name])))
    assert other_digest != digest
    if kind == "envelope":
        assert other_key == key  # same id: not a new delivery but a conflict (below)
    else:
        assert other_key != key


# -- dedup_ignore ----------------------------------------------------------------------------------


def stamped(content: bytes, sent_at: str, attempt: int, trace: str = "t-1") -> bytes:
    """``content`` with a send time and a ``meta`` object, as a provider's retry might carry."""
    meta = {"attempt": attempt, "trace": trace}
    return edited(content, lambda value: value.update(sent_at=sent_at, meta=meta))


@pytest.mark.parametrize(("kind", "name"), CASES, ids=IDS)
def test_ignored_fields_top_level_and_nested_do_not_count(kind: str, name: str) -> None:
    content = payload_bytes(name)
    first = document(kind, stamped(content, "10:00:00", 1), SIGNED_FIRST)
    retry = document(kind, stamped(content, "10:15:00", 4), SIGNED_AGAIN)
    only_sent_at = document(kind, stamped(content, "10:15:00", 1))
    only_attempt = document(kind, stamped(content, "10:00:00", 4))
    base = identity(kind, first, IGNORE)
    assert identity(kind, retry, IGNORE) == base
    assert identity(kind, only_sent_at, IGNORE) == base
    assert identity(kind, only_attempt, IGNORE) == base
    # Without the source's ignore list the same copies are different content...
    for doc in (retry, only_sent_at, only_attempt):
        assert identity(kind, doc)[1] != identity(kind, first)[1]
        assert (identity(kind, doc)[0] == identity(kind, first)[0]) == (kind == "envelope")
    # ...and with it, a field next to an ignored one still counts.
    traced = document(kind, stamped(content, "10:00:00", 1, trace="t-2"))
    assert identity(kind, traced, IGNORE)[1] != base[1]
    assert (identity(kind, traced, IGNORE)[0] == base[0]) == (kind == "envelope")


def test_payments_ignore_names_claims() -> None:
    content = payload_bytes("payments-claims.json")
    iban = _set("paymentDetails", "debtorIban", value="DE89370400440532013000")
    first = document("payments", content)
    other = document("payments", edited(content, iban))
    ignore = ("paymentDetails.debtorIban",)
    assert identity("payments", first) != identity("payments", other)
    assert identity("payments", first, ignore) == identity("payments", other, ignore)
    # The decoded claims are cached and shared: ignoring must not remove anything from them.
    assert "debtorIban" in payments.claims(first)["paymentDetails"]
    assert identity("payments", first) != identity("payments", first, ignore)


@pytest.mark.parametrize(("kind", "name"), CASES, ids=IDS)
def test_identity_leaves_the_document_alone(kind: str, name: str) -> None:
    doc = document(kind, stamped(payload_bytes(name), "10:00:00", 1))
    snapshot = copy.deepcopy(doc)
    identity(kind, doc, (*IGNORE, "meta.trace", "data.amount"))
    assert doc == snapshot
    assert identity(kind, doc) == identity(kind, snapshot)


# -- all copies meet in one partition ----------------------------------------------------------


@pytest.mark.parametrize(("kind", "name"), CASES, ids=IDS)
def test_every_copy_of_a_key_has_one_ordering_key(kind: str, name: str) -> None:
    content = stamped(payload_bytes(name), "10:00:00", 1)
    copies = [
        document(kind, content, SIGNED_FIRST),
        document(kind, reserialized(content), SIGNED_AGAIN),
        document(kind, stamped(content, "10:15:00", 4)),
    ]
    if kind == "envelope":  # a conflict, too, must meet the first copy's dedup entry
        copies.append(document(kind, edited(content, CHANGES[name])))
    keys = {identity(kind, doc, IGNORE)[0] for doc in copies}
    assert len(keys) == 1
    assert len({ordering_key(kind, doc) for doc in copies}) == 1


# -- with streams/dedup.py: what intake decides ---------------------------------------------------


class Intake:
    """The intake stage's dedup decision for one source, with its table in a dict."""

    def __init__(self, kind: str, window_ms: int = 7 * 24 * HOUR) -> None:
        self.kind = kind
        self.window_ms = window_ms
        self.table: dict[str, dict[str, Any]] = {}

    def see(self, delivery_id: str, received_at: int, doc: dict[str, Any]) -> Seen:
        key, digest = identity(self.kind, doc, IGNORE)
        seen = classify(self.table.get(key), delivery_id, received_at, digest)
        if seen is Seen.NEW:
            self.table[key] = new_entry(delivery_id, received_at, self.window_ms, digest)
        return seen


def test_envelope_same_id_other_content_is_a_conflict() -> None:
    content = stamped(payload_bytes("envelope-refund.json"), "09:00:00", 1)
    intake = Intake("envelope", window_ms=2 * HOUR)
    changed = edited(content, CHANGES["envelope-refund.json"])
    verdicts = [
        intake.see("d1", T0, document("envelope", content)),
        intake.see("d2", T0 + 60_000, document("envelope", reserialized(content))),
        intake.see("d3", T0 + 120_000, document("envelope", stamped(content, "09:02:00", 2))),
        intake.see("d1", T0, document("envelope", content)),
        intake.see("d4", T0 + 180_000, document("envelope", changed)),
        intake.see("d5", T0 + 240_000, document("envelope", stamped(content, "x", 3, "t-9"))),
        intake.see("d6", T0 + 2 * HOUR, document("envelope", changed)),
    ]
    assert verdicts == [
        Seen.NEW,
        Seen.DUPLICATE,  # re-serialized
        Seen.DUPLICATE,  # only sent_at and meta.attempt differ
        Seen.REPLAY,  # the first delivery reprocessed
        Seen.CONFLICT,  # same id, other amount
        Seen.CONFLICT,  # meta.trace is not ignored
        Seen.NEW,  # the window is over: a new notification
    ]
    [entry] = intake.table.values()
    assert entry["delivery_id"] == "d6"


@pytest.mark.parametrize(("kind", "name"), CASES, ids=IDS)
def test_retries_are_duplicates_and_changes_are_new_or_conflicts(kind: str, name: str) -> None:
    content = payload_bytes(name)
    intake = Intake(kind, window_ms=HOUR)
    assert intake.see("d1", T0, document(kind, content, SIGNED_FIRST)) is Seen.NEW
    plain_retry = document(kind, reserialized(content), SIGNED_AGAIN)
    assert intake.see("d2", T0 + 1, plain_retry) is Seen.DUPLICATE
    assert intake.see("d1", T0, document(kind, content, SIGNED_FIRST)) is Seen.REPLAY
    changed = document(kind, edited(content, CHANGES[name]))
    assert intake.see("d3", T0 + 2, changed) is (Seen.CONFLICT if kind == "envelope" else Seen.NEW)
    assert intake.see("d4", T0 + HOUR, plain_retry) is Seen.NEW  # the first copy's window ended


def test_release_1_entry_without_digest_takes_any_copy_as_a_duplicate() -> None:
    content = payload_bytes("envelope-refund.json")
    key, _ = identity("envelope", document("envelope", content), IGNORE)
    intake = Intake("envelope")
    intake.table[key] = {
        "delivery_id": "d1",
        "received_at": T0,
        "expires_at": T0 + HOUR,
        "content_digest": "",
    }
    changed = document("envelope", edited(content, CHANGES["envelope-refund.json"]))
    assert intake.see("d2", T0 + 1, changed) is Seen.DUPLICATE
    assert intake.see("d3", T0 + 1, document("envelope", content)) is Seen.DUPLICATE
    assert intake.see("d4", T0 + HOUR, changed) is Seen.NEW
