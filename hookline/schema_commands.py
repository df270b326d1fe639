"""``hookline schemas`` and ``hookline schemas check``: schema versions for operators and authors.

The rule (schemas/README.md) is that every change is fully compatible with every
earlier version of the same name; ``check`` lets an author learn that before
CI does, naming each version and field that would fail.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from hookline.schemas import codec
from hookline.schemas.compatibility import full_problems


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "schemas",
        help="list every schema version; `schemas check FILE` tests a change for compatibility",
        description=(
            "Without arguments: every schema of every release (schemas/released/vN plus the "
            "current schemas/ folder), with its full name, version(s), fingerprint and whether "
            "it is public or internal. See schemas/README.md."
        ),
    )
    parser.set_defaults(func=cmd_list)
    actions = parser.add_subparsers(dest="schemas_command", metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="is this changed .avsc fully compatible with every earlier version?",
        description=(
            "Check a changed schema file against every earlier version of the same full name, "
            "both ways (today's reader reads old records; old readers read new records). Named "
            "types it references are taken from schemas/. Exit 0 when fully compatible, 1 when "
            "not, 2 for a file that is not a valid schema."
        ),
    )
    check.add_argument("path", type=Path, metavar="PATH.avsc", help="the changed schema file")
    check.set_defaults(func=cmd_check)


def cmd_list(args: argparse.Namespace) -> int:
    registry = codec.REGISTRY
    rows = []
    for schema in registry.versions():
        releases = ",".join(str(r) for r in schema.releases)
        rows.append(
            (
                schema.name,
                f"v{schema.version}",
                f"releases {releases}",
                schema.fingerprint.hex(),
                "public" if schema.public else "internal",
                "current" if schema.current else "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[5]]).rstrip())
    print(
        f"{len(rows)} schema versions; current folder = release {registry.current_release}",
        file=sys.stderr,
    )
    return 0


class CheckError(ValueError):
    """The file is not a schema we can check."""


def load_candidate(path: Path) -> codec.Schema:
    """The schema in ``path``, its named-type references resolved from ``schemas/``.

    It is loaded in a copy of the current folder where it replaces the file of
    the same full name, so its fingerprint is what the codec would compute.
    """
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise CheckError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckError(f"{path} is not JSON: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise CheckError(f"{path}: expected a named Avro schema (a JSON object with a name)")
    name = raw["name"]
    if "." not in name and isinstance(raw.get("namespace"), str) and raw["namespace"]:
        name = f"{raw['namespace']}.{name}"
    with tempfile.TemporaryDirectory(prefix="hookline-schema-") as tmp:
        folder = Path(tmp)
        for avsc in codec.SCHEMA_DIR.glob("*.avsc"):
            shutil.copy(avsc, folder / avsc.name)
        (folder / f"{name}.avsc").write_text(json.dumps(raw))
        try:
            loaded = codec.load_folder(folder)[name]
        except Exception as exc:  # fastavro's SchemaParseException, UnknownType, KeyError...
            raise CheckError(f"{path}: not a valid Avro schema: {exc}") from None
    return codec.Schema(loaded.name, loaded.fingerprint, loaded.parsed, loaded.plain, loaded.fields)


def cmd_check(args: argparse.Namespace) -> int:
    try:
        candidate = load_candidate(args.path)
    except CheckError as exc:
        print(f"hookline: {exc}", file=sys.stderr)
        return 2
    earlier = codec.REGISTRY.versions(candidate.name)
    if not earlier:
        print(f"{candidate.name}: new schema, no earlier version to be compatible with: OK")
        return 0
    failed = False
    for old in earlier:
        label = f"{candidate.name} v{old.version} ({old.fingerprint.hex()})"
        if old.fingerprint == candidate.fingerprint:
            print(f"{label}: identical (same canonical form): OK")
            continue
        problems = full_problems(old.parsed, candidate.parsed)
        if not any(problems.values()):
            print(f"{label}: fully compatible: OK")
            continue
        failed = True
        print(f"{label}: NOT compatible")
        for direction, found in problems.items():
            for problem in found:
                print(f"  {direction}: {problem}")
    if failed:
        print(
            "Add fields only with a default; never remove a field without one, rename, retype, "
            "drop an enum symbol or change a decimal's scale (schemas/README.md).",
            file=sys.stderr,
        )
    return 1 if failed else 0
