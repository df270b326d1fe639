"""The copied example payloads must stay identical to the product spec's."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "payloads"
SPEC = Path(__file__).resolve().parents[3] / "shared" / "spec" / "payloads"


def test_every_example_is_copied() -> None:
    copied = {p.name for p in FIXTURES.iterdir()}
    assert {"partner-order-status.json", "payments-claims.json", "envelope-refund.json"} <= copied
    if SPEC.is_dir():
        assert copied == {p.name for p in SPEC.iterdir()}


#: Each copy's digest, recorded when it was checked against the spec: a clone
#: without the spec beside it (CI) still finds a copy that was changed.
DIGESTS = json.loads((FIXTURES.parent / "payloads.sha256.json").read_text())


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.iterdir()))
def test_copy_matches_the_spec(name: str) -> None:
    copy = (FIXTURES / name).read_bytes()
    assert hashlib.sha256(copy).hexdigest() == DIGESTS[name], f"{name} changed since it was checked"
    if SPEC.is_dir():  # next to the spec: the record itself is checked too
        assert copy == (SPEC / name).read_bytes()
