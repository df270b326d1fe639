"""``hookline sink``'s and ``hookline warehouse``'s command lines, without a broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hookline.warehouse.command import default_group, newest_warehouse
from hookline.warehouse.tables import WarehouseConfig


def hookline(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hookline", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "args",
    [
        ("--batch-rows", "0"),
        ("--commit-interval", "-1"),
        ("--maintain", "--compact-min-files", "1"),
        ("--maintain", "--expire-after-hours", "0"),
        ("--decoders", "-1"),
        ("--decoders", "65"),
    ],
)
def test_a_bad_number_is_a_usage_error(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = hookline("sink", "--warehouse", str(tmp_path / "wh"), *args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith("hookline sink: error: ")
    assert not (tmp_path / "wh").exists()  # refused before touching the warehouse


def test_each_warehouse_has_its_own_consumer_group(tmp_path: Path) -> None:
    one = default_group(WarehouseConfig(directory=tmp_path / "one"))
    assert one == default_group(WarehouseConfig(directory=tmp_path / "one"))
    assert one != default_group(WarehouseConfig(directory=tmp_path / "two"))
    assert one != default_group(WarehouseConfig(catalog_name="lake"))
    assert one.startswith("hookline-sink-")


def test_newest_warehouse_is_the_folder_or_its_newest_run(tmp_path: Path) -> None:
    assert newest_warehouse(tmp_path) is None
    for run in ("2026-12-07T10-00-00Z", "2026-12-07T11-00-00Z"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "catalog.db").touch()
    assert newest_warehouse(tmp_path) == tmp_path / "2026-12-07T11-00-00Z"
    (tmp_path / "catalog.db").touch()
    assert newest_warehouse(tmp_path) == tmp_path


def test_warehouse_sql_without_a_warehouse_is_one_line(tmp_path: Path) -> None:
    result = hookline(
        "warehouse", "sql", "SELECT 1", "--warehouse", str(tmp_path / "none"), cwd=tmp_path
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == f"hookline warehouse: no warehouse (catalog.db) in {tmp_path / 'none'}"
    )
