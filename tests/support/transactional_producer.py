"""A stand-in for aiokafka's transactional producer: records the calls a transaction makes.

For the unit tests of streams/exactly_once.py, which check the order of a
transaction's steps and what happens when one fails; the steps themselves
run against Apache Kafka in the integration tests.
"""

from __future__ import annotations

from typing import Any


class FakeTransactionalProducer:
    def __init__(
        self, fail_on: str | None = None, error: BaseException | None = None, **settings: Any
    ) -> None:
        self.settings = settings
        self.calls: list[tuple[str, Any]] = []
        self.fail_on = fail_on
        self.error = error
        self.stopped = False

    def _step(self, name: str, detail: Any = None) -> None:
        self.calls.append((name, detail))
        if name == self.fail_on and self.error is not None:
            raise self.error

    async def begin_transaction(self) -> None:
        self._step("begin")

    async def send_offsets_to_transaction(self, offsets: dict[Any, int], group_id: str) -> None:
        self._step(
            "offsets", ({(tp.topic, tp.partition): o for tp, o in offsets.items()}, group_id)
        )

    async def commit_transaction(self) -> None:
        self._step("commit")

    async def abort_transaction(self) -> None:
        self._step("abort")

    async def start(self) -> None:
        self._step("init")

    async def stop(self) -> None:
        self.stopped = True

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]
