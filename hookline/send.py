"""``hookline send SOURCE FILE``: one delivery, signed the way the source's provider signs it.

For trying a gateway by hand. The secret is the source's first (current) one:
with ``HOOKLINE_SOURCES`` unset, the dev sources file and the development
secrets ``hookline run`` uses (variables already set win); otherwise the
sources file and the environment, as the gateway reads them. Invariant: the
bytes of FILE are the body sent, unchanged (no newline stripped, nothing
re-encoded), except for a ``jwt-hs256`` source, where FILE holds the claims
and the body is ``{"token": "<HS256 JWT of those claims>"}``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from hookline.core.settings import DEV_SOURCES, Settings, SettingsError
from hookline.core.sources import Source, SourcesError, load_sources

DEFAULT_URL = "http://127.0.0.1:8000"


def add_parser(sub: Any, epilog: str) -> None:
    parser = sub.add_parser(
        "send",
        help="POST a file to the gateway as SOURCE's provider would, signed; print the answer",
        description=(
            "POST FILE to URL/webhooks/SOURCE, signed with the source's method and secret "
            "(token: ?token=; hmac-sha256: X-Signature; standard-webhooks: webhook-* headers; "
            'jwt-hs256: FILE holds the claims, sent as {"token": JWT}). The body is FILE\'s '
            "bytes, unchanged. Without HOOKLINE_SOURCES: the dev sources and dev secrets, as "
            "`hookline run` uses them. Prints the status and the answer; exit 0 on 2xx, else 1."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=epilog,
    )
    parser.add_argument("source", metavar="SOURCE", help="a source name of the sources file")
    parser.add_argument("file", metavar="FILE", type=Path, help="the body (claims for jwt-hs256)")
    parser.add_argument(
        "--url", default=DEFAULT_URL, help=f"the gateway's base URL (default {DEFAULT_URL})"
    )
    parser.set_defaults(func=cmd_send)


def _fail(message: str) -> SystemExit:
    return SystemExit(f"hookline send: {message}")


def _sources() -> dict[str, Source]:
    try:
        path = Settings.from_env().sources_path
        if path is None:
            from hookline.supervisor import dev_secrets

            env = {**dev_secrets(), **os.environ}
            return load_sources(DEV_SOURCES, env, with_secrets=True)
        return load_sources(path, with_secrets=True)
    except (SourcesError, SettingsError) as exc:
        raise _fail(str(exc)) from None


def signed_request(
    source: Source, content: bytes, now: float | None = None
) -> tuple[dict[str, str], dict[str, str], bytes]:
    """(query, headers, body) of a delivery of ``content`` to ``source``."""
    now = time.time() if now is None else now
    secret = source.secrets[0] if source.secrets else b""
    query: dict[str, str] = {}
    headers = {"content-type": "application/json"}
    body = content
    if source.verify == "token":
        query["token"] = secret.decode()
    elif source.verify == "hmac-sha256":
        headers["x-signature"] = hmac.new(secret, body, hashlib.sha256).hexdigest()
    elif source.verify == "jwt-hs256":
        import jwt

        try:
            claims = json.loads(content)
        except ValueError as exc:
            raise _fail(f"a jwt-hs256 source takes a JSON object of claims: {exc}") from None
        if not isinstance(claims, dict):
            raise _fail("a jwt-hs256 source takes a JSON object of claims")
        claims.setdefault("iat", int(now))
        token = jwt.encode(claims, secret, algorithm="HS256")
        body = json.dumps({"token": token}).encode()
    elif source.verify == "standard-webhooks":
        msg_id, timestamp = f"msg_{uuid.uuid4().hex}", str(int(now))
        key = base64.b64decode(secret.decode().removeprefix("whsec_"))
        signed = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
        headers |= {
            "webhook-id": msg_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": f"v1,{base64.b64encode(signed.digest()).decode()}",
        }
    return query, headers, body


def cmd_send(args: argparse.Namespace) -> int:
    sources = _sources()
    source = sources.get(args.source)
    if source is None:
        raise _fail(f"no source {args.source!r}; the sources are {', '.join(sorted(sources))}")
    try:
        content = args.file.read_bytes()
    except OSError as exc:
        raise _fail(f"cannot read {args.file}: {exc.strerror}") from None
    query, headers, body = signed_request(source, content)
    url = f"{args.url.rstrip('/')}/webhooks/{urllib.parse.quote(source.name)}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            status, answer = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, answer = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _fail(f"cannot reach {args.url}: {reason}") from None
    print(status, answer.decode(errors="replace"), flush=True)
    return 0 if 200 <= status < 300 else 1
