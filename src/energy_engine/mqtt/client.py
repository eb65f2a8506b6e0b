"""An MQTT v5 client for a broker URL (`mqtt://user:password@host:port`, `mqtts://` for TLS).

paho-mqtt rather than aiomqtt: the subscriber must acknowledge a QoS 1 message only once its
readings are committed, and aiomqtt 2.x acknowledges each message itself (manual acks are an
open request there, empicano/aiomqtt#345); paho-mqtt 2 has `manual_ack` and `ack(mid, qos)`.
The engine's subscriber drives paho's socket from the event loop (`mqtt.subscriber`); the
simulator's publisher runs paho's own network thread (`loop_start`).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from paho.mqtt.client import Client
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
# Reconnection after a lost connection or a refused one: 1 s, doubling up to 30 s (paho's
# thread for the simulator; `Subscriber._keep_connected` for the engine).
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30


@dataclass(frozen=True, slots=True)
class Broker:
    """Where the broker is and how to log in."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> Broker:
        """The broker of an `mqtt://` or `mqtts://` URL."""
        parts = urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ValueError("give an mqtt:// or mqtts:// URL with a host")
        return cls(
            host=parts.hostname,
            port=parts.port or DEFAULT_PORTS[parts.scheme],
            tls=parts.scheme == "mqtts",
            username=None if parts.username is None else unquote(parts.username),
            password=None if parts.password is None else unquote(parts.password),
        )

    def __str__(self) -> str:  # for logs: never the password
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def new_client(
    broker: Broker,
    client_id: str,
    *,
    manual_ack: bool = False,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
) -> Client:
    """A paho client for `broker` (MQTT v5, credentials and TLS set), not yet connected."""
    client = Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5,
        manual_ack=manual_ack,
    )
    if broker.username is not None:
        client.username_pw_set(broker.username, broker.password)
    if broker.tls:
        context = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
        if cert_file is not None:
            context.load_cert_chain(str(cert_file), None if key_file is None else str(key_file))
        client.tls_set_context(context)
    client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
    return client
