"""streams/transport.py: records Faust's flow control clears from the queues are read again.

Uses mode's real ``FlowControlEvent`` and ``FlowControlQueue``: what is
tested is that a ``resume()`` (which clears every managed queue) rewinds the
input partitions whose delivered records it dropped.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from faust.types import TP
from hookline.streams.positions import Positions, Verdict
from hookline.streams.transport import read_cleared_records_again
from mode.utils.queues import FlowControlEvent, FlowControlQueue

RAW = TP("production.webhooks.raw", 1)
FACTS = TP("production.hookline.transaction-facts", 0)
CHANGELOG = TP("production.hookline.orders-changelog", 0)


@dataclass
class Message:
    tp: TP
    offset: int

    @property
    def topic(self) -> str:
        return self.tp.topic


@dataclass
class Event:
    message: Message


def deliver(queue: FlowControlQueue, positions: Positions[TP], tp: TP, offsets: range) -> None:
    for offset in offsets:
        assert positions.check(tp, offset) is Verdict.DELIVER
        queue.put_nowait(Event(Message(tp, offset)))
        positions.delivered(tp, offset)


async def test_records_cleared_on_resume_are_expected_again() -> None:
    flow = FlowControlEvent(initially_suspended=False)
    intake: FlowControlQueue = FlowControlQueue(
        maxsize=1000, flow_control=flow, clear_on_resume=True
    )
    transactions: FlowControlQueue = FlowControlQueue(
        maxsize=1000, flow_control=flow, clear_on_resume=True
    )
    positions: Positions[TP] = Positions()
    rewound: list[tuple[TP, int]] = []
    read_cleared_records_again(
        flow, positions, lambda topic: "changelog" not in topic, lambda *a: rewound.append(a)
    )
    # Recovery sought the partitions, records were delivered...
    positions.expect({RAW: 154, FACTS: 48})
    deliver(intake, positions, RAW, range(154, 200))
    deliver(transactions, positions, FACTS, range(48, 60))
    transactions.put_nowait(Event(Message(CHANGELOG, 7)))  # not an input: not tracked
    # ...and the stage took some of them before recovery resumed the flow once more.
    for _ in range(10):
        transactions.get_nowait()
    flow.resume()
    assert intake.empty()
    assert transactions.empty()
    assert sorted(rewound) == sorted([(RAW, 154), (FACTS, 58)])
    assert positions.expected(RAW) == 154
    assert positions.expected(FACTS) == 58
    assert positions.check(RAW, 200) is Verdict.SKIPPED  # fetched on: read again from 154


async def test_a_clear_of_empty_queues_rewinds_nothing() -> None:
    flow = FlowControlEvent(initially_suspended=False)
    queue: FlowControlQueue = FlowControlQueue(maxsize=10, flow_control=flow, clear_on_resume=True)
    positions: Positions[TP] = Positions()
    rewound: list[tuple[TP, int]] = []
    read_cleared_records_again(flow, positions, lambda topic: True, lambda *a: rewound.append(a))
    positions.expect({RAW: 5})
    deliver(queue, positions, RAW, range(5, 8))
    while not queue.empty():
        await asyncio.wait_for(queue.get(), 1)
    flow.resume()
    assert rewound == []
    assert positions.expected(RAW) == 8
