"""The HTTP server: uvicorn, plus the request timeouts it lacks and a shutdown that drops no
request it accepted.

uvicorn (0.54, httptools) bounds only the idle time between two requests of a keep-alive
connection. A connection that sends nothing, or its request head or body a byte at a time, is
held until the client gives up: 200 such connections stayed open for as long as they kept
trickling. `GuardedProtocol` adds the two missing timers (head, body) to uvicorn's own httptools
protocol; uvicorn has no hook for them, so a small subclass is the least code that does it.

A graceful stop must not reset a request either. uvicorn's shutdown closes every idle keep-alive
connection at once and asks busy ones to close after their response. A request a client has
just sent on an "idle" connection (still in the kernel's buffer) is then reset, and a client
told to reconnect may land in the accept queue of a listening socket that is about to close,
and be reset with it. With several workers, uvicorn's supervisor also keeps its own copy of the
listening socket open until every worker has exited: connections queue up there for the whole
drain and are all reset at the end. In tests/e2e/test_server.py 1 of 16 clients was reset with
one worker, 16 of 16 with two; with only the supervisor fixed, 4 and 1. So: the
supervisor closes its copy first (`Supervisor`); every worker closes its listener at once and
only after LISTENERS_CLOSED_S (every worker's listener is closed by then, so a client told to
reconnect is refused rather than queued) does it tell its connections to close, answering any
request already on its way.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import signal
import socket
import time
from asyncio import TimerHandle
from types import FrameType
from typing import Any, cast

import uvicorn
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState
from uvicorn.supervisors.multiprocess import Multiprocess

from energy_engine.asgi import Receive, Scope, Send, answer
from energy_engine.errors import ApiError, error_json
from energy_engine.observability import metrics
from energy_engine.settings import Settings

log = logging.getLogger(__name__)

# Each worker closes its listener when its main loop notices the signal (every 0.1 s), the
# workers get theirs from the supervisor within milliseconds of each other; half a second
# leaves room for an event loop busy with load.
LISTENERS_CLOSED_S = 0.5
# How long a connection idle at shutdown stays open for a request already on its way: a
# client that posts in a loop sends its next request within milliseconds of an answer.
IDLE_GRACE_S = 0.5

_TIMEOUT_BODY = (
    b'{"error":"request_timeout","message":"the request took too long to arrive","errors":[]}'
)
REQUEST_TIMEOUT = b"".join(
    [
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n",
        b"content-length: %d\r\nconnection: close\r\n\r\n" % len(_TIMEOUT_BODY),
        _TIMEOUT_BODY,
    ]
)


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a time limit on each request's head and body, and a
    shutdown that answers what is already on its way (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        header_timeout: float,
        body_timeout: float,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        # uvicorn's own limit answers a plain-text 503 and logs a line per request: the limit
        # is applied here instead, with the engine's error body and Retry-After.
        self.max_connections = self.limit_concurrency
        self.limit_concurrency = None
        self._request_timer: TimerHandle | None = None
        self._stopping = False

    def _start_timer(self, seconds: float, *, body: bool) -> None:
        self._cancel_timer()
        self._request_timer = self.loop.call_later(seconds, self._request_timed_out, body)

    def _cancel_timer(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None

    def _request_timed_out(self, body: bool) -> None:
        self._request_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        # Answer 408 unless a response is under way (or, for a body, already sent).
        if (body and not cycle.response_started) or (
            not body and (cycle is None or cycle.response_complete)
        ):
            self.transport.write(REQUEST_TIMEOUT)
        self.transport.close()  # the application, if waiting for the body, sees a disconnect

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock for the first request's head: a silent connection counts too."""
        super().connection_made(transport)
        self._start_timer(self.header_timeout, body=False)

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the clock."""
        self._cancel_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        """A request's first byte: its head must be complete within the header timeout."""
        super().on_message_begin()
        if self._request_timer is None:
            self._start_timer(self.header_timeout, body=False)

    def on_headers_complete(self) -> None:
        """The head is in: the body must be complete within the body timeout. Past the
        connection limit, the request is answered by `_busy` instead of the engine."""
        self._start_timer(self.body_timeout, body=True)
        app = self.app
        limit = self.max_connections
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            self.app = _busy
            _log_busy(limit)
        try:
            super().on_headers_complete()  # starts (or queues) the request with `self.app`
        finally:
            self.app = app
        if self._stopping and self.cycle is not None:
            self.cycle.keep_alive = False

    def on_message_complete(self) -> None:
        """The whole request is in."""
        self._cancel_timer()
        super().on_message_complete()

    def shutdown(self) -> None:
        """Called by uvicorn once its listener is closed: see the module docstring."""
        self.loop.call_later(LISTENERS_CLOSED_S, self._stop)

    def _stop(self) -> None:
        if self.transport.is_closing():
            return
        self._stopping = True
        if self.cycle is None or self.cycle.response_complete:
            # Idle: a request may be on its way. Reading it cancels this timer, and it is
            # answered with `connection: close`.
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(
                IDLE_GRACE_S, self.timeout_keep_alive_handler
            )
        else:
            self.cycle.keep_alive = False


_BUSY = error_json(
    ApiError(503, "too_many_connections", "the server holds too many connections; retry shortly")
)
_busy_logged_at = -math.inf


async def _busy(scope: Scope, receive: Receive, send: Send) -> None:
    """The answer past `ENERGY_HTTP_MAX_CONNECTIONS`: a 503 that closes the connection."""
    await answer(send, 503, _BUSY, {"Retry-After": "1", "Connection": "close"})


def _log_busy(limit: int) -> None:
    # One line every 10 s: under overload every request would log one.
    global _busy_logged_at
    now = time.monotonic()
    if now - _busy_logged_at >= 10:
        _busy_logged_at = now
        log.warning("more than %d connections: answering 503 until some close", limit)


class Supervisor(Multiprocess):
    """uvicorn's worker supervisor, closing its copy of the listening socket on SIGINT/SIGTERM
    (see the module docstring)."""

    def __init__(self, config: Config, sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets)
        for stop in (signal.SIGINT, signal.SIGTERM):
            signal.signal(stop, self._stop)
        self._pids: set[int | None] = set()

    def keep_subprocess_alive(self) -> None:
        """uvicorn's replacement of dead workers (every 0.5 s), then the live gauges of every
        worker gone since the last round (died, or replaced on SIGHUP) are dropped."""
        super().keep_subprocess_alive()
        pids = {process.pid for process in self.processes}
        for pid in self._pids - pids:
            if pid is not None:
                metrics.process_dead(pid)
        self._pids = pids

    def _stop(self, sig: int, frame: FrameType | None) -> None:
        # Only close and queue here: the supervisor's loop acts on the queue within 0.5 s.
        for sock in self.sockets:
            sock.close()
        self.signal_queue.append(sig)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn settings the engine runs with: protocol, limits and timeouts."""
    protocol = functools.partial(
        GuardedProtocol,
        header_timeout=settings.http_header_timeout.total_seconds(),
        body_timeout=settings.http_body_timeout.total_seconds(),
    )
    return {
        "loop": "uvloop",
        # A partial, not a class: uvicorn only calls it, and it pickles for the workers.
        "http": cast(type[asyncio.Protocol], protocol),
        "timeout_keep_alive": math.ceil(settings.http_keep_alive.total_seconds()),
        "limit_concurrency": settings.http_max_connections,
        "backlog": settings.http_backlog,
        "timeout_graceful_shutdown": math.ceil(settings.shutdown_timeout.total_seconds()),
    }


def run_workers(app: str, workers: int, **options: Any) -> None:
    """Serve the app factory `app` from `workers` processes sharing one listening socket."""
    config = uvicorn.Config(app, factory=True, workers=workers, **options)
    sock = config.bind_socket()
    Supervisor(config, sockets=[sock]).run()
