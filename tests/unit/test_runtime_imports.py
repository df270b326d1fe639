"""Runtime code must not import test-only packages (requirements.lock lacks them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEST_ONLY = ("pytest", "pytest_asyncio", "httpx", "testcontainers", "ruff")
#: Repository folder -> installed package (pyproject's package-dir).
PACKAGES = {
    "hookline": "hookline",
    "core": "hookline.core",
    "gateway": "hookline.gateway",
    "streams": "hookline.streams",
    "schemas": "hookline.schemas",
    "infra": "hookline.infra",
    "warehouse": "hookline.warehouse",
}
RUNTIME_MODULES = [
    ".".join((package, *path.relative_to(REPO / folder).with_suffix("").parts))
    for folder, package in PACKAGES.items()
    for path in sorted((REPO / folder).rglob("*.py"))
    if path.name != "__main__.py"
]

PROBE = f"""
import importlib, importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {TEST_ONLY!r}:
            raise ImportError(f"test-only package imported at run time: {{name}}")
        return None

sys.meta_path.insert(0, Block())
for module in {RUNTIME_MODULES!r}:
    importlib.import_module(module)
"""


def test_runtime_modules_import_without_test_packages() -> None:
    assert "hookline.cli" in RUNTIME_MODULES
    assert "hookline.streams.pipeline" in RUNTIME_MODULES
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
