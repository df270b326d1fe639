"""Summarise a py-spy ``-f raw`` profile: where the samples go, by library and function.

py-spy's raw format is one collapsed stack per line, ``frame;frame;...;leaf COUNT``,
each frame ``function (path/file.py:line)``. This prints, as percentages of
all samples:

- *self* by library: the leaf frame's library (the first directory of its
  path: ``faust``, ``aiokafka``, ``asyncio``...; hookline's own packages as
  ``hookline:streams``, ``hookline:schemas``...). Compiled code (fastavro's
  Cython, RocksDB, the JSON parsers) has no Python frame, so its time is the
  self time of the Python function that called it;
- *inclusive* by library: stacks with at least one frame of that library;
- the top functions by self and by inclusive samples;
- hookline's stages and a few named operations, inclusive
  (``--mark NAME=SUBSTRING`` adds one: a stack counts when a frame contains it).

Used by bench/README.md and docs/performance.md ("Worker pipeline"):

    .venv/bin/py-spy record -p <worker pid> -d 15 -r 100 -f raw -o worker.raw --nonblocking
    .venv/bin/python bench/profile_summary.py worker.raw [--top 25] [--json]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import print_json, table

HOOKLINE_PACKAGES = {"streams", "schemas", "hookline", "gateway", "infra", "warehouse"}
FRAME = re.compile(r"^(?P<function>.*) \((?P<path>[^()]*?)(?::(?P<line>\d+))?\)$")

#: Inclusive buckets: a stack counts when one of its frames contains the substring.
MARKS: dict[str, str] = {
    "stage intake": "EnvironmentPipeline.intake ",
    "stage transactions": "EnvironmentPipeline.transactions ",
    "stage orders": "EnvironmentPipeline.orders ",
    "Batch.flush (send outputs + changelog, await acks)": "Batch.flush ",
    "faust Producer.send / send_and_wait": "Producer.send",
    "aiokafka producer (any frame)": "(aiokafka/producer/",
    "aiokafka consumer/fetcher (any frame)": "(aiokafka/consumer/",
    "faust Stream iteration (take_events, acks)": "(faust/streams.py",
    "faust tables": "(faust/tables/",
    "faust transport (consumer thread, conductor)": "(faust/transport/",
    "Avro encode (schemas/codec.py)": "Registry.encode ",
    "Avro decode (schemas/codec.py)": "Registry.decode",
    "normalize (streams/normalize.py)": "(streams/normalize.py",
    "order state rules (streams/order_state.py)": "(streams/order_state.py",
    "RocksDB/rocksdict store": "(faust/stores/rocksdb.py",
    "metrics (prometheus_client)": "(prometheus_client/",
    "asyncio event loop own (select, callbacks)": "BaseEventLoop._run_once ",
}


def library(path: str) -> str:
    if not path:
        return "?"
    parts = Path(path).parts
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    top = parts[0] if parts else path
    if top.endswith(".py"):
        top = top[:-3]
    if top in HOOKLINE_PACKAGES:
        return f"hookline:{top}"
    return top


def parse(paths: list[Path]) -> list[tuple[list[tuple[str, str]], int]]:
    """(frames as (function, path), samples) per collapsed stack, root first."""
    stacks = []
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = []
            for frame in stack.split(";"):
                match = FRAME.match(frame)
                if match:
                    frames.append((match["function"], match["path"]))
                else:
                    frames.append((frame, ""))
            stacks.append((frames, int(count)))
    return stacks


def summarise(
    stacks: list[tuple[list[tuple[str, str]], int]], marks: dict[str, str], raw_lines: list[str]
) -> dict[str, Any]:
    total = sum(count for _, count in stacks)
    self_lib: Counter[str] = Counter()
    incl_lib: Counter[str] = Counter()
    self_fn: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    for frames, count in stacks:
        leaf_function, leaf_path = frames[-1]
        self_lib[library(leaf_path)] += count
        self_fn[f"{leaf_function} ({leaf_path})"] += count
        for name in {library(p) for _, p in frames}:
            incl_lib[name] += count
        for name in {f"{f} ({p})" for f, p in frames}:
            incl_fn[name] += count
    marked = {
        label: sum(c for line, c in raw_lines_counts(raw_lines) if needle in line)
        for label, needle in marks.items()
    }
    return {
        "samples": total,
        "self_by_library": self_lib,
        "inclusive_by_library": incl_lib,
        "self_by_function": self_fn,
        "inclusive_by_function": incl_fn,
        "marks": marked,
    }


def raw_lines_counts(lines: list[str]) -> list[tuple[str, int]]:
    out = []
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            out.append((stack, int(count)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("profiles", type=Path, nargs="+", help="py-spy -f raw output files")
    parser.add_argument("--top", type=int, default=20, help="functions listed (default 20)")
    parser.add_argument("--mark", action="append", default=[], help="LABEL=SUBSTRING")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of the tables"
    )
    args = parser.parse_args()
    marks = dict(MARKS)
    for item in args.mark:
        label, _, needle = item.partition("=")
        marks[label] = needle
    lines = [line for p in args.profiles for line in p.read_text().splitlines()]
    result = summarise(parse(args.profiles), marks, lines)
    total = result["samples"] or 1

    def pct(count: int) -> float:
        return round(100 * count / total, 1)

    if args.json:
        print_json(
            {
                "bench": "profile_summary",
                "profiles": [str(p) for p in args.profiles],
                "samples": result["samples"],
                "self_by_library_pct": {
                    k: pct(v) for k, v in result["self_by_library"].most_common()
                },
                "inclusive_by_library_pct": {
                    k: pct(v) for k, v in result["inclusive_by_library"].most_common()
                },
                "self_by_function_pct": {
                    k: pct(v) for k, v in result["self_by_function"].most_common(args.top)
                },
                "inclusive_by_function_pct": {
                    k: pct(v) for k, v in result["inclusive_by_function"].most_common(args.top)
                },
                "marks_pct": {k: pct(v) for k, v in result["marks"].items()},
            }
        )
        return 0

    print(f"{result['samples']} samples in {', '.join(str(p) for p in args.profiles)}")
    libraries = sorted(
        result["inclusive_by_library"], key=lambda k: -result["inclusive_by_library"][k]
    )
    print()
    print(
        table(
            ["library", "self %", "inclusive %"],
            [
                [
                    name,
                    f"{pct(result['self_by_library'][name]):.1f}",
                    f"{pct(result['inclusive_by_library'][name]):.1f}",
                ]
                for name in libraries
            ],
        )
    )
    for title, key in (("self", "self_by_function"), ("inclusive", "inclusive_by_function")):
        print()
        print(
            table(
                [f"function ({title})", "%"],
                [[name, f"{pct(count):.1f}"] for name, count in result[key].most_common(args.top)],
            )
        )
    print()
    print(
        table(
            ["operation (inclusive)", "%"],
            [[label, f"{pct(count):.1f}"] for label, count in result["marks"].items()],
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
