"""The sources file (`HOOKLINE_SOURCES`): one configured webhook URL per source.

Loaded once at start and validated completely, so a bad file stops the
process with a message naming the source and the key, never a 500 later.
Secrets are read from the environment variables the file names; the values
never leave :class:`Source` except into a verifier.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

Kind = Literal["partner", "vignette-sales", "payments", "envelope"]
Environment = Literal["production", "sandbox"]
Method = Literal["token", "hmac-sha256", "jwt-hs256", "standard-webhooks", "none"]

KINDS: tuple[str, ...] = get_args(Kind)
ENVIRONMENTS: tuple[str, ...] = get_args(Environment)
METHODS: tuple[str, ...] = get_args(Method)

#: Retries by every provider fall well inside a week (payments: 72 h, seed 002).
DEFAULT_DEDUP_WINDOW_MS = 7 * 24 * 3600 * 1000
#: Rotation means old and new secret at once; more than that is a mistake.
MAX_SECRETS = 2

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_FIELD_PATH = re.compile(r"^[A-Za-z0-9_$@-]{1,64}(\.[A-Za-z0-9_$@-]{1,64}){0,7}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_KEYS = {
    "kind",
    "environment",
    "verify",
    "secret_env",
    "allow_ips",
    "dedup_window",
    "dedup_ignore",
    "retry_horizon",
    "max_body_bytes",
}
#: Field paths a provider may change on each retry: at most this many, this long.
MAX_IGNORED_FIELDS = 32
#: How long a provider keeps retrying one signed notification (payments: 72 h).
DEFAULT_RETRY_HORIZON_MS = 7 * 24 * 3600 * 1000


class SourcesError(ValueError):
    """The sources file cannot be used; the message says where and why."""


def parse_duration_ms(text: str) -> int:
    """'7d', '72h', '30m', '15s' or '500ms' to milliseconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration like '7d' or '72h': {text!r}")
    return int(float(match.group(1)) * _UNIT_MS[match.group(2)])


@dataclass(frozen=True)
class Source:
    name: str
    kind: Kind
    environment: Environment
    verify: Method
    secrets: tuple[bytes, ...] = field(default=(), repr=False)
    secret_env: tuple[str, ...] = ()
    allow_ips: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    dedup_window_ms: int = DEFAULT_DEDUP_WINDOW_MS
    #: Dotted paths into the body ("meta.sent_at") left out of the dedup key:
    #: fields the provider changes on every retry of the same notification.
    dedup_ignore: tuple[str, ...] = ()
    #: How long after a signed token's ``exp`` an authentic retry is still accepted.
    retry_horizon_ms: int = DEFAULT_RETRY_HORIZON_MS
    #: This source's body limit (413 above it); None: the gateway's default for
    #: its method (HOOKLINE_MAX_BODY_BYTES, 16 KiB for jwt-hs256).
    max_body_bytes: int | None = None

    def ip_allowed(self, host: str | None) -> bool:
        if not self.allow_ips:
            return True
        if host is None:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.allow_ips)


def _source(
    name: str, table: Mapping[str, Any], env: Mapping[str, str], with_secrets: bool
) -> Source:
    where = f"[sources.{name}]"
    if not _NAME.match(name):
        raise SourcesError(f"{where}: name must match {_NAME.pattern} (it is a URL segment)")
    unknown = set(table) - _KEYS
    if unknown:
        raise SourcesError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    kind = table.get("kind")
    if kind not in KINDS:
        raise SourcesError(f"{where}: kind must be one of {KINDS}, got {kind!r}")
    environment = table.get("environment")
    if environment not in ENVIRONMENTS:
        raise SourcesError(
            f"{where}: environment must be one of {ENVIRONMENTS}, got {environment!r}"
        )
    if "verify" not in table:
        raise SourcesError(f"{where}: 'verify' is required (write verify = \"none\" to disable it)")
    method = table["verify"]
    if method not in METHODS:
        raise SourcesError(f"{where}: verify must be one of {METHODS}, got {method!r}")
    if method == "jwt-hs256" and kind != "payments":
        raise SourcesError(f"{where}: jwt-hs256 needs a body carrying a JWT (kind 'payments')")

    names = table.get("secret_env", ())
    names = (names,) if isinstance(names, str) else names
    if not _strings(names):
        raise SourcesError(f"{where}: secret_env must be a variable name or a list of them")
    names = tuple(names)
    if method == "none":
        if names:
            raise SourcesError(f"{where}: verify = 'none' takes no secret_env")
        secrets: tuple[bytes, ...] = ()
    else:
        if not 1 <= len(names) <= MAX_SECRETS:
            raise SourcesError(
                f"{where}: secret_env must name 1 or {MAX_SECRETS} environment variables "
                "(two while rotating a secret)"
            )
        values = []
        for var in names if with_secrets else ():
            value = env.get(var, "")
            if not value:
                raise SourcesError(f"{where}: environment variable {var} is unset or empty")
            values.append(value.encode())
        secrets = tuple(values)

    cidrs = table.get("allow_ips", ())
    if not _strings(cidrs):
        raise SourcesError(f"{where}: allow_ips must be a list of CIDR strings")
    try:
        allow_ips = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
    except ValueError as exc:
        raise SourcesError(f"{where}: allow_ips: {exc}") from None
    window = _duration(table, "dedup_window", DEFAULT_DEDUP_WINDOW_MS, where)
    horizon = _duration(table, "retry_horizon", DEFAULT_RETRY_HORIZON_MS, where)
    ignore = table.get("dedup_ignore", ())
    if not _strings(ignore) or not all(_FIELD_PATH.match(path) for path in ignore):
        raise SourcesError(
            f'{where}: dedup_ignore must be a list of field paths such as "sent_at" or '
            '"meta.attempt"'
        )
    if len(ignore) > MAX_IGNORED_FIELDS:
        raise SourcesError(f"{where}: dedup_ignore names more than {MAX_IGNORED_FIELDS} fields")
    max_body = table.get("max_body_bytes")
    if max_body is not None and (
        isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 2
    ):
        raise SourcesError(f"{where}: max_body_bytes must be an integer of at least 2 (bytes)")

    return Source(
        name=name,
        kind=kind,
        environment=environment,
        verify=method,
        secrets=secrets,
        secret_env=names,
        allow_ips=allow_ips,
        dedup_window_ms=window,
        dedup_ignore=tuple(ignore),
        retry_horizon_ms=horizon,
        max_body_bytes=max_body,
    )


def _duration(table: Mapping[str, Any], key: str, default: int, where: str) -> int:
    if key not in table:
        return default
    try:
        if not isinstance(table[key], str):
            raise ValueError("must be a string such as '7d' or '72h'")
        value = parse_duration_ms(table[key])
    except ValueError as exc:
        raise SourcesError(f"{where}: {key}: {exc}") from None
    if value <= 0:
        raise SourcesError(f"{where}: {key} must be longer than zero")
    return value


def _strings(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)


def load_sources(
    path: Path, env: Mapping[str, str] | None = None, *, with_secrets: bool = True
) -> dict[str, Source]:
    """Parse and validate the whole file; raise :class:`SourcesError` on the first problem.

    Workers never verify, so they load with ``with_secrets=False`` and need no
    secret in their environment.
    """
    env = os.environ if env is None else env
    try:
        document = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SourcesError(f"sources file {path} does not exist (HOOKLINE_SOURCES)") from None
    except tomllib.TOMLDecodeError as exc:
        raise SourcesError(f"sources file {path}: {exc}") from None
    tables = document.get("sources")
    if not isinstance(tables, dict) or not tables:
        raise SourcesError(f"sources file {path}: no [sources.<name>] tables")
    return {name: _source(name, table, env, with_secrets) for name, table in tables.items()}
