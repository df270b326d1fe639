"""gateway/verify.py: one verifier per method (PRODUCT.md section 1)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest
from hookline.gateway.verify import (
    CHALLENGES,
    Incoming,
    VerificationFailed,
    Verifier,
    repeated_input,
    verifier_for,
)
from hookline.gateway.webhooks import RequestHead, read_head

from tests.support.signing import standard_webhooks_headers
from tests.unit.helpers import payload, payload_bytes, source

TOKEN = "partner-token-0123456789abcdef"
TOKEN_NEXT = "partner-token-next-fedcba9876543210"
HMAC_KEY = "vignette-sales-hmac-key-0123456789abcdef"
HMAC_KEY_NEXT = "vignette-sales-hmac-key-next-0123456789"
JWT_KEY = "payments-jwt-key-0123456789abcdef-0123"
JWT_KEY_NEXT = "payments-jwt-key-next-0123456789abcdef"
WHSEC = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
WHSEC_NEXT = "whsec_" + base64.b64encode(b"fedcba9876543210fedcba9876543210").decode()
ALL_SECRETS = (TOKEN, TOKEN_NEXT, HMAC_KEY, HMAC_KEY_NEXT, JWT_KEY, JWT_KEY_NEXT, WHSEC, WHSEC_NEXT)


def make(method: str, *secrets: str, kind: str = "partner") -> Verifier:
    return verifier_for(
        source(kind=kind, verify=method, secrets=tuple(s.encode() for s in secrets))
    )


def incoming(
    body: bytes = b"{}",
    headers: Mapping[str, str] | None = None,
    query: Mapping[str, str] | None = None,
    document: Any = None,
) -> Incoming:
    return Incoming(body=body, headers=headers or {}, query=query or {}, document=document)


def refused(verifier: Verifier, request: Incoming) -> str:
    """Assert the request is refused with VerificationFailed; return the reason."""
    with pytest.raises(VerificationFailed) as info:
        verifier(request)
    failure = info.value
    assert failure.reason
    for text in (failure.reason, str(failure), repr(failure)):
        for secret in ALL_SECRETS:
            assert secret not in text
            assert secret.removeprefix("whsec_") not in text
    return failure.reason


# -- token ----------------------------------------------------------------------


def test_token_right() -> None:
    make("token", TOKEN)(incoming(query={"token": TOKEN}))


@pytest.mark.parametrize(
    "query",
    [
        {"token": "wrong"},
        {"token": TOKEN[:-1]},
        {"token": TOKEN + "x"},
        {"token": TOKEN.upper()},
        {"token": ""},
        {},
        {"secret": TOKEN},
        {"token": TOKEN_NEXT},
        {"token": "x" * 100_000},
    ],
)
def test_token_refused(query: dict[str, str]) -> None:
    refused(make("token", TOKEN), incoming(query=query))


def test_token_in_header_or_body_is_not_enough() -> None:
    verifier = make("token", TOKEN)
    refused(
        verifier, incoming(body=json.dumps({"token": TOKEN}).encode(), headers={"token": TOKEN})
    )


def test_token_rotation_accepts_both() -> None:
    verifier = make("token", TOKEN, TOKEN_NEXT)
    verifier(incoming(query={"token": TOKEN}))
    verifier(incoming(query={"token": TOKEN_NEXT}))
    refused(verifier, incoming(query={"token": "neither"}))


def test_token_reason_distinguishes_missing_from_wrong() -> None:
    verifier = make("token", TOKEN)
    assert refused(verifier, incoming()) != refused(verifier, incoming(query={"token": "nope"}))


# -- hmac-sha256 -----------------------------------------------------------------

SALE = payload_bytes("vignette-sales-success.json")


def sign(body: bytes, key: str) -> str:
    return hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def test_hmac_right() -> None:
    make("hmac-sha256", HMAC_KEY)(incoming(SALE, {"x-signature": sign(SALE, HMAC_KEY)}))


def test_hmac_over_empty_body() -> None:
    make("hmac-sha256", HMAC_KEY)(incoming(b"", {"x-signature": sign(b"", HMAC_KEY)}))


@pytest.mark.parametrize(
    "signature",
    [
        sign(SALE, "another-key-0123456789abcdef0123456789"),
        sign(SALE, HMAC_KEY).upper(),
        sign(SALE, HMAC_KEY)[:-1],
        sign(SALE, HMAC_KEY) + "0",
        "z" * 64,
        "sha256=" + sign(SALE, HMAC_KEY),
        " " + sign(SALE, HMAC_KEY),
        base64.b64encode(bytes.fromhex(sign(SALE, HMAC_KEY))).decode(),
        "",
    ],
)
def test_hmac_refused_signatures(signature: str) -> None:
    refused(make("hmac-sha256", HMAC_KEY), incoming(SALE, {"x-signature": signature}))


def test_hmac_missing_header() -> None:
    refused(make("hmac-sha256", HMAC_KEY), incoming(SALE, {"x-other": sign(SALE, HMAC_KEY)}))


def test_hmac_body_changed_by_one_byte() -> None:
    verifier = make("hmac-sha256", HMAC_KEY)
    signature = sign(SALE, HMAC_KEY)
    for position in (0, len(SALE) // 2, len(SALE) - 1):
        changed = bytearray(SALE)
        changed[position] ^= 0x01
        refused(verifier, incoming(bytes(changed), {"x-signature": signature}))
    refused(verifier, incoming(SALE + b" ", {"x-signature": signature}))


def test_hmac_is_over_raw_bytes_not_reserialized_json() -> None:
    verifier = make("hmac-sha256", HMAC_KEY)
    reserialized = json.dumps(json.loads(SALE)).encode()
    assert reserialized != SALE
    refused(verifier, incoming(reserialized, {"x-signature": sign(SALE, HMAC_KEY)}))
    verifier(incoming(reserialized, {"x-signature": sign(reserialized, HMAC_KEY)}))


def test_hmac_rotation_accepts_both() -> None:
    verifier = make("hmac-sha256", HMAC_KEY, HMAC_KEY_NEXT)
    verifier(incoming(SALE, {"x-signature": sign(SALE, HMAC_KEY)}))
    verifier(incoming(SALE, {"x-signature": sign(SALE, HMAC_KEY_NEXT)}))
    refused(verifier, incoming(SALE, {"x-signature": sign(SALE, "third-key-0123456789abcdef")}))


# -- jwt-hs256 -------------------------------------------------------------------

CLAIMS = payload("payments-claims.json")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], claims: dict[str, Any], key: str | None) -> str:
    """A JWT with any header, signed with HMAC-SHA256 (or unsigned when key is None)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    if key is None:
        return signing_input + "."
    mac = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def jwt_request(token: Any) -> Incoming:
    document = {"token": token}
    return incoming(json.dumps(document).encode(), document=document)


def payments_verifier(*keys: str) -> Verifier:
    return make("jwt-hs256", *keys, kind="payments")


def test_jwt_right() -> None:
    verifier = payments_verifier(JWT_KEY)
    assert verifier.needs_document
    verifier(jwt_request(jwt.encode(CLAIMS, JWT_KEY, algorithm="HS256")))
    # The hand-made signer agrees with pyjwt, so the forgeries below are only wrong where meant.
    verifier(jwt_request(forged({"alg": "HS256", "typ": "JWT"}, CLAIMS, JWT_KEY)))


def test_jwt_with_fresh_exp_is_accepted() -> None:
    now = int(time.time())
    token = jwt.encode({**CLAIMS, "iat": now, "exp": now + 300}, JWT_KEY, algorithm="HS256")
    payments_verifier(JWT_KEY)(jwt_request(token))


@pytest.mark.parametrize(
    "token",
    [
        forged({"alg": "none", "typ": "JWT"}, CLAIMS, None),
        forged({"alg": "none", "typ": "JWT"}, CLAIMS, JWT_KEY),
        forged({"alg": "None", "typ": "JWT"}, CLAIMS, JWT_KEY),
        forged({"typ": "JWT"}, CLAIMS, JWT_KEY),
        jwt.encode(CLAIMS, JWT_KEY, algorithm="HS512"),
        jwt.encode(CLAIMS, JWT_KEY, algorithm="HS384"),
        forged({"alg": "HS512", "typ": "JWT"}, CLAIMS, JWT_KEY),
        forged({"alg": "RS256", "typ": "JWT"}, CLAIMS, JWT_KEY),
        forged({"alg": "ES256", "typ": "JWT"}, CLAIMS, JWT_KEY),
    ],
    ids=[
        "none-unsigned",
        "none-signed",
        "None",
        "no-alg",
        "HS512",
        "HS384",
        "HS512-forged",
        "RS256-forged",
        "ES256-forged",
    ],
)
def test_jwt_other_algorithms_refused(token: str) -> None:
    refused(payments_verifier(JWT_KEY), jwt_request(token))


def test_jwt_wrong_secret() -> None:
    token = jwt.encode(CLAIMS, "not-the-payments-key-0123456789abcdef", algorithm="HS256")
    refused(payments_verifier(JWT_KEY), jwt_request(token))


def test_jwt_tampered_claims() -> None:
    header, _, signature = jwt.encode(CLAIMS, JWT_KEY, algorithm="HS256").split(".")
    claims = b64url(json.dumps({**CLAIMS, "paymentStatus": "failed"}).encode())
    refused(payments_verifier(JWT_KEY), jwt_request(f"{header}.{claims}.{signature}"))


def test_jwt_rotation_accepts_both() -> None:
    verifier = payments_verifier(JWT_KEY, JWT_KEY_NEXT)
    verifier(jwt_request(jwt.encode(CLAIMS, JWT_KEY, algorithm="HS256")))
    verifier(jwt_request(jwt.encode(CLAIMS, JWT_KEY_NEXT, algorithm="HS256")))
    third = jwt.encode(CLAIMS, "third-payments-key-0123456789abcdef", algorithm="HS256")
    refused(verifier, jwt_request(third))


HOUR = 3600
DAY = 24 * HOUR


def expiring(key: str, exp_offset_s: int, **claims: Any) -> Incoming:
    now = int(time.time())
    body = {**CLAIMS, "iat": now + exp_offset_s - HOUR, "exp": now + exp_offset_s, **claims}
    return jwt_request(jwt.encode(body, key, algorithm="HS256"))


def horizon_verifier(horizon_ms: int | None, *keys: str) -> Verifier:
    extra = {} if horizon_ms is None else {"retry_horizon_ms": horizon_ms}
    return verifier_for(
        source(
            kind="payments",
            verify="jwt-hs256",
            secrets=tuple(k.encode() for k in keys),
            **extra,
        )
    )


@pytest.mark.parametrize("key", [JWT_KEY, JWT_KEY_NEXT])
@pytest.mark.parametrize("expired_for_s", [HOUR, 72 * HOUR, 7 * DAY - HOUR])
def test_jwt_retry_past_exp_inside_the_default_horizon_is_accepted(
    key: str, expired_for_s: int
) -> None:
    # Seed 002 re-sends the same signed token for up to 72 h: those retries must get through.
    horizon_verifier(None, JWT_KEY, JWT_KEY_NEXT)(expiring(key, -expired_for_s))


@pytest.mark.parametrize("key", [JWT_KEY, JWT_KEY_NEXT])
def test_jwt_past_the_default_seven_day_horizon_is_refused(key: str) -> None:
    verifier = horizon_verifier(None, JWT_KEY, JWT_KEY_NEXT)
    assert refused(verifier, expiring(key, -(7 * DAY + HOUR))) == "jwt_expired"


def test_jwt_horizon_is_the_sources_setting() -> None:
    verifier = horizon_verifier(2 * HOUR * 1000, JWT_KEY)
    verifier(expiring(JWT_KEY, -HOUR))
    assert refused(verifier, expiring(JWT_KEY, -3 * HOUR)) == "jwt_expired"


def test_jwt_not_yet_valid_stays_strict_whatever_the_horizon() -> None:
    verifier = horizon_verifier(30 * DAY * 1000, JWT_KEY)
    now = int(time.time())
    assert refused(verifier, expiring(JWT_KEY, HOUR, nbf=now + HOUR)) == "bad_jwt"
    verifier(expiring(JWT_KEY, HOUR, nbf=now - 10))


@pytest.mark.parametrize("exp", ["tomorrow", "1700000000", True, [1]])
def test_jwt_exp_that_is_not_a_number_is_refused(exp: Any) -> None:
    token = jwt.encode({**CLAIMS, "exp": exp}, JWT_KEY, algorithm="HS256")
    refused(payments_verifier(JWT_KEY), jwt_request(token))


def test_jwt_expired_and_wrong_key_is_still_refused() -> None:
    now = int(time.time())
    token = jwt.encode({**CLAIMS, "exp": now - 3600}, "wrong-key-0123456789abcdef0123456", "HS256")
    assert refused(payments_verifier(JWT_KEY), jwt_request(token)) == "bad_signature"


def test_jwt_expired_with_tampered_claims_is_refused_inside_the_horizon() -> None:
    header, _, signature = jwt.encode(
        {**CLAIMS, "exp": int(time.time()) - HOUR}, JWT_KEY, algorithm="HS256"
    ).split(".")
    claims = b64url(json.dumps({**CLAIMS, "paymentStatus": "failed"}).encode())
    reason = refused(payments_verifier(JWT_KEY), jwt_request(f"{header}.{claims}.{signature}"))
    assert reason == "bad_signature"


def test_jwt_expired_with_another_algorithm_is_refused_inside_the_horizon() -> None:
    token = jwt.encode({**CLAIMS, "exp": int(time.time()) - HOUR}, JWT_KEY, algorithm="HS512")
    assert refused(payments_verifier(JWT_KEY), jwt_request(token)) == "jwt_algorithm"


@pytest.mark.parametrize("token", ["\ud800.a.b", "\u00e9yJ.a.b", "a.b.\u2028"])
def test_jwt_token_that_is_not_ascii_is_malformed(token: str) -> None:
    assert refused(payments_verifier(JWT_KEY), jwt_request(token)) == "malformed_jwt"


@pytest.mark.parametrize(
    "document",
    [None, {}, {"token": ""}, {"token": 42}, {"token": None}, {"jwt": "x"}, ["token"]],
)
def test_jwt_missing_token(document: Any) -> None:
    refused(payments_verifier(JWT_KEY), incoming(b"{}", document=document))


@pytest.mark.parametrize("token", ["not-a-jwt", "a.b.c", "...", "x" * 10_000])
def test_jwt_malformed_token(token: str) -> None:
    refused(payments_verifier(JWT_KEY), jwt_request(token))


# -- standard-webhooks ------------------------------------------------------------


def std_headers(
    body: bytes, secret: str = WHSEC, msg_id: str = "msg_1", timestamp: int | None = None
) -> dict[str, str]:
    return standard_webhooks_headers(body, secret, msg_id, timestamp)


BODY = payload_bytes("envelope-refund.json")


def test_standard_webhooks_right() -> None:
    make("standard-webhooks", WHSEC)(incoming(BODY, std_headers(BODY)))


def test_standard_webhooks_several_signatures_one_right() -> None:
    headers = std_headers(BODY)
    headers["webhook-signature"] = "v1,AAAA " + headers["webhook-signature"]
    make("standard-webhooks", WHSEC)(incoming(BODY, headers))


def test_standard_webhooks_rotation_accepts_both() -> None:
    verifier = make("standard-webhooks", WHSEC, WHSEC_NEXT)
    verifier(incoming(BODY, std_headers(BODY, WHSEC)))
    verifier(incoming(BODY, std_headers(BODY, WHSEC_NEXT)))


def test_standard_webhooks_tampered_body() -> None:
    refused(make("standard-webhooks", WHSEC), incoming(BODY + b" ", std_headers(BODY)))


def test_standard_webhooks_wrong_secret() -> None:
    refused(make("standard-webhooks", WHSEC), incoming(BODY, std_headers(BODY, WHSEC_NEXT)))


def test_standard_webhooks_other_message_id() -> None:
    headers = dict(std_headers(BODY), **{"webhook-id": "msg_2"})
    refused(make("standard-webhooks", WHSEC), incoming(BODY, headers))


@pytest.mark.parametrize("age_s", [301, 600, 86_400, -600])
def test_standard_webhooks_timestamp_outside_tolerance(age_s: int) -> None:
    headers = std_headers(BODY, timestamp=int(time.time()) - age_s)
    refused(make("standard-webhooks", WHSEC), incoming(BODY, headers))


def test_standard_webhooks_timestamp_inside_tolerance() -> None:
    headers = std_headers(BODY, timestamp=int(time.time()) - 200)
    make("standard-webhooks", WHSEC)(incoming(BODY, headers))


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_standard_webhooks_missing_header(missing: str) -> None:
    headers = std_headers(BODY)
    del headers[missing]
    refused(make("standard-webhooks", WHSEC), incoming(BODY, headers))


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("webhook-signature", "v1"),
        ("webhook-signature", "garbage"),
        ("webhook-signature", "v1,"),
        ("webhook-signature", ","),
        ("webhook-signature", "v1,!!!not base64!!!"),
        ("webhook-signature", "v1a,AAAA"),
        ("webhook-signature", "v1,a,b"),
        ("webhook-timestamp", "yesterday"),
        ("webhook-timestamp", "1e400"),
    ],
)
def test_standard_webhooks_malformed_headers(header: str, value: str) -> None:
    headers = dict(std_headers(BODY), **{header: value})
    refused(make("standard-webhooks", WHSEC), incoming(BODY, headers))


# -- none ------------------------------------------------------------------------


def test_none_accepts_anything() -> None:
    verifier = make("none")
    assert verifier.method == "none"
    verifier(incoming(b""))
    verifier(incoming(b"\xff", {"x-signature": "bad"}, {"token": "bad"}))


def test_each_method_builds_its_own_verifier() -> None:
    assert make("token", TOKEN).method == "token"
    assert make("hmac-sha256", HMAC_KEY).method == "hmac-sha256"
    assert make("standard-webhooks", WHSEC).method == "standard-webhooks"
    assert not make("token", TOKEN).needs_document
    assert not make("hmac-sha256", HMAC_KEY).needs_document


# -- before the body: prechecks, repeated inputs, challenges ------------------------


def test_token_precheck_is_the_whole_check_and_needs_no_body() -> None:
    verifier = make("token", TOKEN)
    assert verifier.complete_before_body
    verifier.precheck(incoming(b"", query={"token": TOKEN}))
    assert refused_by_precheck(verifier, incoming(b"", query={"token": "wrong"})) == "bad_token"


def refused_by_precheck(verifier: Verifier, request: Incoming) -> str:
    with pytest.raises(VerificationFailed) as info:
        verifier.precheck(request)
    return info.value.reason


def test_hmac_precheck_refuses_a_missing_or_malformed_header_but_not_a_wrong_one() -> None:
    verifier = make("hmac-sha256", HMAC_KEY)
    assert not verifier.complete_before_body
    assert refused_by_precheck(verifier, incoming(b"")) == "missing_signature"
    malformed = incoming(b"", {"x-signature": "zz"})
    assert refused_by_precheck(verifier, malformed) == "malformed_signature"
    # Well-formed but wrong: only the body can tell, so it passes the precheck...
    verifier.precheck(incoming(b"", {"x-signature": sign(b"other", HMAC_KEY)}))
    # ...and the check over the body refuses it.
    refused(verifier, incoming(SALE, {"x-signature": sign(b"other", HMAC_KEY)}))


@pytest.mark.parametrize("age_s", [301, 86_400, -600])
def test_standard_webhooks_precheck_refuses_a_stale_timestamp(age_s: int) -> None:
    headers = std_headers(BODY, timestamp=int(time.time()) - age_s)
    verifier = make("standard-webhooks", WHSEC)
    assert refused_by_precheck(verifier, incoming(b"", headers)) == "bad_timestamp"


@pytest.mark.parametrize("timestamp", ["yesterday", "1e400", "-5", "9" * 40, "", "²", "١٢"])
def test_standard_webhooks_precheck_refuses_a_malformed_timestamp(timestamp: str) -> None:
    headers = dict(std_headers(BODY), **{"webhook-timestamp": timestamp})
    refused_by_precheck(make("standard-webhooks", WHSEC), incoming(b"", headers))


def test_standard_webhooks_precheck_passes_a_fresh_request() -> None:
    make("standard-webhooks", WHSEC).precheck(incoming(b"", std_headers(BODY)))


def test_jwt_precheck_passes_everything_the_body_must_decide() -> None:
    payments_verifier(JWT_KEY).precheck(incoming(b""))


def head_of(query: list[tuple[str, str]], headers: list[tuple[str, str]]) -> RequestHead:
    """The gateway's reading of a request, as the server hands it over (ASGI scope)."""
    # Header names lower-cased, as ASGI servers give them.
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    return read_head({"type": "http", "headers": raw, "query_string": urlencode(query).encode()})


@pytest.mark.parametrize(
    ("query", "headers", "named"),
    [
        ([("token", "forged"), ("token", TOKEN)], [], "token"),
        ([], [("X-Signature", "a" * 64), ("x-signature", "b" * 64)], "x-signature"),
        ([], [("webhook-id", "1"), ("Webhook-Id", "2")], "webhook-id"),
        ([], [("webhook-timestamp", "1"), ("webhook-timestamp", "1")], "webhook-timestamp"),
        ([], [("webhook-signature", "v1,a"), ("webhook-signature", "v1,b")], "webhook-signature"),
    ],
)
def test_a_verification_input_given_twice_is_named(
    query: list[tuple[str, str]], headers: list[tuple[str, str]], named: str
) -> None:
    found = head_of(query, headers).repeated
    assert found is not None
    assert named in found
    assert TOKEN not in found


def test_single_inputs_and_other_repeated_names_are_not_ambiguous() -> None:
    head = head_of(
        [("token", TOKEN), ("other", "1"), ("other", "2")],
        [("x-signature", "a" * 64), ("accept", "a"), ("accept", "b")],
    )
    assert head.repeated is None
    assert head.query["token"] == TOKEN
    assert head.headers["accept"] == "a"  # the first value, as Starlette's Headers.get


def test_a_repeated_token_is_named_before_a_repeated_header() -> None:
    head = head_of([("token", "forged"), ("token", TOKEN)], [("X-Signature", "a" * 64)] * 2)
    # Both repeated: the query parameter is named, as before the headers.
    assert head.repeated == "query parameter 'token'"
    assert repeated_input({"token"}, {"x-signature"}) == head.repeated
    assert repeated_input(set(), {"webhook-id", "x-signature"}) == "header 'x-signature'"


@pytest.mark.parametrize(
    ("method", "secrets"),
    [
        ("token", (TOKEN,)),
        ("hmac-sha256", (HMAC_KEY,)),
        ("standard-webhooks", (WHSEC,)),
        ("none", ()),
    ],
)
def test_every_method_has_a_challenge_without_secrets(method: str, secrets: tuple[str]) -> None:
    challenge = make(method, *secrets).challenge
    assert challenge == CHALLENGES[method]
    assert 'realm="hookline"' in challenge
    assert not [s for s in ALL_SECRETS if s in challenge]
    assert payments_verifier(JWT_KEY).challenge.startswith("JWT ")


# -- strict base64: one spelling of a signature ------------------------------------------------


@pytest.mark.parametrize("mangle", ["append-padding", "spare-bit"])
def test_a_jwt_signature_in_another_base64_spelling_is_malformed(mangle: str) -> None:
    verifier = payments_verifier(JWT_KEY)
    token = jwt.encode(CLAIMS, JWT_KEY, algorithm="HS256")
    verifier(jwt_request(token))  # the canonical spelling passes
    head, claims, signature = token.split(".")
    if mangle == "append-padding":
        mangled = signature + "="
    else:
        # 43 characters carry the 256 bits and 2 spare ones: set a spare bit.
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        mangled = signature[:-1] + alphabet[alphabet.index(signature[-1]) | 1]
    # PyJWT's lenient decoder reads it as the authentic MAC...
    assert jwt.utils.base64url_decode(mangled) == jwt.utils.base64url_decode(signature)
    # ...the gateway refuses it.
    assert refused(verifier, jwt_request(f"{head}.{claims}.{mangled}")) == "malformed_jwt"


@pytest.mark.parametrize("mangle", ["insert-bang", "append-padding", "spare-bit"])
def test_a_standard_webhooks_signature_in_another_base64_spelling_is_malformed(
    mangle: str,
) -> None:
    verifier = make("standard-webhooks", WHSEC)
    headers = std_headers(BODY)
    version, signature = headers["webhook-signature"].split(",")
    assert len(signature) == 44
    if mangle == "insert-bang":
        mangled = signature[:10] + "!" + signature[10:]
    elif mangle == "append-padding":
        mangled = signature + "=="
    else:
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        mangled = signature[:-2] + alphabet[alphabet.index(signature[-2]) | 1] + "="
    # Python's lenient decoder reads every one of these as the authentic signature...
    assert base64.b64decode(mangled) == base64.b64decode(signature)
    headers["webhook-signature"] = f"{version},{mangled}"
    request = incoming(BODY, headers)
    # ...the gateway refuses them, before the body (precheck) and after.
    with pytest.raises(VerificationFailed, match="malformed_signature"):
        verifier.precheck(request)
    assert refused(verifier, request) == "malformed_signature"
