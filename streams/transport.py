"""Faust's Kafka transport: a short fetch wait, and end offsets a recovery can trust.

faust-streaming hardcodes ``fetch_max_wait_ms=1500`` for its consumer: on a
quiet topic each fetch waits that long for data to accumulate. hookline's
pipeline is four consume hops, so an idle worker took about 1.75 s from a
webhook to its order state. A 100 ms wait keeps the same throughput under load
(fetches return as soon as data is there) and brings an idle delivery well
under half a second.

Table recovery reads each changelog up to its end offset; those are taken
from a fetch's high watermark as well as from ListOffsets (see
streams/end_offsets.py for why).

Registered under the ``faust.transports`` entry point as ``hookline``;
streams/app.py selects it with a ``hookline://`` consumer URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from faust.transport.drivers import aiokafka as driver
from faust.types import TP
from hookline.streams.end_offsets import fetched_end_offsets

FETCH_MAX_WAIT_MS = 100


class ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Read when the consumer starts its fetcher; not otherwise exposed.
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        reported = await super()._highwaters(partitions)
        if self.consumer.in_transaction:
            return reported
        client = self._ensure_consumer()._client
        settings = {
            "bootstrap_servers": client._bootstrap_servers,
            "client_id": f"{client._client_id}-end-offsets",
            "security_protocol": client._security_protocol,
            "ssl_context": client._ssl_context,
            "sasl_mechanism": client._sasl_mechanism,
            "sasl_plain_username": client._sasl_plain_username,
            "sasl_plain_password": client._sasl_plain_password,
        }
        return await fetched_end_offsets(settings, reported)


class Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(driver.Transport):
    Consumer = Consumer
