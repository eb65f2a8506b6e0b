"""MQTT load for scenario 18: publisher processes that publish array payloads at QoS 1.

paho-mqtt is pure Python, so one process caps the rate at what one core builds and sends;
the load comes from several processes (`run`), each building every payload before the clock
starts and then publishing them with a window of messages awaiting the broker's PUBACK.
One message holds the readings of one device (the topic names it), one a second from the
top of the current UTC hour, as live devices report (see batch.lua).

Each process is `python -m benchmarks.mqttload PORT PREFIX PUBLISHER MESSAGES PER_MESSAGE
START`: it prints `ready` once connected with its payloads built, publishes when it reads a
line on stdin, and prints one `BENCH_RESULT {json}` line.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from paho.mqtt.client import Client
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from benchmarks.harness import RESULT_MARK, BenchError

ROOT = Path(__file__).resolve().parent.parent
WINDOW = 1000  # QoS 1 messages a publisher has awaiting their PUBACK
TOPIC_PREFIX = "energy"  # the engine's default ENERGY_MQTT_TOPIC_PREFIX


@dataclass(frozen=True, slots=True)
class Published:
    """What the publishers of one run did."""

    acknowledged: int  # messages the broker acknowledged (PUBACK)
    seconds: float  # from the start signal until the slowest publisher had every PUBACK
    began: float  # time.perf_counter() of the start signal, in the calling process
    start: datetime  # the time of each message's first reading


def hour_start() -> datetime:
    """The top of the current UTC hour: the first reading's time."""
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def payloads(
    prefix: str, publisher: int, messages: int, per_message: int, start: datetime
) -> list[tuple[str, bytes]]:
    """(topic, payload) of each message: meters and vehicles by turns, each its own device."""
    times = [
        (start + timedelta(seconds=s)).strftime("%Y-%m-%dT%H:%M:%SZ") for s in range(per_message)
    ]
    items = []
    for n in range(messages):
        if n % 2:
            device = f"{prefix}-{publisher}-m{n}"
            body = [
                {"meterId": device, "kwhConsumedAc": s * 0.003, "voltage": 230.0, "timestamp": t}
                for s, t in enumerate(times)
            ]
            items.append((f"{TOPIC_PREFIX}/meters/{device}", orjson.dumps(body)))
        else:
            device = f"{prefix}-{publisher}-v{n}"
            body = [
                {
                    "vehicleId": device,
                    "soc": 20.0 + s % 80,
                    "kwhDeliveredDc": s * 0.0025,
                    "batteryTemp": 25.0,
                    "timestamp": t,
                }
                for s, t in enumerate(times)
            ]
            items.append((f"{TOPIC_PREFIX}/vehicles/{device}", orjson.dumps(body)))
    return items


def run(url: str, prefix: str, *, publishers: int, messages: int, per_message: int) -> Published:
    """Publish `messages` messages of `per_message` readings from `publishers` processes to the
    broker at `url` (mqtt://127.0.0.1:PORT), all starting at once; returns when all are done."""
    port = url.rsplit(":", 1)[1]
    first = hour_start()
    start = str(first.timestamp())
    share = messages // publishers
    command = [sys.executable, "-m", "benchmarks.mqttload", port, prefix]
    counts = [share + (number < messages % publishers) for number in range(publishers)]
    processes = [
        subprocess.Popen(
            [*command, str(number), str(counts[number]), str(per_message), start],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for number in range(publishers)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                raise BenchError(f"an MQTT publisher did not start: {process.communicate()[1]}")
        began = time.perf_counter()
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        results = []
        for process in processes:
            out, err = process.communicate(timeout=600)
            lines = [line for line in out.splitlines() if line.startswith(RESULT_MARK)]
            if process.returncode != 0 or not lines:
                raise BenchError(f"an MQTT publisher failed ({process.returncode}): {err}")
            results.append(orjson.loads(lines[-1][len(RESULT_MARK) :]))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return Published(
        acknowledged=sum(r["acknowledged"] for r in results),
        seconds=max(r["seconds"] for r in results),
        began=began,
        start=first,
    )


def run_once(url: str, items: list[tuple[str, bytes]]) -> None:
    """Publish `items` at QoS 1 from this process, each once the one before is acknowledged."""
    client = Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect("127.0.0.1", int(url.rsplit(":", 1)[1]))
    client.loop_start()
    try:
        if not connected.wait(10):
            raise BenchError("no connection to the benchmark's MQTT broker in 10 s")
        for topic, payload in items:
            client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def publish(port: int, items: list[tuple[str, bytes]]) -> tuple[int, float]:
    """Connect, say `ready`, wait for the start line, publish `items` at QoS 1; returns the
    messages the broker acknowledged and the seconds from the start until the last PUBACK."""
    client = Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.max_inflight_messages_set(WINDOW)
    slots = threading.Semaphore(WINDOW)
    connected, finished = threading.Event(), threading.Event()
    answered = [0, 0]  # PUBACKs, of which successes (v5: "no matching subscribers" is one)

    def on_connect(*_: Any) -> None:
        connected.set()

    def on_publish(
        _client: Client, _userdata: Any, _mid: int, reason: ReasonCode, _props: Properties
    ) -> None:
        answered[0] += 1
        answered[1] += not reason.is_failure
        slots.release()
        if answered[0] == len(items):
            finished.set()

    client.on_connect = on_connect
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        if not connected.wait(10):
            raise SystemExit("no connection to the broker in 10 s")
        print("ready", flush=True)
        sys.stdin.readline()
        began = time.perf_counter()
        for topic, payload in items:
            slots.acquire()
            client.publish(topic, payload, qos=1)
        finished.wait(300)
        return answered[1], time.perf_counter() - began
    finally:
        client.disconnect()
        client.loop_stop()


def main(argv: list[str]) -> None:
    """One publisher process (see the module's docstring)."""
    port, prefix, publisher, messages, per_message, start = argv
    at = datetime.fromtimestamp(float(start), UTC)
    items = payloads(prefix, int(publisher), int(messages), int(per_message), at)
    acknowledged, seconds = publish(int(port), items)
    result = {"acknowledged": acknowledged, "seconds": seconds}
    print(RESULT_MARK + orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
