"""The Prometheus alert rules in infra/prometheus/ are valid and behave as their tests say.

promtool comes from Debian's ``prometheus`` package; infra/prometheus/install-promtool.sh
unpacks just that binary into the virtualenv (``.ci/run`` runs it). In CI (``CI`` set) a
missing promtool is installed by this module or fails these tests, never skips them: a
skipped rule test would let a broken alert ship. Elsewhere they skip, saying how to get
it: a unit test run installs no system packages on a developer's machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.helpers import INFRA

RULES = INFRA / "prometheus" / "alerts.yml"
INSTALLER = INFRA / "prometheus" / "install-promtool.sh"
RULE_TESTS = INFRA / "prometheus" / "alerts.test.yml"
CONFIG = INFRA / "prometheus" / "prometheus.yml"

#: The operator's-kit issue's list, and which alert covers each item.
REQUIRED = {
    "gateway 5xx/503 rate": "HooklineGatewayUnavailable",
    "verification-failure spike per source": "HooklineVerificationFailureSpike",
    "worker consumer lag": "HooklineConsumerLagHigh",
    "consumer lag growth": "HooklineConsumerLagGrowing",
    "dead letters per stage": "HooklineDeadLetters",
    "rejected transitions": "HooklineRejectedTransitions",
    "join conflicts": "HooklineJoinConflicts",
    "no deliveries from a source": "HooklineSourceSilent",
    "orders paid but not ACTIVE": "HooklineOrdersPaidNotActive",
}


@pytest.fixture(scope="module")
def promtool() -> str:
    venv_bin = Path(sys.executable).parent
    path = shutil.which("promtool") or shutil.which("promtool", path=str(venv_bin))
    if path is None and not os.environ.get("CI"):
        pytest.skip(
            "promtool not found: `bash infra/prometheus/install-promtool.sh .venv/bin` "
            "installs it (from Debian's prometheus package; CI does)"
        )
    if path is None:  # CI on a fresh machine: install it (apt)
        subprocess.run(
            ["bash", str(INSTALLER), str(venv_bin)], check=True, capture_output=True, timeout=300
        )
        path = shutil.which("promtool", path=str(venv_bin))
    assert path, "promtool not found and infra/prometheus/install-promtool.sh could not install it"
    return path


def _run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], cwd=RULES.parent, capture_output=True, text=True, timeout=120
    )


def test_rules_are_valid(promtool: str) -> None:
    done = _run(promtool, "check", "rules", RULES.name)
    assert done.returncode == 0, done.stdout + done.stderr


def test_prometheus_config_loads_the_rules(promtool: str) -> None:
    done = _run(promtool, "check", "config", CONFIG.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(rf"^rule_files:\n\s+- {re.escape(RULES.name)}\b", CONFIG.read_text(), re.M)


def test_promtool_unit_tests_pass(promtool: str) -> None:
    done = _run(promtool, "test", "rules", RULE_TESTS.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_required_alert_exists_and_has_a_promtool_case() -> None:
    # Plain text, not YAML: promtool has validated both files above.
    alerts = set(re.findall(r"^\s+- alert: (\w+)$", RULES.read_text(), re.M))
    tested = set(re.findall(r"^\s+alertname: (\w+)$", RULE_TESTS.read_text(), re.M))
    for need, alert in REQUIRED.items():
        assert alert in alerts, f"no alert for {need}"
    assert alerts <= tested, f"alerts without a test case: {sorted(alerts - tested)}"
    assert len(
        re.findall(r"^\s+exp_alerts:\n\s+- exp_labels", RULE_TESTS.read_text(), re.M)
    ) >= len(alerts), "every alert needs a case where it fires"


def test_compose_stack_mounts_the_rules_with_the_config() -> None:
    compose = (INFRA / "docker-compose.yml").read_text()
    assert "- ./prometheus:/etc/prometheus:ro" in compose
    assert "--config.file=/etc/prometheus/prometheus.yml" in compose
