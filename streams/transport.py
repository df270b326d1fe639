"""Faust's Kafka transport with a short fetch wait, for low end-to-end latency.

faust-streaming hardcodes ``fetch_max_wait_ms=1500`` for its consumer: on a
quiet topic each fetch waits that long for data to accumulate. hookline's
pipeline is four consume hops, so an idle worker took about 1.75 s from a
webhook to its order state. A 100 ms wait keeps the same throughput under load
(fetches return as soon as data is there) and brings an idle delivery well
under half a second.

Registered under the ``faust.transports`` entry point as ``hookline``;
streams/app.py selects it with a ``hookline://`` consumer URL.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as driver

FETCH_MAX_WAIT_MS = 100


class ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Read when the consumer starts its fetcher; not otherwise exposed.
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer


class Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(driver.Transport):
    Consumer = Consumer
