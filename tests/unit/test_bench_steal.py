"""The benches' steal meter: what decides that a half-load run measured the host, not hookline."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from _common import CpuTimes, parse_cpu_times, steal_share

# A real /proc/stat head from this VM (2 vCPUs): user nice system idle iowait
# irq softirq steal guest guest_nice.
PROC_STAT = """\
cpu  3185934 0 298339 8122813 5150 0 84549 15046 0 0
cpu0 1590000 0 150000 4060000 2500 0 42000 7500 0 0
cpu1 1595934 0 148339 4062813 2650 0 42549 7546 0 0
intr 123456 0 0
procs_running 2
"""


def test_the_aggregate_line_is_read_and_guest_time_is_not_counted_twice() -> None:
    times = parse_cpu_times(PROC_STAT)
    assert times.steal == 15046
    assert times.total == 3185934 + 298339 + 8122813 + 5150 + 84549 + 15046
    # guest (already inside user) must not inflate the total
    with_guest = PROC_STAT.replace(" 15046 0 0\n", " 15046 777 5\n", 1)
    assert with_guest != PROC_STAT
    assert parse_cpu_times(with_guest) == times


def test_a_kernel_without_the_steal_field_reads_as_no_steal() -> None:
    times = parse_cpu_times("cpu  10 0 5 100 1 0 2\n")
    assert times == CpuTimes(total=118, steal=0)


def test_no_aggregate_line_is_an_error() -> None:
    with pytest.raises(ValueError, match="cpu"):
        parse_cpu_times("cpu0 1 2 3 4 5 6 7 8\n")


def test_share_is_stolen_ticks_over_all_ticks_in_between() -> None:
    before = CpuTimes(total=10_000, steal=100)
    after = CpuTimes(total=10_400, steal=168)  # 2 vCPUs, 2 s at 100 Hz; 68 ticks stolen
    assert steal_share(before, after) == pytest.approx(0.17)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (None, CpuTimes(total=10, steal=0)),
        (CpuTimes(total=10, steal=0), None),
        (CpuTimes(total=10, steal=0), CpuTimes(total=10, steal=0)),  # no tick passed
    ],
)
def test_unknown_is_nan_so_a_run_is_never_repeated_on_a_guess(
    before: CpuTimes | None, after: CpuTimes | None
) -> None:
    share = steal_share(before, after)
    assert math.isnan(share)
    assert not share > 0.01  # the comparison bench/gateway.py makes
