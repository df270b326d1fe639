"""Every metric the alert rules and the Grafana dashboard use is exported by a running hookline.

A renamed metric does not break a query, it silently empties it: the alert
never fires and the panel shows "No data". So the names are compared with the
/metrics of a real gateway and worker, which stays right as metrics change.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.hookline_run import hookline_run
from tests.unit.helpers import INFRA

RULES = INFRA / "prometheus" / "alerts.yml"
DASHBOARDS = sorted((INFRA / "grafana" / "dashboards").glob("*.json"))
NAME = re.compile(r"\bhookline_[a-zA-Z0-9_]+")  # recording rules (hookline:...) excluded
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


def rule_expressions(text: str) -> Iterator[str]:
    """The ``expr:`` values of a rules file (one line, or a ``|`` block)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)expr:\s*(.*)$", line)
        if not match:
            continue
        indent, rest = len(match.group(1)), match.group(2)
        if rest.strip() not in ("|", ">", "|-", ">-"):
            yield rest
            continue
        block = []
        for following in lines[i + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            block.append(following)
        yield "\n".join(block)


def dashboard_expressions(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from dashboard_expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_expressions(item)


def used_names() -> dict[str, set[str]]:
    """Metric name -> the files that use it."""
    used: dict[str, set[str]] = {}
    sources = [(RULES.name, expr) for expr in rule_expressions(RULES.read_text())]
    for path in DASHBOARDS:
        sources += [(path.name, e) for e in dashboard_expressions(json.loads(path.read_text()))]
    for where, expr in sources:
        for name in NAME.findall(expr):
            used.setdefault(name, set()).add(where)
    return used


def exported_names(exposition: str) -> set[str]:
    """Names a scrape can return, including families with no sample yet (labelled, unused)."""
    names = set()
    for line in exposition.splitlines():
        typed = re.match(r"^# TYPE (\S+) (\S+)$", line)
        if typed:
            name, kind = typed.groups()
            names.add(name)
            names.update(name + suffix for suffix in SUFFIXES.get(kind, ()))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def test_the_parsers_find_the_names() -> None:
    used = used_names()
    assert "hookline_gateway_deliveries_total" in used
    assert "hookline_worker_consumer_lag" in used
    assert "hookline_worker_end_to_end_seconds_bucket" in used  # from the dashboard
    assert not [n for n in used if n.endswith("_")]  # no prose like hookline_worker_* targets
    assert exported_names('# TYPE a_seconds histogram\n# TYPE b_total counter\nc{x="1"} 2\n') == {
        "a_seconds",
        "a_seconds_bucket",
        "a_seconds_sum",
        "a_seconds_count",
        "b_total",
        "c",
    }


def test_every_metric_in_rules_and_dashboard_is_exported(tmp_path: Path) -> None:
    with hookline_run(tmp_path) as running:
        exported = exported_names(running.metrics(running.gateway_url))
        exported |= exported_names(running.metrics(running.worker_url))
    missing = {name: sorted(where) for name, where in used_names().items() if name not in exported}
    assert not missing, f"used but exported by neither the gateway nor the worker: {missing}"
