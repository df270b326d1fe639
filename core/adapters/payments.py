"""Payment-order notifications: a JWT whose claims carry the payment status.

Seed: ../shared/seeds/002_f8f33cdad71d87ad.txt. Claims assumed:
../shared/spec/payloads/payments-claims.json, body: payments-body.md.
The gateway verified the JWT (HS256); here its claims are only read.
Every assumption about this provider's payload lives in this file.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Sequence
from typing import Any

import jwt
from hookline.core import content_key
from hookline.core.adapters import money
from hookline.core.adapters.fields import Unmappable, choice, required_text
from hookline.core.events import (
    TRANSACTION_STATUS_CHANGED,
    CanonicalEvent,
    DeliveryContext,
    new_event,
)
from hookline.core.json_object import DEFAULT_MAX_DEPTH, NotAJsonObject, loads_object

KIND = "payments"

PAYMENT_STATUS = {
    "processing": "PENDING",
    "completed": "SUCCEEDED",
    "canceled": "CANCELED",
    "expired": "EXPIRED",
    "failed": "FAILED",
}
#: A retry is signed again: these claims may differ between two copies of one notification.
SIGNING_CLAIMS = frozenset({"iat", "exp", "nbf", "jti"})


def envelope_problem(document: dict[str, Any]) -> str | None:
    if not isinstance(document.get("token"), str) or not document["token"]:
        return "payments webhooks carry a JWT in 'token'"
    return None


def claims(document: dict[str, Any]) -> dict[str, Any]:
    """The token's claims (read-only: shared between the calls for one delivery)."""
    token = document.get("token")
    if not isinstance(token, str):
        raise Unmappable("unreadable JWT: no token")
    return _decode(token)


@functools.lru_cache(maxsize=256)
def _decode(token: str) -> dict[str, Any]:
    """The claims, read as strictly as a body: the token's payload is JSON
    inside the JSON body, and the gateway's bounds (strict UTF-8 without lone
    surrogates, no duplicate keys, ``DEFAULT_MAX_DEPTH``) hold there too, so
    no claim can carry a value the encoders or the content key refuse
    (docs/design.md, "No delivery stops the pipeline").

    dedup_key, ordering_key and to_events all need the claims of the same
    token, so a delivery's JWT is decoded once instead of three times.
    """
    try:
        payload = jwt.api_jws.decode_complete(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise Unmappable(f"unreadable JWT: {type(exc).__name__}") from None
    try:
        return loads_object(payload["payload"], DEFAULT_MAX_DEPTH)
    except NotAJsonObject as exc:
        raise Unmappable(f"JWT claims: {str(exc).replace('body', 'claims')}") from None


#: Claims that are the payer's personal data, masked where hookline keeps a copy
#: for people to read (a dead letter); the raw record keeps the delivery whole.
PERSONAL_CLAIMS = (("paymentDetails", "debtorIban"),)


def redacted_body(body: bytes) -> bytes:
    """The body as a dead letter keeps it: the token without its signature (it can
    no longer be posted to any gateway) and its personal claims masked.

    Only the claims remain readable, for an operator to see why the delivery
    was refused; ``hookline redrive`` re-sends the raw record itself
    (docs/security.md, "Personal data").
    """
    try:
        token = loads_object(body, DEFAULT_MAX_DEPTH)["token"]
        header, payload, _signature = token.split(".")
        claims = loads_object(_b64decode(payload), DEFAULT_MAX_DEPTH)
    except (NotAJsonObject, KeyError, ValueError, AttributeError, TypeError):
        return b'{"token": null, "redacted": "not a readable JWT"}'
    for path in PERSONAL_CLAIMS:
        holder: Any = claims
        for step in path[:-1]:
            holder = holder.get(step) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and isinstance(holder.get(path[-1]), str):
            holder[path[-1]] = _masked(holder[path[-1]])
    unsigned = f"{header}.{_b64encode(json.dumps(claims).encode())}."
    return json.dumps({"token": unsigned, "redacted": "signature and personal claims"}).encode()


def _masked(value: str) -> str:
    return value[:4] + "*" * max(len(value) - 8, 0) + value[-4:] if len(value) > 8 else "****"


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def dedup_identity(document: dict[str, Any], ignore: Sequence[str]) -> tuple[str, str]:
    """(dedup key, content digest): the claims, without the signing claims.

    A retry is signed again (new iat/exp/jti, so a new token), but carries the
    same claims; ``ignore`` names further claims to leave out.
    """
    meaningful = {k: v for k, v in claims(document).items() if k not in SIGNING_CLAIMS}
    content = content_key.digest(meaningful, ignore)
    return "claims:" + content, content


def ordering_key(document: dict[str, Any]) -> str:
    try:
        reference = claims(document).get("orderReference")
    except Unmappable:
        reference = None
    return reference if isinstance(reference, str) and reference else document["token"][-32:]


def to_events(document: dict[str, Any], ctx: DeliveryContext) -> list[CanonicalEvent]:
    payload = claims(document)
    transaction_id = required_text(payload, "orderReference")
    status = choice(payload.get("paymentStatus"), PAYMENT_STATUS, "paymentStatus")
    event = payload.get("event")
    # paymentDetails.amount/currency: the transaction's amount (PRODUCT.md
    # section 4), on its event only; out of range it is refused (kept as text).
    details = payload.get("paymentDetails")
    details = details if isinstance(details, dict) else {}
    paid, refused = money.priced(details.get("amount"), "'paymentDetails.amount'")
    return [
        new_event(
            ctx,
            0,
            TRANSACTION_STATUS_CHANGED,
            "transaction",
            transaction_id,
            provider_event_type=event if isinstance(event, str) and len(event) <= 100 else None,
            transaction_id=transaction_id,
            payment_status=status,
            amount=paid,
            currency=money.currency(details.get("currency"), "'paymentDetails.currency'"),
            refused_amount=refused,
        )
    ]
