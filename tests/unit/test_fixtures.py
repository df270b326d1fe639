"""The copied example payloads must stay identical to the product spec's."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "payloads"
SPEC = Path(__file__).resolve().parents[3] / "shared" / "spec" / "payloads"


def test_every_example_is_copied() -> None:
    copied = {p.name for p in FIXTURES.iterdir()}
    assert {"partner-order-status.json", "payments-claims.json", "envelope-refund.json"} <= copied
    if SPEC.is_dir():
        assert copied == {p.name for p in SPEC.iterdir()}


@pytest.mark.skipif(
    not SPEC.is_dir(), reason="the spec's payloads folder is not next to this clone"
)
@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.iterdir()))
def test_copy_matches_the_spec(name: str) -> None:
    assert (FIXTURES / name).read_bytes() == (SPEC / name).read_bytes()
