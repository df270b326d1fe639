"""The documentation works from a clone: its links resolve, its Python imports import.

Every relative Markdown link in the repository's ``*.md`` files must name a
file or folder inside the repository (never a sibling checkout such as
``../shared``), and every import in a Python code block of README.md or
docs/, and in docs/*.py, must work from outside the repository, where only
the installed ``hookline`` package is importable (``hookline.schemas``, not
``schemas``).
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKIP = {".venv", ".git", "node_modules", ".pytest_cache", ".ruff_cache", "build", "dist"}
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _markdown() -> list[Path]:
    return sorted(
        path
        for path in ROOT.rglob("*.md")
        if not SKIP & set(path.relative_to(ROOT).parts) and "egg-info" not in str(path)
    )


def _relative_links(path: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)  # not in code
    return [
        target
        for target in LINK.findall(text)
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target) and not target.startswith("#")
    ]


@pytest.mark.parametrize("path", _markdown(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_inside_the_repository(path: Path) -> None:
    broken = []
    for target in _relative_links(path):
        resolved = (path.parent / target.split("#", 1)[0]).resolve()
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            broken.append(target)
    assert broken == []


def _python_sources() -> list[tuple[str, str]]:
    sources = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for n, block in enumerate(PYTHON_BLOCK.findall(path.read_text()), 1):
            sources.append((f"{path.relative_to(ROOT)} block {n}", block))
    for path in sorted((ROOT / "docs").rglob("*.py")):
        sources.append((str(path.relative_to(ROOT)), path.read_text()))
    return sources


def _imports(source: str) -> list[str]:
    """Each import of ``source`` as one statement (a fragment that does not parse has none)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    return [
        ast.unparse(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        and not getattr(node, "level", 0)
        and getattr(node, "module", "") != "__future__"
    ]


def test_python_code_blocks_parse() -> None:
    unparsable = []
    for name, source in _python_sources():
        try:
            ast.parse(source)
        except SyntaxError as exc:
            unparsable.append(f"{name}: {exc}")
    assert unparsable == []


def test_python_imports_work_from_outside_the_repository(tmp_path: Path) -> None:
    statements = sorted({s for _, source in _python_sources() for s in _imports(source)})
    assert any("hookline" in s for s in statements)  # the docs do show hookline's own
    check = "\n".join(
        f"try:\n    {s}\nexcept ImportError as exc:\n    print({s!r}, '->', exc)"
        for s in statements
    )
    # -I: neither the current folder nor PYTHONPATH on sys.path; run from elsewhere.
    result = subprocess.run(
        [sys.executable, "-I", "-c", check],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


PROVIDER_SEEDS = {
    "partner.txt": "000_d463298df1c27cb1.txt",
    "vignette-sales.txt": "001_ff8018f59e0cfafd.txt",
    "payments.txt": "002_f8f33cdad71d87ad.txt",
    "envelope.txt": "003_d8ddfd5f4ce2da31.txt",
}


@pytest.mark.parametrize("name", sorted(PROVIDER_SEEDS))
def test_provider_documents_are_copies_of_the_originals(name: str) -> None:
    """docs/providers/ copies the providers' documents (the steering checkout's seeds/)."""
    copy = (ROOT / "docs" / "providers" / name).read_bytes()
    # The digest recorded when the copy matched: checked in a clone without the seeds (CI).
    recorded = json.loads((ROOT / "tests" / "fixtures" / "providers.sha256.json").read_text())
    assert hashlib.sha256(copy).hexdigest() == recorded[name], f"{name} changed since checked"
    original = ROOT.parent / "shared" / "seeds" / PROVIDER_SEEDS[name]
    if original.exists():
        assert copy == original.read_bytes()
