"""Avro codec throughput: ``schemas.codec`` encode+decode against json.dumps/json.loads.

Why: every record a worker reads or writes goes through ``schemas.codec``
(several times per delivery: raw envelope, delivery, canonical event, table
values, order change, order state), so its cost per record bounds the
pipeline. JSON from the standard library is the obvious alternative a reader
would compare with, so it is the baseline: the same dicts, the same process,
``json.dumps(record).encode()`` then ``json.loads``. A third row, fastavro's
schemaless writer/reader called directly, shows what the codec's own wrapper
(single-object header, unknown-field check, fingerprint lookup, trailing-byte
check) adds on top of fastavro when decoding; the codec encodes with writers
compiled per schema (schemas/avro_writer.py), so its encode rows compare those
with fastavro's generic writer.

The records are real ones: a partner ORDER_STATUS_CHANGED body mapped by the
partner adapter (CanonicalEvent) and the second change of that order after a
confirmation (OrderChange, with ``before`` and ``after`` states).

    .venv/bin/python bench/codec.py [--records 20000] [--repeat 5] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/codec.py`, sys.path[0] is bench/, where bench/gateway.py
# would shadow the `gateway` package: put the repository first.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fastavro
from _common import PAYLOADS, load_average, print_json, say, table
from hookline.core.adapters import partner
from hookline.core.events import DeliveryContext
from hookline.gateway.envelope import new_delivery_id
from hookline.schemas import codec
from hookline.streams.order_state import apply_event

DAY_MS = 86_400_000


@dataclass(frozen=True)
class Measured:
    schema: str
    method: str
    operation: str
    records: int
    seconds: float
    size: int
    #: This process's CPU time (time.process_time) during the fastest run.
    cpu_seconds: float = float("nan")

    @property
    def rate(self) -> float:
        return self.records / self.seconds


def canonical_events(count: int) -> list[dict[str, Any]]:
    """``count`` CanonicalEvents as the partner adapter makes them, distinct order ids."""
    template = json.loads((PAYLOADS / "partner-order-status.json").read_bytes())
    events = []
    received_at = int(time.time() * 1000)
    for index in range(count):
        document = dict(template, order_id=f"ord-{index:07d}", transaction_id=f"tr-{index:07d}")
        ctx = DeliveryContext(
            delivery_id=new_delivery_id(received_at + index),
            source="partner",
            kind="partner",
            environment="production",
            received_at=received_at + index,
        )
        events.extend(partner.to_events(document, ctx))
    return events


def order_changes(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each order event, the change a later PDF confirmation makes (version 2)."""
    template = json.loads((PAYLOADS / "partner-order-confirmation.json").read_bytes())
    changes = []
    for first in events:
        created = apply_event(None, first, "production", 400 * DAY_MS)
        document = dict(
            template, order_id=first["order_id"], transaction_id=first["transaction_id"]
        )
        ctx = DeliveryContext(
            delivery_id=new_delivery_id(first["received_at"] + 60_000),
            source="partner",
            kind="partner",
            environment="production",
            received_at=first["received_at"] + 60_000,
        )
        (confirmation,) = partner.to_events(document, ctx)
        result = apply_event(created.record, confirmation, "production", 400 * DAY_MS)
        if result.change is None or result.change["before"] is None:
            raise RuntimeError("a confirmation after a status change must change the order")
        changes.append(result.change)
    return changes


def best_of(repeat: int, run: Callable[[], None]) -> tuple[float, float]:
    """The fastest of ``repeat`` runs (the one least disturbed by the rest of the
    machine): its wall seconds and this process's CPU seconds."""
    timings = []
    for _ in range(repeat):
        started, cpu = time.perf_counter(), time.process_time()
        run()
        timings.append((time.perf_counter() - started, time.process_time() - cpu))
    return min(timings)


def methods(name: str) -> dict[str, tuple[Callable[[Any], bytes], Callable[[bytes], Any]]]:
    """encode/decode pairs: hookline's codec, fastavro alone, and JSON (the baseline)."""
    schema = codec.REGISTRY.schema(name).plain

    def fastavro_encode(record: Any) -> bytes:
        out = io.BytesIO()
        fastavro.schemaless_writer(out, schema, record)
        return out.getvalue()

    def fastavro_decode(data: bytes) -> Any:
        return fastavro.schemaless_reader(io.BytesIO(data), schema)

    return {
        "json (baseline)": (lambda r: json.dumps(r).encode(), json.loads),
        "schemas.codec": (lambda r: codec.encode(name, r), lambda d: codec.decode_as(name, d)),
        "fastavro direct": (fastavro_encode, fastavro_decode),
    }


def measure(name: str, records: list[dict[str, Any]], repeat: int) -> list[Measured]:
    results = []
    for method, (encode, decode) in methods(name).items():
        encoded = [encode(r) for r in records]
        if decode(encoded[0]) != records[0]:  # both must round-trip exactly, or it is no race
            raise AssertionError(f"{method} does not round-trip a {name}")
        size = sum(len(e) for e in encoded) // len(encoded)

        def encode_all(encode: Callable[[Any], bytes] = encode) -> None:
            for record in records:
                encode(record)

        def decode_all(
            decode: Callable[[bytes], Any] = decode, encoded: list[bytes] = encoded
        ) -> None:
            for data in encoded:
                decode(data)

        def round_trip(
            encode: Callable[[Any], bytes] = encode, decode: Callable[[bytes], Any] = decode
        ) -> None:
            for record in records:
                decode(encode(record))

        for operation, run in (
            ("encode+decode", round_trip),
            ("encode", encode_all),
            ("decode", decode_all),
        ):
            seconds, cpu = best_of(repeat, run)
            results.append(Measured(name, method, operation, len(records), seconds, size, cpu))
        say(
            f"  {name.removeprefix('hookline.'):<14} {method:<16} "
            f"{results[-3].rate:>9.0f} round trips/s, {size} bytes/record"
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=20000, help="records per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement (best)")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of the table"
    )
    args = parser.parse_args()
    load_before = load_average()

    say(f"building {args.records} CanonicalEvent and OrderChange records...")
    events = canonical_events(args.records)
    changes = order_changes(events)
    results: list[Measured] = []
    for name, records in ((codec.CANONICAL_EVENT, events), (codec.ORDER_CHANGE, changes)):
        results += measure(name, records, args.repeat)

    rows = []
    documents = []
    for r in results:
        base = next(
            b
            for b in results
            if b.schema == r.schema and b.operation == r.operation and b.method.startswith("json")
        )
        documents.append(
            {
                "record": r.schema.removeprefix("hookline."),
                "operation": r.operation,
                "method": r.method,
                "records": r.records,
                "records_per_s": round(r.rate, 1),
                "baseline_records_per_s": round(base.rate, 1),
                "ratio": round(r.rate / base.rate, 4),
                "cpu_ms_per_record": round(1000 * r.cpu_seconds / r.records, 5),
                "first_out_ms": None,
                "bytes": r.size,
            }
        )
        rows.append(
            [
                r.schema.removeprefix("hookline."),
                r.operation,
                r.method,
                f"{r.rate:.0f}",
                f"{r.rate / base.rate:.2f}",
                str(r.size),
            ]
        )
    load_after = load_average()
    if args.json:
        print_json(
            {
                "bench": "codec",
                "records": args.records,
                "repeat": args.repeat,
                "results": documents,
                "load_average": [round(load_before, 2), round(load_after, 2)],
            }
        )
        return 0
    print()
    print(
        f"codec: {args.records} records, best of {args.repeat} runs "
        "(ratio = records/s relative to json for the same schema and operation)"
    )
    print(table(["record", "operation", "method", "records/s", "ratio", "bytes"], rows))
    print(f"load average (1 min): {load_before:.2f} before, {load_after:.2f} after")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
