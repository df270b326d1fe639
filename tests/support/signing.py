"""Sign requests the way each provider does, for tests and benchmarks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt

from hookline.supervisor import dev_secrets

PAYLOADS = Path(__file__).resolve().parents[1] / "fixtures" / "payloads"
DEV = dev_secrets()


def payload(name: str) -> bytes:
    """An example body (tests/fixtures/payloads, a copy of the spec's), byte for byte."""
    return (PAYLOADS / name).read_bytes()


def hmac_signature(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def payments_body(claims: dict[str, Any], secret: str, **extra_claims: Any) -> bytes:
    token = jwt.encode(
        {**claims, "iat": int(time.time()), **extra_claims}, secret, algorithm="HS256"
    )
    return json.dumps({"token": token}).encode()


def unsigned_jwt(claims: dict[str, Any]) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(claims).encode())}."


def standard_webhooks_headers(
    body: bytes, secret: str, msg_id: str = "msg_1", timestamp: int | None = None
) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": f"v1,{base64.b64encode(signed).decode()}",
    }
