"""HOOKLINE_LOG_FORMAT=json: every line ``hookline run`` and its children print is a JSON object."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.hookline_run import RunningHookline, hookline_run


def _events_counted(running: RunningHookline) -> bool:
    text = running.metrics(running.worker_url)
    return any(
        float(value) > 0
        for value in re.findall(r"^hookline_worker_events_total\{[^}]*\} (\S+)$", text, re.M)
    )


def test_hookline_run_logs_json_lines_only(tmp_path: Path) -> None:
    with hookline_run(tmp_path, HOOKLINE_LOG_FORMAT="json") as running:
        delivery_id = running.post_partner_webhook()
        deadline = time.monotonic() + 30
        while not _events_counted(running):
            assert time.monotonic() < deadline, "the worker never processed the webhook"
            time.sleep(0.3)
    assert running.process.returncode == 0

    lines = running.lines()
    parsed: list[dict[str, Any]] = []
    for line in lines:
        record = json.loads(line)  # fails the test on the first non-JSON line
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "message"} <= record.keys(), line
        assert record["time"].endswith("+00:00"), line
        parsed.append(record)
    processes = {record.get("process") for record in parsed}
    assert {"gateway", "worker"} <= processes, processes  # the children's lines, not only ours
    assert any(r["logger"] == "hookline.run" and "stopped" in r["message"] for r in parsed)
    # One accepted request is counted, not logged at INFO (PRODUCT: no line per request).
    assert not [r for r in parsed if r["level"] == "INFO" and delivery_id in json.dumps(r)]


def test_a_bad_log_format_is_a_clear_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hookline", "schemas"],
        env={"HOOKLINE_LOG_FORMAT": "yaml", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "HOOKLINE_LOG_FORMAT='yaml'" in done.stderr
    assert "Traceback" not in done.stderr
