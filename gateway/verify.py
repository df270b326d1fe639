"""Is this request really from the provider? One verifier per source method.

Every comparison is constant time (``hmac.compare_digest``). Failures carry a
short, fixed ``reason`` for logs and metrics; no reason ever includes a secret,
a signature or a token. A source holding two secrets (rotation) accepts either.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.warnings import InsecureKeyLengthWarning
from standardwebhooks.webhooks import Webhook

from hookline.sources import Source

log = logging.getLogger(__name__)

# The provider chooses its key; we warn once per source at start instead.
warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)

_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_TOKEN_CHARS = 8192
JWT_ALGORITHM = "HS256"


class VerificationFailed(Exception):
    """The request is not provably from the source's provider."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Incoming:
    """What a verifier may look at."""

    body: bytes
    headers: Mapping[str, str]
    query: Mapping[str, str]
    document: Any = None  # parsed JSON; only jwt-hs256 needs it


Check = Callable[[Incoming], None]


@dataclass(frozen=True)
class Verifier:
    method: str
    check: Check
    #: jwt-hs256 reads the token from the JSON body, so the body is parsed first;
    #: every other method authenticates the raw bytes before anything parses them.
    needs_document: bool = False

    def __call__(self, incoming: Incoming) -> None:
        self.check(incoming)


def _any_equal(expected: list[bytes], received: bytes) -> bool:
    # No short-circuit: the time taken does not tell which secret matched.
    matched = False
    for candidate in expected:
        matched |= hmac.compare_digest(candidate, received)
    return matched


def _token(secrets: tuple[bytes, ...]) -> Check:
    def check(incoming: Incoming) -> None:
        received = incoming.query.get("token")
        if not received:
            raise VerificationFailed("missing_token")
        if len(received) > _MAX_TOKEN_CHARS:
            raise VerificationFailed("bad_token")
        if not _any_equal(list(secrets), received.encode("utf-8", "surrogateescape")):
            raise VerificationFailed("bad_token")

    return check


def _hmac_sha256(secrets: tuple[bytes, ...]) -> Check:
    def check(incoming: Incoming) -> None:
        received = incoming.headers.get("x-signature")
        if not received:
            raise VerificationFailed("missing_signature")
        if not _HEX_SHA256.fullmatch(received):
            raise VerificationFailed("malformed_signature")
        expected = [
            hmac.new(secret, incoming.body, hashlib.sha256).hexdigest().encode()
            for secret in secrets
        ]
        if not _any_equal(expected, received.encode()):
            raise VerificationFailed("bad_signature")

    return check


def _jwt_hs256(secrets: tuple[bytes, ...]) -> Check:
    def check(incoming: Incoming) -> None:
        token = incoming.document.get("token") if isinstance(incoming.document, dict) else None
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_CHARS:
            raise VerificationFailed("missing_jwt")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise VerificationFailed("malformed_jwt") from None
        # Pinned before any key is used: 'none', HS512, RS256... never reach decode.
        if header.get("alg") != JWT_ALGORITHM:
            raise VerificationFailed("jwt_algorithm")
        for secret in secrets:
            try:
                jwt.decode(token, secret, algorithms=[JWT_ALGORITHM], leeway=60)
                return
            except jwt.ExpiredSignatureError:
                raise VerificationFailed("jwt_expired") from None
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError:
                raise VerificationFailed("bad_jwt") from None
        raise VerificationFailed("bad_signature")

    return check


def _standard_webhooks(secrets: tuple[bytes, ...]) -> Check:
    # The reference implementation (5-minute tolerance, whsec_ secrets).
    webhooks = [Webhook(secret.decode()) for secret in secrets]

    def check(incoming: Incoming) -> None:
        headers = {
            name: incoming.headers.get(name, "")
            for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
        }
        if not all(headers.values()):
            raise VerificationFailed("missing_signature")
        reason = "bad_signature"
        for webhook in webhooks:
            try:
                webhook.verify(incoming.body, headers, json_parse=False)
                return
            except Exception as exc:  # malformed headers raise ValueError etc. too
                if "timestamp" in str(exc).lower():
                    reason = "bad_timestamp"
        raise VerificationFailed(reason)

    return check


def _none(incoming: Incoming) -> None:
    return None


def verifier_for(source: Source) -> Verifier:
    """Build the verifier once per source, at start (secrets decoded once)."""
    method = source.verify
    if method == "none":
        log.warning("source %s accepts unverified webhooks (verify = 'none')", source.name)
        return Verifier(method, _none)
    if method in ("hmac-sha256", "jwt-hs256") and any(len(s) < 32 for s in source.secrets):
        log.warning("source %s: a secret is shorter than 32 bytes", source.name)
    if method == "token":
        return Verifier(method, _token(source.secrets))
    if method == "hmac-sha256":
        return Verifier(method, _hmac_sha256(source.secrets))
    if method == "jwt-hs256":
        return Verifier(method, _jwt_hs256(source.secrets), needs_document=True)
    if method == "standard-webhooks":
        return Verifier(method, _standard_webhooks(source.secrets))
    raise ValueError(f"unknown verification method {method!r}")
