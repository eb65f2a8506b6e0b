"""Publish a simulated fleet's readings over MQTT, as devices would: each reading to its own
device's topic (`{prefix}/meters/{meterId}`, `{prefix}/vehicles/{vehicleId}`) at QoS 1.

What is counted as accepted is what the broker acknowledged; the engine stores it after that
(invalid readings go to `{prefix}/errors/...`, which the simulator does not read).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from paho.mqtt.client import Client, MQTTMessageInfo

from energy_engine.mqtt.client import Broker, new_client
from energy_engine.settings import Settings
from energy_engine.simulate.fleet import Reading
from energy_engine.simulate.send import GaveUp
from energy_engine.simulate.stats import Stats

ACK_TIMEOUT_S = 30.0  # a broker that takes longer to acknowledge a batch has failed
IN_FLIGHT = 1000  # messages published and not yet acknowledged by the broker


class MqttReadings:
    """Sends batches of readings as one QoS 1 message a reading."""

    def __init__(self, client: Client, prefix: str) -> None:
        self.client = client
        self.prefix = prefix.rstrip("/")

    def topic(self, reading: Reading) -> str:
        """The reading's device topic."""
        if "meterId" in reading:
            return f"{self.prefix}/meters/{reading['meterId']}"
        return f"{self.prefix}/vehicles/{reading['vehicleId']}"

    async def send(self, readings: list[Reading], stats: Stats) -> None:
        """Publish `readings` and count those the broker acknowledged."""
        sent = [
            self.client.publish(self.topic(reading), orjson.dumps(reading), qos=1)
            for reading in readings
        ]
        acknowledged = await asyncio.to_thread(_wait, sent)
        stats.accepted += acknowledged
        if acknowledged < len(readings):
            stats.rejected += len(readings) - acknowledged
            stats.fail(f"the MQTT broker acknowledged {acknowledged} of {len(readings)} readings")


def _wait(sent: list[MQTTMessageInfo]) -> int:
    """How many of `sent` the broker acknowledged within ACK_TIMEOUT_S."""
    deadline = time.monotonic() + ACK_TIMEOUT_S
    done = 0
    for info in sent:
        try:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        except (RuntimeError, ValueError):  # lost connection, or refused by the client
            continue
        done += info.is_published()
    return done


@asynccontextmanager
async def publisher(url: str, settings: Settings) -> AsyncIterator[MqttReadings]:
    """A connected publisher for the broker at `url` (mqtt:// or mqtts://), with the topic
    prefix and TLS files of `settings`."""
    broker = Broker.from_url(url)
    client = new_client(
        broker,
        f"energy-simulate-{os.getpid()}",
        ca_file=settings.mqtt_ca_file,
        cert_file=settings.mqtt_cert_file,
        key_file=settings.mqtt_key_file,
    )
    client.max_inflight_messages_set(IN_FLIGHT)
    try:
        await asyncio.to_thread(client.connect, broker.host, broker.port)
    except OSError as exc:
        raise GaveUp(f"cannot reach the MQTT broker {broker}: {exc!r}") from None
    client.loop_start()
    try:
        yield MqttReadings(client, settings.mqtt_topic_prefix)
    finally:
        client.disconnect()
        await asyncio.to_thread(client.loop_stop)
