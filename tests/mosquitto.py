"""A Mosquitto broker of the tests' own on a free loopback port, and a small test client."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import queue
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paho.mqtt.client import Client, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def mosquitto(
    directory: Path, access: str = "allow_anonymous true\n", port: int | None = None
) -> Iterator[str]:
    """Run a broker (no persistence; `access`: its authentication lines; on `port`, else a
    free one; its process id in `directory`/mosquitto.pid) until the block ends; yields its
    mqtt:// URL."""
    port = port or free_port()
    config = directory / "mosquitto.conf"
    config.write_text(
        # As root, mosquitto would switch to the `mosquitto` user, who may not read the test's
        # files (password, ACL); it stays the test's user instead.
        f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\n{access}persistence false\n"
        f"pid_file {directory / 'mosquitto.pid'}\n"
        "log_dest stderr\nlog_type error\nlog_type warning\n"
    )
    log = (directory / "mosquitto.log").open("wb")
    process = subprocess.Popen([MOSQUITTO, "-c", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            assert process.poll() is None, (directory / "mosquitto.log").read_text()
            assert time.monotonic() < deadline, "mosquitto did not start listening"
            time.sleep(0.02)
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)
        log.close()


@dataclass
class Device:
    """A test MQTT client: publishes with QoS 1 (waiting for the broker's PUBACK) and
    collects the messages of the topics it subscribes to."""

    client: Client
    received: queue.Queue[MQTTMessage]

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 1; returns once the broker has it."""
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def subscribe(self, topic: str) -> None:
        """Subscribe at QoS 1 and wait until the broker confirms."""
        done = queue.Queue[int]()
        self.client.on_subscribe = lambda *_: done.put(1)
        self.client.subscribe(topic, qos=1)
        done.get(timeout=5)

    async def next_message(self, within_s: float = 10) -> MQTTMessage:
        """The next message received."""
        deadline = time.monotonic() + within_s
        while True:
            with contextlib.suppress(queue.Empty):
                return self.received.get_nowait()
            assert time.monotonic() < deadline, f"no message within {within_s} s"
            await asyncio.sleep(0.01)


@contextlib.contextmanager
def device(url: str, username: str | None = None, password: str | None = None) -> Iterator[Device]:
    """A connected test client of the broker at `url` (mqtt://127.0.0.1:PORT)."""
    port = int(url.rsplit(":", 1)[1])
    client = Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    if username is not None:
        client.username_pw_set(username, password)
    received: queue.Queue[MQTTMessage] = queue.Queue()

    def on_message(_client: Client, _userdata: Any, message: MQTTMessage) -> None:
        received.put(message)

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        yield Device(client, received)
    finally:
        client.disconnect()
        client.loop_stop()
