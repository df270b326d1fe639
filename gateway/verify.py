"""Is this request really from the provider? One verifier per source method.

Every comparison is constant time (``hmac.compare_digest``). Failures carry a
short, fixed ``reason`` for logs and metrics; no reason ever includes a secret,
a signature or a token. A source holding two secrets (rotation) accepts either.

Unauthenticated work must stay cheap, so each verifier also has a ``precheck``
that runs on the URL and headers alone, before a byte of the body is read: a
wrong query token is refused there outright, a missing or malformed signature
header or a stale Standard Webhooks timestamp too. Only what needs the body
(an HMAC over it, a JWT inside it) waits for it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import time
import warnings
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import jwt
from hookline.core.sources import Source
from jwt.warnings import InsecureKeyLengthWarning
from standardwebhooks.webhooks import Webhook

log = logging.getLogger(__name__)

# The provider chooses its key; we warn once per source at start instead.
warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)

_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
#: A compact JWT: three unpadded base64url segments (for HS256 the last is a 32-byte MAC).
_COMPACT_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.([A-Za-z0-9_-]*)")
_MAX_TOKEN_CHARS = 8192
JWT_ALGORITHM = "HS256"
#: Clock skew allowed on a JWT's nbf, iat and exp.
JWT_LEEWAY_S = 60
#: Standard Webhooks' tolerance (the reference verifier's), checked before the body.
STANDARD_WEBHOOKS_TOLERANCE_S = 5 * 60
#: A payments body is {"token": "<JWT>"}: a few kilobytes at most. Reading (and
#: parsing) a mebibyte before the token can be checked was the cheapest way to
#: burn the gateway's CPU, so such sources get this limit unless configured.
JWT_BODY_LIMIT = 16 * 1024

#: Verification inputs that must appear once: with two, one reader would take
#: the first and another the last, and only one of them is checked.
SINGLE_QUERY_PARAMETERS = ("token",)
SINGLE_HEADERS = ("x-signature", "webhook-id", "webhook-timestamp", "webhook-signature")

#: The WWW-Authenticate challenge a 401 carries (RFC 9110 requires one), per method.
CHALLENGES = {
    "token": 'Token realm="hookline", param="token"',
    "hmac-sha256": 'HMAC-SHA256 realm="hookline", header="X-Signature"',
    "jwt-hs256": 'JWT realm="hookline", alg="HS256"',
    "standard-webhooks": 'Standard-Webhooks realm="hookline"',
    "none": 'IP realm="hookline"',
}


class VerificationFailed(Exception):
    """The request is not provably from the source's provider."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Incoming(NamedTuple):
    """What a verifier may look at (a tuple: built twice per request, it must be cheap)."""

    body: bytes
    headers: Mapping[str, str]
    query: Mapping[str, str]
    document: Any = None  # parsed JSON; only jwt-hs256 needs it


Check = Callable[[Incoming], None]


def _nothing(incoming: Incoming) -> None:
    return None


@dataclass(frozen=True)
class Verifier:
    method: str
    check: Check
    #: jwt-hs256 reads the token from the JSON body, so the body is parsed first;
    #: every other method authenticates the raw bytes before anything parses them.
    needs_document: bool = False
    #: What the URL and headers alone can refuse (``Incoming.body`` is empty).
    precheck: Check = _nothing
    #: The precheck is the whole verification (a query token): the body is
    #: read only for a sender already proven authentic.
    complete_before_body: bool = False

    def __call__(self, incoming: Incoming) -> None:
        self.check(incoming)

    @property
    def challenge(self) -> str:
        return CHALLENGES[self.method]


def repeated_input(repeated_query: Container[str], repeated_headers: Container[str]) -> str | None:
    """The name of a verification input given more than once, or None.

    Takes the names that appeared more than once (query parameters, and
    lower-cased header names), as the request's head is read in one pass.
    """
    for name in SINGLE_QUERY_PARAMETERS:
        if name in repeated_query:
            return f"query parameter {name!r}"
    for name in SINGLE_HEADERS:
        if name in repeated_headers:
            return f"header {name!r}"
    return None


def canonical_base64(text: str, urlsafe: bool = False) -> bytes | None:
    """``text`` decoded if it is the one canonical base64 spelling of its bytes, else None.

    Lenient decoders skip characters outside the alphabet, accept extra
    padding and ignore trailing bits: many spellings then decode to the same
    signature. A signature is accepted in one spelling only.
    """
    try:
        if urlsafe:
            if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
                return None
            decoded = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            again = base64.urlsafe_b64encode(decoded).rstrip(b"=")
        else:
            decoded = base64.b64decode(text, validate=True)
            again = base64.b64encode(decoded)
    except (binascii.Error, ValueError):
        return None
    return decoded if again == text.encode("ascii") else None


def _any_equal(expected: list[bytes], received: bytes) -> bool:
    # No short-circuit: the time taken does not tell which secret matched.
    matched = False
    for candidate in expected:
        matched |= hmac.compare_digest(candidate, received)
    return matched


def _token(secrets: tuple[bytes, ...]) -> Check:
    expected = list(secrets)

    def check(incoming: Incoming) -> None:
        received = incoming.query.get("token")
        if not received:
            raise VerificationFailed("missing_token")
        if len(received) > _MAX_TOKEN_CHARS:
            raise VerificationFailed("bad_token")
        if not _any_equal(expected, received.encode("utf-8", "surrogateescape")):
            raise VerificationFailed("bad_token")

    return check


def _signature_header(incoming: Incoming) -> str:
    received = incoming.headers.get("x-signature")
    if not received:
        raise VerificationFailed("missing_signature")
    if not _HEX_SHA256.fullmatch(received):
        raise VerificationFailed("malformed_signature")
    return received


def _hmac_precheck(incoming: Incoming) -> None:
    _signature_header(incoming)


def _hmac_sha256(secrets: tuple[bytes, ...]) -> Check:
    def check(incoming: Incoming) -> None:
        received = _signature_header(incoming)
        expected = [
            hmac.new(secret, incoming.body, hashlib.sha256).hexdigest().encode()
            for secret in secrets
        ]
        if not _any_equal(expected, received.encode()):
            raise VerificationFailed("bad_signature")

    return check


def _jwt_hs256(secrets: tuple[bytes, ...], retry_horizon_s: float) -> Check:
    """HS256 only; ``exp`` extended by the retry horizon, everything else strict.

    The provider re-sends the same signed token for days (seed 002: 72 h), so
    a token past its ``exp`` is still a genuine notification: refusing it
    would lose the provider's retries. A replay inside the horizon is harmless
    (the workers drop it as a duplicate). The signature, the algorithm and
    ``nbf`` are checked as strictly as ever.
    """

    def check(incoming: Incoming) -> None:
        token = incoming.document.get("token") if isinstance(incoming.document, dict) else None
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_CHARS:
            raise VerificationFailed("missing_jwt")
        shape = _COMPACT_JWT.fullmatch(token) if token.isascii() else None
        if shape is None:
            raise VerificationFailed("malformed_jwt")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise VerificationFailed("malformed_jwt") from None
        # Pinned before any key is used: 'none', HS512, RS256... never reach decode.
        if header.get("alg") != JWT_ALGORITHM:
            raise VerificationFailed("jwt_algorithm")
        # One spelling of the MAC only ("=" appended or stray bits: refused).
        if len(canonical_base64(shape.group(1), urlsafe=True) or b"") != 32:
            raise VerificationFailed("malformed_jwt")
        for secret in secrets:
            try:
                claims = jwt.decode(
                    token,
                    secret,
                    algorithms=[JWT_ALGORITHM],
                    leeway=JWT_LEEWAY_S,
                    options={"verify_exp": False},
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError:
                raise VerificationFailed("bad_jwt") from None
            _within_retry_horizon(claims.get("exp"), retry_horizon_s)
            return
        raise VerificationFailed("bad_signature")

    return check


def _within_retry_horizon(exp: Any, retry_horizon_s: float) -> None:
    if exp is None:
        return
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise VerificationFailed("bad_jwt")
    if time.time() > exp + retry_horizon_s + JWT_LEEWAY_S:
        raise VerificationFailed("jwt_expired")


_STANDARD_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def _standard_headers(incoming: Incoming) -> dict[str, str]:
    """The three headers, each signature ``version,base64`` with v1's in canonical base64."""
    headers = {name: incoming.headers.get(name, "") for name in _STANDARD_HEADERS}
    if not all(headers.values()):
        raise VerificationFailed("missing_signature")
    for entry in headers["webhook-signature"].split(" "):
        version, comma, signature = entry.partition(",")
        if not comma or (version == "v1" and canonical_base64(signature) is None):
            raise VerificationFailed("malformed_signature")
    return headers


def _standard_webhooks_precheck(incoming: Incoming) -> None:
    """Headers present, signatures canonical, the timestamp fresh: refusable before the body."""
    timestamp = _standard_headers(incoming)["webhook-timestamp"]
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
        raise VerificationFailed("bad_timestamp")
    if abs(time.time() - int(timestamp)) > STANDARD_WEBHOOKS_TOLERANCE_S:
        raise VerificationFailed("bad_timestamp")


def _standard_webhooks(secrets: tuple[bytes, ...]) -> Check:
    # The reference implementation (5-minute tolerance, whsec_ secrets).
    webhooks = [Webhook(secret.decode()) for secret in secrets]

    def check(incoming: Incoming) -> None:
        headers = _standard_headers(incoming)
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


def verifier_for(source: Source) -> Verifier:
    """Build the verifier once per source, at start (secrets decoded once)."""
    method = source.verify
    if method == "none":
        log.warning("source %s accepts unverified webhooks (verify = 'none')", source.name)
        return Verifier(method, _nothing)
    if method in ("hmac-sha256", "jwt-hs256") and any(len(s) < 32 for s in source.secrets):
        log.warning("source %s: a secret is shorter than 32 bytes", source.name)
    if method == "token":
        token = _token(source.secrets)
        return Verifier(method, token, precheck=token, complete_before_body=True)
    if method == "hmac-sha256":
        return Verifier(method, _hmac_sha256(source.secrets), precheck=_hmac_precheck)
    if method == "jwt-hs256":
        horizon_s = source.retry_horizon_ms / 1000
        return Verifier(method, _jwt_hs256(source.secrets, horizon_s), needs_document=True)
    if method == "standard-webhooks":
        return Verifier(
            method, _standard_webhooks(source.secrets), precheck=_standard_webhooks_precheck
        )
    raise ValueError(f"unknown verification method {method!r}")
