"""The sink's Prometheus metrics (README, "Operating it"; docs/warehouse.md).

``table`` labels are ``<env>.<table>`` identifiers, ``topic`` labels the
Kafka topics read.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECORDS_READ = Counter(
    "hookline_sink_records_read_total", "Kafka records the sink consumed", ["topic"]
)
ROWS_WRITTEN = Counter(
    "hookline_sink_rows_written_total", "Rows committed to an Iceberg table", ["table"]
)
ROWS_SKIPPED = Counter(
    "hookline_sink_rows_skipped_total",
    "Records not written: duplicate (key already landed), stale (orders_state already "
    "had that or a newer version), tombstone (a compacted key's deletion marker), "
    "unlandable (corrupt, or a value no column holds; logged)",
    ["table", "reason"],
)
COMMITS = Counter(
    "hookline_sink_commits_total",
    "Table commits by outcome: committed, conflict (another writer committed first; "
    "re-checked), fenced (another writer had moved a partition on; re-read), failed",
    ["table", "outcome"],
)
COMMIT_SECONDS = Histogram(
    "hookline_sink_commit_seconds",
    "Time of one table commit (checks, data files, catalog commit)",
    ["table"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
LAG = Gauge(
    "hookline_sink_lag_records",
    "Records in the topic (assigned partitions) not yet in the table",
    ["topic"],
)
BUFFERED = Gauge("hookline_sink_buffered_records", "Records read and waiting for the next commit")
LAST_COMMIT = Gauge(
    "hookline_sink_last_commit_timestamp_seconds",
    "Unix time of the table's last commit by this sink",
    ["table"],
)
