"""What gets installed: one ``hookline`` package, no development secrets, no silent defaults."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a clean copy: a stale build/ folder in the checkout cannot leak into it."""
    source = tmp_path_factory.mktemp("source") / "hookline"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", ".hookline", "__pycache__", ".*cache"
        ),
    )
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (found,) = out.glob("hookline-*.whl")
    return found


def test_the_wheel_holds_one_top_level_package_and_no_env_file(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"hookline"}
    assert not [name for name in names if name.endswith(".env")]
    for module in (
        "hookline/cli.py",
        "hookline/core/adapters/partner.py",
        "hookline/gateway/app.py",
        "hookline/streams/pipeline.py",
        "hookline/schemas/codec.py",
        "hookline/schemas/released/v1/hookline.OrderState.avsc",
        "hookline/infra/sources.dev.toml",
        "hookline/warehouse/sink.py",
    ):
        assert module in names, module


def test_the_gateway_does_not_import_the_workers_package() -> None:
    probe = (
        "import sys, hookline.gateway.app, hookline.gateway.server; "
        "print(sorted(m for m in sys.modules if m.startswith('hookline.streams')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("command", ["gateway", "worker"])
def test_without_hookline_sources_the_service_refuses_to_start(command: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HOOKLINE_SOURCES"}
    env["KAFKA_BOOTSTRAP_SERVERS"] = "127.0.0.1:9"  # never reached: it stops before
    done = subprocess.run(
        [sys.executable, "-m", "hookline", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode != 0
    assert "HOOKLINE_SOURCES is not set" in done.stderr
    assert "Traceback" not in done.stderr


def test_without_the_dev_env_file_run_generates_private_secrets(tmp_path: Path) -> None:
    """A wheel has no infra/dev.env: `hookline run` makes its own secrets, private to us."""
    from hookline.core.settings import DEV_SOURCES
    from hookline.core.sources import load_sources

    from hookline.supervisor import dev_secrets

    generated = dev_secrets(path=tmp_path / "absent.env", data_dir=tmp_path)
    wanted = {
        n for s in load_sources(DEV_SOURCES, with_secrets=False).values() for n in s.secret_env
    }
    assert set(generated) == wanted
    assert all(len(value) >= 32 for value in generated.values())
    assert (tmp_path / "dev-secrets.env").stat().st_mode & 0o777 == 0o600
    assert dev_secrets(path=tmp_path / "absent.env", data_dir=tmp_path) == generated  # kept
