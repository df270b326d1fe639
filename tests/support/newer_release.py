"""A pretend newer release, to test a rolling upgrade: its ``WebhookEnvelope`` has one
field more (with a default, as every schema change must), so its records carry a
fingerprint today's release does not know.

    python -m tests.support.newer_release FOLDER worker --web-port N

runs today's worker with the newer release's schemas (``FOLDER``, made by
:func:`write_schemas`): what a worker of that release would read and write.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from hookline.schemas import codec

#: The field the newer release added to WebhookEnvelope.
NEW_FIELD = {"name": "trace_id", "type": ["null", "string"], "default": None}


def write_schemas(folder: Path) -> Path:
    """The newer release's schemas/ under ``folder``: today's as its newest release
    (``released/vN``) and, as current, today's with ``WebhookEnvelope`` grown."""
    current = folder / "schemas"
    current.mkdir(parents=True, exist_ok=True)
    shutil.copytree(codec.RELEASED_DIR, current / "released", dirs_exist_ok=True)
    newest = max(int(p.name[1:]) for p in (current / "released").glob("v*"))
    today = current / "released" / f"v{newest + 1}"
    today.mkdir()
    for avsc in codec.SCHEMA_DIR.glob("*.avsc"):
        shutil.copy(avsc, today / avsc.name)
        shutil.copy(avsc, current / avsc.name)
    envelope = current / "hookline.WebhookEnvelope.avsc"
    schema = json.loads(envelope.read_text())
    schema["fields"].append(NEW_FIELD)
    envelope.write_text(json.dumps(schema, indent=2))
    return current


def registry(current: Path) -> codec.Registry:
    return codec.Registry(current)


def use(current: Path) -> codec.Registry:
    """Make this process read and write as the newer release does."""
    newer = registry(current)
    codec.REGISTRY = newer
    codec.encode = newer.encode
    codec.decode = newer.decode
    codec.decode_as = newer.decode_as
    return newer


def main(argv: list[str]) -> int:
    folder, *rest = argv
    use(Path(folder))
    from hookline.cli import main as hookline_main

    return hookline_main(rest)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
