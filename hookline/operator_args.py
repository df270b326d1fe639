"""The selection flags ``hookline redrive`` and ``hookline replay`` share.

Both commands pick records by environment, source and a time range, and both
must refuse a bad selection before touching Kafka: a typo in ``--source``
would otherwise select nothing and look like success, and an inverted range
would do the same.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from hookline.core.settings import Settings
from hookline.core.sources import ENVIRONMENTS, Source
from hookline.tail import iso_ms, parse_since


class SelectionError(ValueError):
    """The flags select nothing sensible; the message names the flag."""


@dataclass(frozen=True)
class TimeRange:
    """``since <= t < until`` in epoch milliseconds; None is open."""

    since_ms: int | None = None
    until_ms: int | None = None

    def __post_init__(self) -> None:
        if (
            self.since_ms is not None
            and self.until_ms is not None
            and self.since_ms >= self.until_ms
        ):
            raise SelectionError(
                f"--since {iso_ms(self.since_ms)} is not before --until {iso_ms(self.until_ms)}"
            )

    def __contains__(self, at_ms: int) -> bool:
        if self.since_ms is not None and at_ms < self.since_ms:
            return False
        return not (self.until_ms is not None and at_ms >= self.until_ms)

    def describe(self) -> str:
        since = iso_ms(self.since_ms) if self.since_ms is not None else "the beginning"
        until = iso_ms(self.until_ms) if self.until_ms is not None else "now"
        return f"from {since} until {until}"


def time_arg(flag: str) -> object:
    """An argparse ``type`` for ``flag``: ISO-8601 (naive = UTC) or a duration back from now."""

    def parse(text: str) -> int:
        try:
            return parse_since(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected an ISO-8601 time (2026-11-21T10:00:00Z, no zone = UTC) "
                "or a duration back from now (30s, 15m, 2h, 7d)"
            ) from None

    parse.__name__ = flag  # argparse names the type in its message
    return parse


DEFAULT_TIMEOUT_S = 60.0


def add_selection_arguments(
    parser: argparse.ArgumentParser, on_what: str, since_required: bool = False
) -> None:
    parser.add_argument(
        "--env",
        required=True,
        choices=ENVIRONMENTS,
        help="the environment whose topics to use (required: never a default for this)",
    )
    parser.add_argument(
        "--source",
        action="append",
        metavar="NAME",
        help="only this source (a name from the sources file); repeat for several",
    )
    parser.add_argument(
        "--since",
        type=time_arg("--since"),
        required=since_required,
        metavar="TIME",
        help=("required: " if since_required else "")
        + f"only records whose {on_what} is at or after TIME: ISO-8601 (no zone = UTC) "
        "or a duration back from now (90s, 15m, 2h, 7d)",
    )
    parser.add_argument(
        "--until",
        type=time_arg("--until"),
        metavar="TIME",
        help=f"only records whose {on_what} is before TIME (same forms as --since)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be re-published (JSON lines on stdout) and send nothing",
    )


def add_wait_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"how long to wait for the worker to process them (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="re-publish and stop: do not wait for the worker's verdict",
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of seconds > 0")
    return value


def check_sources(
    names: list[str] | None, environment: str, sources: Mapping[str, Source]
) -> frozenset[str] | None:
    """The selected source names, each known and of ``environment``; None selects all."""
    if not names:
        return None
    for name in names:
        source = sources.get(name)
        if source is None:
            raise SelectionError(
                f"--source {name!r} is not in the sources file (HOOKLINE_SOURCES); "
                f"it has: {', '.join(sorted(sources))}"
            )
        if source.environment != environment:
            raise SelectionError(
                f"--source {name!r} is a {source.environment} source, not {environment}"
            )
    return frozenset(names)


@dataclass(frozen=True)
class OperatorSetup:
    """What redrive and replay both need before they touch Kafka."""

    settings: Settings
    bootstrap: str
    sources: Mapping[str, Source]


def operator_setup() -> OperatorSetup:
    """Settings, broker and sources; SelectionError (exit 2) when one is missing or bad."""
    from hookline.core.settings import SettingsError
    from hookline.core.sources import SourcesError, load_sources

    try:
        settings = Settings.from_env()
        bootstrap = settings.require_bootstrap()
        sources = load_sources(settings.require_sources(), with_secrets=False)
    except (SettingsError, SourcesError) as exc:
        raise SelectionError(str(exc)) from None
    return OperatorSetup(settings, bootstrap, sources)


def run_operator(work: Coroutine[Any, Any, int], interrupted: str) -> int:
    """Run a command's coroutine; its failures become one line and an exit code.

    1: Kafka could not be read, written or waited for; 130: Ctrl-C (with
    ``interrupted``, which says whether running it again is safe); 0 when
    stdout was closed early (``... --dry-run | head``).
    """
    from hookline.raw_publisher import PublishError
    from hookline.topic_reader import ReadError
    from hookline.worker_wait import WaitError

    try:
        return asyncio.run(work)
    except (ReadError, PublishError, WaitError) as exc:
        print(f"hookline: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    except BrokenPipeError:
        sys.stderr.close()
        return 0
