"""MQTT ingestion: devices publish readings to `{prefix}/meters/{meterId}` and
`{prefix}/vehicles/{vehicleId}`; the engine stores them through the ingest writer (group
commit, or the JetStream queue in queue mode).

Every engine process joins one MQTT v5 shared subscription (`$share/{group}/...`), so the
broker hands each message to one of them. A QoS 1 message is acknowledged (PUBACK) only after
its readings are committed; until then the broker holds it, and hands it back when the
connection is lost first (on the next connection of the same client id, with the DUP flag).
A message whose readings are invalid (bad JSON, a validation error, a reading of another
device than the topic's) is answered on `{prefix}/errors/{meters|vehicles}/{id}` with the
error body HTTP answers, counted, and acknowledged: it never stops the subscriber.

While the database is down or the write queue full, a message's readings are submitted again
with backoff (0.1 s doubling to 10 s) and the message stays unacknowledged meanwhile; once
`mqtt_max_inflight` messages wait so, the broker sends no more (it queues them for the
group), so an outage turns into a backlog at the broker, not into lost readings.

paho's socket is driven by the event loop (paho's external-loop callbacks: `on_socket_open`,
`on_socket_register_write`, ...), not by its `loop_start` thread: messages are handled and
acknowledged where they are read, with no hand-off between threads under the GIL (the thread
took 15 % of the engine's CPU at 500 messages a second, and slowed the loop's validation).
Only the connection attempt itself, which blocks (TCP connect, TLS handshake), runs in a
thread; the reconnecting with backoff `loop_start` would do is `_keep_connected` here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from energy_engine.errors import ApiError, ErrorItem, error_json, outage
from energy_engine.ingest.models import MeterReading, VehicleReading
from energy_engine.ingest.parse import ReadingParser
from energy_engine.ingest.writer import Overloaded, Writer
from energy_engine.mqtt.client import RECONNECT_MAX_S, RECONNECT_MIN_S, Broker, new_client
from energy_engine.observability import metrics
from energy_engine.settings import Settings

log = logging.getLogger(__name__)

TRANSPORT = "mqtt"  # in the metrics
KINDS = ("meters", "vehicles")  # the topic level naming the stream
RETRY_MIN_S = 0.1
RETRY_MAX_S = 10.0
# How long a stop waits for messages being stored before it disconnects; those still waiting
# (the database down) stay unacknowledged and go to the next connection of this client id.
SHUTDOWN_GRACE_S = 5.0
MISC_EVERY_S = 1.0  # how often paho's keepalive (PINGREQ, a silent broker) is looked after
DISCONNECT_WAIT_S = 2.0  # how long a stop waits for the DISCONNECT to be written


def default_client_id() -> str:
    """A client id unique to this process: energy-engine-{host}-{pid}."""
    return f"energy-engine-{socket.gethostname()}-{os.getpid()}"


class Subscriber:
    """The engine's MQTT subscription: readings in, stored, acknowledged after commit."""

    def __init__(self, settings: Settings, writer: Writer) -> None:
        assert settings.mqtt_url is not None
        self.settings = settings
        self.writer = writer
        self.broker = Broker.from_url(settings.mqtt_url)
        self.prefix = settings.mqtt_topic_prefix.rstrip("/")
        self.client_id = settings.mqtt_client_id or default_client_id()
        self.parsers = {
            "meters": ReadingParser.for_type(MeterReading, settings),
            "vehicles": ReadingParser.for_type(VehicleReading, settings),
        }
        self.subscribed = asyncio.Event()  # set while the subscription is in place
        self._client: Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        # Counts the connections made: a message is acknowledged on the connection it came on
        # only; after a reconnection the broker sends it again, and its old packet id may
        # already name another message.
        self._connection = 0
        self._socket_closed = asyncio.Event()  # set while no socket is open
        self._socket_closed.set()
        self._delay = RECONNECT_MIN_S
        self._tasks: list[asyncio.Task[None]] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self._closing = False  # stopping: no more retries
        self._stopped = False  # stopped: no more messages taken

    @property
    def topics(self) -> list[str]:
        """The shared subscription's topic filters."""
        group = self.settings.mqtt_shared_group
        return [f"$share/{group}/{self.prefix}/{kind}/+" for kind in KINDS]

    @property
    def session_expiry_s(self) -> int:
        """How long the broker keeps this client's session after a disconnection: the
        setting for a configured (stable) client id, 0 for the per-process default one.

        Mosquitto goes on handing a shared subscription's messages to a member whose session
        lives on while it is disconnected (they wait there for it), so a session only a
        process that never comes back could resume would hold its share of every message
        until it expired, and then drop them."""
        if self.settings.mqtt_client_id is None:
            return 0
        return int(self.settings.mqtt_session_expiry.total_seconds())

    def start(self) -> None:
        """Connect in the background (again with backoff whenever the connection is lost) and
        subscribe."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        settings = self.settings
        client = new_client(
            self.broker,
            self.client_id,
            manual_ack=True,
            ca_file=settings.mqtt_ca_file,
            cert_file=settings.mqtt_cert_file,
            key_file=settings.mqtt_key_file,
        )
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        connect = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect.SessionExpiryInterval = self.session_expiry_s
        connect.ReceiveMaximum = settings.mqtt_max_inflight
        client.connect_async(
            self.broker.host,
            self.broker.port,
            keepalive=max(5, int(settings.mqtt_keepalive.total_seconds())),
            # A session this client id left (a restart) still holds the messages it had not
            # acknowledged: resume it.
            clean_start=self.session_expiry_s == 0,
            properties=connect,
        )
        self._client = client
        self._tasks = [
            asyncio.create_task(self._keep_connected(client)),
            asyncio.create_task(self._keep_alive(client)),
        ]

    async def close(self) -> None:
        """Let the messages in flight be stored (a bounded wait), then disconnect."""
        client = self._client
        if client is None:
            return
        self._closing = True
        if self.session_expiry_s == 0:
            # The session ends with the connection: stop new messages coming while those in
            # flight are stored. A kept session keeps its subscription instead, so that the
            # broker queues this process's share of the messages until it is back.
            client.unsubscribe(self.topics)
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=SHUTDOWN_GRACE_S)
        # Messages arriving from now on are left unacknowledged: the broker hands them out again.
        self._stopped = True
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        connected = client.socket() is not None
        client.disconnect()  # written by the event loop, which then closes the socket
        if connected:
            try:
                await asyncio.wait_for(self._socket_closed.wait(), DISCONNECT_WAIT_S)
            except TimeoutError:
                log.warning("the MQTT broker %s took no DISCONNECT in time", self.broker)
        self._client = None

    async def _keep_connected(self, client: Client) -> None:
        """Connect; whenever the socket closes, connect again after 1 s, doubling up to 30 s
        while attempts fail (reset once the broker accepts a connection)."""
        while True:
            self._socket_closed.clear()  # until the socket this attempt opens is closed
            try:
                # Blocking (TCP connect, TLS handshake): in a thread. The socket is handed to
                # the event loop by `_on_socket_open`.
                await asyncio.to_thread(client.reconnect)
            except (OSError, ValueError) as exc:  # refused, unreachable, TLS refused
                self._socket_closed.set()
                log.warning(
                    "cannot reach the MQTT broker %s (%s); again in %d s",
                    self.broker,
                    exc,
                    self._delay,
                )
                await asyncio.sleep(self._delay)
                self._delay = min(2 * self._delay, RECONNECT_MAX_S)
                continue
            await self._socket_closed.wait()
            await asyncio.sleep(self._delay)
            self._delay = min(2 * self._delay, RECONNECT_MAX_S)

    async def _keep_alive(self, client: Client) -> None:
        """paho's periodic work: PINGREQ when idle, and a broker that stopped answering taken
        as a lost connection."""
        while True:
            await asyncio.sleep(MISC_EVERY_S)
            client.loop_misc()

    # --- paho's callbacks (on the event loop, but for a socket opened or closed by a connection
    # attempt in its thread) -----------------------------------------------------------------

    def _on_loop(self, function: Any, *args: Any) -> None:
        """Run `function` on the event loop: now when called there, else as soon as it can."""
        loop = self._loop
        if threading.get_ident() == self._loop_thread:
            function(*args)
        elif loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(function, *args)

    def _on_socket_open(self, client: Client, _userdata: Any, sock: Any) -> None:
        self._on_loop(self._watch, client, sock.fileno())

    def _watch(self, client: Client, fd: int) -> None:
        if self._loop is not None and _is_open(client, fd):
            self._loop.add_reader(fd, client.loop_read)

    def _on_socket_close(self, _client: Client, _userdata: Any, sock: Any) -> None:
        self._on_loop(self._unwatch, sock.fileno())

    def _unwatch(self, fd: int) -> None:
        assert self._loop is not None
        self._loop.remove_reader(fd)
        self._loop.remove_writer(fd)
        self._socket_closed.set()

    def _on_socket_register_write(self, client: Client, _userdata: Any, sock: Any) -> None:
        self._on_loop(self._watch_writable, client, sock.fileno())

    def _watch_writable(self, client: Client, fd: int) -> None:
        if self._loop is not None and _is_open(client, fd):
            self._loop.add_writer(fd, client.loop_write)

    def _on_socket_unregister_write(self, _client: Client, _userdata: Any, sock: Any) -> None:
        self._on_loop(self._unwatch_writable, sock.fileno())

    def _unwatch_writable(self, fd: int) -> None:
        if self._loop is not None:
            self._loop.remove_writer(fd)

    def _on_connect(
        self,
        client: Client,
        _userdata: Any,
        _flags: ConnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.warning("MQTT broker %s refused the connection: %s", self.broker, reason)
            return
        if self._closing:  # a connection attempt that outlived the stop
            client.disconnect()
            return
        self._connection += 1
        self._delay = RECONNECT_MIN_S
        log.info("connected to MQTT broker %s as %s", self.broker, self.client_id)
        client.subscribe([(topic, SubscribeOptions(qos=1)) for topic in self.topics])

    def _on_subscribe(
        self,
        _client: Client,
        _userdata: Any,
        _mid: int,
        reasons: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        refused = [str(reason) for reason in reasons if reason.is_failure]
        if refused:  # e.g. an ACL without read access, or no shared subscriptions
            log.error("MQTT broker %s refused the subscription: %s", self.broker, refused)
            return
        self.subscribed.set()

    def _on_disconnect(
        self,
        _client: Client,
        _userdata: Any,
        _flags: DisconnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if not self._closing:
            log.warning("lost the MQTT broker %s (%s); reconnecting", self.broker, reason)
        self.subscribed.clear()

    def _on_message(self, _client: Client, _userdata: Any, message: MQTTMessage) -> None:
        if self._stopped:
            return
        task = asyncio.create_task(self._handle(message, self._connection))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _handle(self, message: MQTTMessage, connection: int) -> None:
        if message.dup:
            metrics.count_mqtt("redelivered")
        kind, device = self._route(message.topic)
        if kind not in self.parsers:  # not a topic of ours (a session left by another setup)
            log.warning("ignored an MQTT message on %s", message.topic)
            self._ack(message, connection)
            return
        try:
            meters, vehicles = self._readings(kind, device, message.payload)
        except ApiError as error:
            self._reject(kind, device, error)
            self._ack(message, connection)
            return
        try:
            stored = await self._store(meters, vehicles)
        except Exception:  # a bug, not an outage: said on the error topic, as HTTP says 500
            log.exception("storing the MQTT message on %s failed", message.topic)
            self._reject(
                kind, device, ApiError(500, "internal_error", "the engine failed; this is a bug")
            )
            self._ack(message, connection)
            return
        if stored:
            metrics.count_mqtt("accepted")
            self._ack(message, connection)

    def _route(self, topic: str) -> tuple[str, str]:
        """The stream (`meters` or `vehicles`) and the device id a topic names."""
        kind, _, device = topic[len(self.prefix) + 1 :].partition("/")
        return kind, device

    def _readings(
        self, kind: str, device: str, payload: bytes | bytearray
    ) -> tuple[list[MeterReading], list[VehicleReading]]:
        """The message's valid readings, or an ApiError naming every problem."""
        limit = self.settings.max_body_bytes
        if len(payload) > limit:
            raise ApiError(413, "body_too_large", f"the message exceeds {limit} bytes; split it")
        readings: list[Any] = self.parsers[kind].parse(payload)
        is_batch = payload.lstrip()[:1] == b"["
        field = "meterId" if kind == "meters" else "vehicleId"
        others = [
            ErrorItem(
                index=index if is_batch else None,
                field=field,
                reason=f"the topic is for {device!r}; publish each device's readings to its "
                "own topic",
            )
            for index, reading in enumerate(readings)
            if _device_of(reading) != device
        ]
        if others:
            raise ApiError(
                422,
                "device_mismatch",
                f"{len(others)} of the {len(readings)} readings belong to another device than "
                f"the topic's ({self.prefix}/{kind}/{device}); nothing was stored",
                others,
            )
        metrics.observe_batch(TRANSPORT, len(readings))
        return (readings, []) if kind == "meters" else ([], readings)

    def _reject(self, kind: str, device: str, error: ApiError) -> None:
        """Report `error` on the device's error topic and count it."""
        metrics.count_mqtt("rejected")
        stream = "meter" if kind == "meters" else "vehicle"
        metrics.count_rejected(TRANSPORT, stream, len({i.index for i in error.body.errors}) or 1)
        if self._client is not None:
            topic = f"{self.prefix}/errors/{kind}/{device}"
            self._client.publish(topic, error_json(error), qos=1)

    async def _store(self, meters: list[MeterReading], vehicles: list[VehicleReading]) -> bool:
        """Submit until committed (True); False when the subscriber stops first."""
        delay = RETRY_MIN_S
        while True:
            try:
                await self.writer.submit(meters, vehicles, TRANSPORT)
                return True
            except Overloaded:
                pass  # the queue is full, or the writer is stopping
            except Exception as exc:
                if outage(exc) is None:
                    raise
                # The writer has logged the outage (one line per interval).
            if self._closing:
                return False
            await asyncio.sleep(delay)
            delay = min(2 * delay, RETRY_MAX_S)

    def _ack(self, message: MQTTMessage, connection: int) -> None:
        if message.qos == 0 or self._client is None:
            return
        if connection == self._connection:
            self._client.ack(message.mid, message.qos)


def _is_open(client: Client, fd: int) -> bool:
    """Whether `fd` is still the client's socket (a hand-over from the connecting thread may
    arrive after that socket was closed)."""
    sock = client.socket()
    return sock is not None and sock.fileno() == fd


def _device_of(reading: MeterReading | VehicleReading) -> str:
    return reading.meter_id if isinstance(reading, MeterReading) else reading.vehicle_id
