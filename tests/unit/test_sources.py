"""core/sources.py: the sources file, validated completely at start."""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path

import pytest
from hookline.core.sources import (
    DEFAULT_DEDUP_WINDOW_MS,
    Source,
    SourcesError,
    load_sources,
    parse_duration_ms,
)

from hookline.supervisor import dev_secrets
from tests.unit.helpers import INFRA

DEV_FILE = INFRA / "sources.dev.toml"
ENV = {"PARTNER_SECRET": "s3cret-partner-value", "NEXT_SECRET": "s3cret-next-value"}
DAY_MS = 86_400_000


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sources.toml"
    path.write_text(text)
    return path


def one(body: str, name: str = "partner") -> str:
    return f"[sources.{name}]\n{body}\n"


GOOD = (
    'kind = "partner"\nenvironment = "production"\nverify = "token"\nsecret_env = "PARTNER_SECRET"'
)


def load_one(tmp_path: Path, body: str, env: dict[str, str] | None = None) -> Source:
    sources = load_sources(write(tmp_path, one(body)), ENV if env is None else env)
    assert list(sources) == ["partner"]
    return sources["partner"]


def refused(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(SourcesError) as info:
        load_sources(write(tmp_path, text), ENV if env is None else env)
    message = str(info.value)
    for value in (ENV if env is None else env).values():
        assert not value or value not in message
    return message


# -- the dev file ----------------------------------------------------------------


def test_dev_file_loads_with_dev_env_values() -> None:
    secrets = dev_secrets()
    sources = load_sources(DEV_FILE, secrets)
    tables = tomllib.loads(DEV_FILE.read_text())["sources"]
    assert set(sources) == set(tables)
    assert {s.kind for s in sources.values()} >= {
        "partner",
        "vignette-sales",
        "payments",
        "envelope",
    }
    for name, table in tables.items():
        src = sources[name]
        names = table["secret_env"]
        names = [names] if isinstance(names, str) else names
        assert src.name == name
        assert src.kind == table["kind"]
        assert src.environment == table["environment"]
        assert src.verify == table["verify"]
        assert src.secret_env == tuple(names)
        assert src.secrets == tuple(secrets[var].encode() for var in names)
        assert all(src.secrets)


def test_dev_file_payments_rotates_two_secrets() -> None:
    secrets = dev_secrets()
    payments = load_sources(DEV_FILE, secrets)["payments"]
    assert payments.verify == "jwt-hs256"
    assert payments.secrets == (
        secrets["PAYMENTS_SECRET"].encode(),
        secrets["PAYMENTS_SECRET_NEXT"].encode(),
    )
    assert payments.dedup_window_ms == 7 * DAY_MS


def test_dev_file_without_env_fails_naming_the_variable() -> None:
    with pytest.raises(SourcesError, match="PARTNER_SECRET"):
        load_sources(DEV_FILE, {})


def test_dev_file_without_secrets_needs_no_env() -> None:
    sources = load_sources(DEV_FILE, {}, with_secrets=False)
    assert sources["payments"].secrets == ()
    assert sources["payments"].secret_env == ("PAYMENTS_SECRET", "PAYMENTS_SECRET_NEXT")
    assert sources["partner-sandbox"].environment == "sandbox"


def test_source_repr_hides_secrets() -> None:
    src = load_sources(DEV_FILE, dev_secrets())["partner"]
    assert dev_secrets()["PARTNER_SECRET"] not in repr(src)


# -- a good file -------------------------------------------------------------------


def test_minimal_source(tmp_path: Path) -> None:
    src = load_one(tmp_path, GOOD)
    assert src == Source(
        name="partner",
        kind="partner",
        environment="production",
        verify="token",
        secrets=(b"s3cret-partner-value",),
        secret_env=("PARTNER_SECRET",),
        allow_ips=(),
        dedup_window_ms=DEFAULT_DEDUP_WINDOW_MS,
    )
    assert DEFAULT_DEDUP_WINDOW_MS == 7 * DAY_MS


def test_two_secrets_in_order(tmp_path: Path) -> None:
    src = load_one(tmp_path, GOOD.replace('"PARTNER_SECRET"', '["NEXT_SECRET", "PARTNER_SECRET"]'))
    assert src.secrets == (b"s3cret-next-value", b"s3cret-partner-value")


def test_every_kind_and_method(tmp_path: Path) -> None:
    text = ""
    combos = [
        ("partner", "token"),
        ("vignette-sales", "hmac-sha256"),
        ("payments", "jwt-hs256"),
        ("envelope", "token"),
        ("envelope", "standard-webhooks"),
        ("partner", "standard-webhooks"),
    ]
    for index, (kind, method) in enumerate(combos):
        text += one(
            f'kind = "{kind}"\nenvironment = "sandbox"\nverify = "{method}"\n'
            'secret_env = "PARTNER_SECRET"',
            name=f"s{index}",
        )
    text += one('kind = "vignette-sales"\nenvironment = "production"\nverify = "none"', "open")
    sources = load_sources(write(tmp_path, text), ENV)
    assert [(s.kind, s.verify) for s in sources.values()] == [
        *combos,
        ("vignette-sales", "none"),
    ]
    assert sources["open"].secrets == ()


def test_allow_ips_and_dedup_window(tmp_path: Path) -> None:
    src = load_one(
        tmp_path, GOOD + '\nallow_ips = ["10.0.0.0/8", "2001:db8::/32"]\ndedup_window = "72h"'
    )
    assert src.allow_ips == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("2001:db8::/32"),
    )
    assert src.dedup_window_ms == 72 * 3600 * 1000


def test_with_secrets_false_needs_no_env(tmp_path: Path) -> None:
    path = write(tmp_path, one(GOOD))
    with pytest.raises(SourcesError):
        load_sources(path, {})
    sources = load_sources(path, {}, with_secrets=False)
    assert sources["partner"].secrets == ()
    assert sources["partner"].secret_env == ("PARTNER_SECRET",)


def test_with_secrets_false_still_validates(tmp_path: Path) -> None:
    path = write(tmp_path, one(GOOD.replace('"partner"', '"nope"')))
    with pytest.raises(SourcesError):
        load_sources(path, {}, with_secrets=False)


def test_environment_defaults_to_process_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARTNER_SECRET", "from-os-environ")
    assert load_sources(write(tmp_path, one(GOOD)))["partner"].secrets == (b"from-os-environ",)


# -- errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        (GOOD.replace('"partner"', '"partners"'), "kind"),
        (GOOD.replace('kind = "partner"\n', ""), "kind"),
        (GOOD.replace('"production"', '"staging"'), "environment"),
        (GOOD.replace('environment = "production"\n', ""), "environment"),
        (GOOD.replace('"token"', '"basic"'), "verify"),
        (GOOD.replace('"token"', '"TOKEN"'), "verify"),
        (GOOD.replace('verify = "token"\n', ""), "verify"),
        (GOOD.replace('"PARTNER_SECRET"', '["A", "B", "C"]'), "secret_env"),
        (GOOD.replace('"PARTNER_SECRET"', "[]"), "secret_env"),
        (GOOD.replace('\nsecret_env = "PARTNER_SECRET"', ""), "secret_env"),
        (GOOD.replace('"token"', '"jwt-hs256"'), "jwt-hs256"),
        (GOOD.replace('"token"', '"none"'), "secret_env"),
        (GOOD + '\nallow_ips = ["10.0.0.0/33"]', "allow_ips"),
        (GOOD + '\nallow_ips = ["not-an-ip"]', "allow_ips"),
        (GOOD + '\nallow_ips = ["10.0.0.1", "300.1.1.1/8"]', "allow_ips"),
        (GOOD + '\ndedup_window = "7 weeks"', "dedup_window"),
        (GOOD + '\ndedup_window = "abc"', "dedup_window"),
        (GOOD + '\ndedup_window = "-1d"', "dedup_window"),
        (GOOD + '\ndedup_window = "7"', "dedup_window"),
        (GOOD + '\ndedup_window = ""', "dedup_window"),
        (GOOD + '\nsecret = "inline"', "secret"),
        (GOOD + '\nallow_ip = ["10.0.0.0/8"]', "allow_ip"),
    ],
)
def test_bad_source_is_refused_naming_source_and_key(
    tmp_path: Path, body: str, mentions: str
) -> None:
    message = refused(tmp_path, one(body))
    assert "[sources.partner]" in message
    assert mentions in message


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        pytest.param(
            GOOD + "\ndedup_window = 7",
            "dedup_window",
        ),
        pytest.param(
            GOOD.replace('"PARTNER_SECRET"', "5"),
            "secret_env",
        ),
        pytest.param(
            GOOD + "\nallow_ips = 10",
            "allow_ips",
        ),
    ],
    ids=["dedup_window-int", "secret_env-int", "allow_ips-int"],
)
def test_wrongly_typed_values_are_refused(tmp_path: Path, body: str, mentions: str) -> None:
    message = refused(tmp_path, one(body))
    assert "[sources.partner]" in message
    assert mentions in message


def test_jwt_hs256_is_allowed_for_payments_only(tmp_path: Path) -> None:
    for kind in ("partner", "vignette-sales", "envelope"):
        body = GOOD.replace('"partner"', f'"{kind}"').replace('"token"', '"jwt-hs256"')
        assert "jwt-hs256" in refused(tmp_path, one(body))
    body = GOOD.replace('"partner"', '"payments"').replace('"token"', '"jwt-hs256"')
    assert load_one(tmp_path, body).verify == "jwt-hs256"


def test_missing_secret_names_the_variable_never_a_value(tmp_path: Path) -> None:
    body = GOOD.replace('"PARTNER_SECRET"', '["PARTNER_SECRET", "ROTATED_SECRET"]')
    message = refused(tmp_path, one(body))
    assert "ROTATED_SECRET" in message
    assert ENV["PARTNER_SECRET"] not in message


def test_empty_secret_is_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, one(GOOD), env={"PARTNER_SECRET": ""})
    assert "PARTNER_SECRET" in message


@pytest.mark.parametrize(
    "name",
    [
        '"Partner"',
        '"has space"',
        '"a/b"',
        '"-lead"',
        '"_lead"',
        '"a.b"',
        '""',
        '"' + "a" * 64 + '"',
    ],
)
def test_bad_source_name(tmp_path: Path, name: str) -> None:
    refused(tmp_path, f"[sources.{name}]\n{GOOD}\n")


def test_longest_allowed_name(tmp_path: Path) -> None:
    name = "a" + "b-_9" * 15 + "zz"
    assert len(name) == 63
    assert list(load_sources(write(tmp_path, one(GOOD, name)), ENV)) == [name]


@pytest.mark.parametrize(
    "text",
    ["", "[other]\nx = 1\n", "[sources]\n", "this is = not toml = at all", "sources = 3\n"],
)
def test_file_without_sources(tmp_path: Path, text: str) -> None:
    refused(tmp_path, text)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourcesError, match="does not exist"):
        load_sources(tmp_path / "nope.toml", ENV)


def test_first_bad_source_stops_the_whole_file(tmp_path: Path) -> None:
    text = one(GOOD) + one(GOOD.replace('"token"', '"basic"'), name="second")
    assert "[sources.second]" in refused(tmp_path, text)


# -- durations and addresses -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("7d", 7 * DAY_MS),
        ("72h", 72 * 3_600_000),
        ("30m", 1_800_000),
        ("15s", 15_000),
        ("500ms", 500),
        ("1.5h", 5_400_000),
        (" 2 d ", 2 * DAY_MS),
        ("0s", 0),
    ],
)
def test_parse_duration_ms(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["7", "d", "7w", "-1d", "7 days", "", "1h30m", "ms", "7D"])
def test_parse_duration_ms_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration_ms(text)


def test_ip_allowed_without_list_allows_all() -> None:
    src = Source("s", "partner", "production", "none")
    assert src.ip_allowed("10.1.2.3")
    assert src.ip_allowed("::1")
    assert src.ip_allowed(None)
    assert src.ip_allowed("not an address")


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("10.1.2.3", True),
        ("10.255.255.255", True),
        ("11.0.0.1", False),
        ("192.168.1.7", True),
        ("192.168.1.8", False),
        ("2001:db8::1", True),
        ("2001:db9::1", False),
        ("::1", False),
        (None, False),
        ("", False),
        ("garbage", False),
        ("10.1.2.3/8", False),
    ],
)
def test_ip_allowed_with_list(host: str | None, allowed: bool) -> None:
    networks = ("10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32")
    src = Source(
        "s",
        "partner",
        "production",
        "none",
        allow_ips=tuple(ipaddress.ip_network(n) for n in networks),
    )
    assert src.ip_allowed(host) is allowed


def test_allow_ips_host_bits_are_accepted(tmp_path: Path) -> None:
    src = load_one(tmp_path, GOOD + '\nallow_ips = ["10.1.2.3/8"]')
    assert src.ip_allowed("10.200.0.1")
    assert not src.ip_allowed("11.0.0.1")


def test_max_body_bytes_is_optional_and_per_source(tmp_path: Path) -> None:
    assert load_one(tmp_path, GOOD).max_body_bytes is None
    assert load_one(tmp_path, GOOD + "\nmax_body_bytes = 4096").max_body_bytes == 4096


@pytest.mark.parametrize("value", ["0", "1", "-5", '"16KiB"', "1.5", "true"])
def test_max_body_bytes_must_be_a_byte_count(tmp_path: Path, value: str) -> None:
    message = refused(tmp_path, one(GOOD + f"\nmax_body_bytes = {value}"))
    assert "[sources.partner]" in message
    assert "max_body_bytes" in message
