"""A worker that freezes (SIGSTOP) at its first send to a topic, past every check before it.

    python -m tests.support.frozen_send_worker TOPIC_SUFFIX worker --web-port N

The stale-writer hazard of issue 25 needs a worker frozen *between* its last
check (the membership confirmation, or a transaction begun) and the moment its
records leave: ``HOOKLINE_STOP_BEFORE_FLUSH`` (streams/batch.py) freezes it
before the membership check, which then catches it. So this wraps aiokafka's
producer, the one way every record leaves a worker (``send_batch``, as
streams/batch.py sends, and ``send``): the first time a record for a topic whose
name ends with TOPIC_SUFFIX is handed to it, the process stops itself, and on
SIGCONT the send goes on as it would after a long pause. Only the first such
send freezes; the worker runs unchanged otherwise.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from aiokafka import AIOKafkaProducer


def freeze_at_first_send(suffix: str) -> None:
    armed = [True]
    send_batch = AIOKafkaProducer.send_batch
    send = AIOKafkaProducer.send

    def maybe_freeze(topic: str) -> None:
        if armed[0] and topic.endswith(suffix):
            armed[0] = False
            print(f"frozen_send_worker: stopping at a send to {topic}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)

    async def frozen_send_batch(self: AIOKafkaProducer, batch: Any, topic: str, **kw: Any) -> Any:
        maybe_freeze(topic)
        return await send_batch(self, batch, topic, **kw)

    async def frozen_send(self: AIOKafkaProducer, topic: str, *args: Any, **kw: Any) -> Any:
        maybe_freeze(topic)
        return await send(self, topic, *args, **kw)

    AIOKafkaProducer.send_batch = frozen_send_batch  # type: ignore[method-assign]
    AIOKafkaProducer.send = frozen_send  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    suffix, *rest = argv
    freeze_at_first_send(suffix)
    from hookline.cli import main as hookline_main

    return hookline_main(rest)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
