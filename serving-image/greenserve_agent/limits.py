"""Connection limits for the agent's listeners, so that no client can starve a replica.

aiohttp has no connection cap and, by default, keeps an idle connection for an hour; 1,100 idle clients
exhausted the agent's 1,024 file descriptors and readiness, metrics and predictions all timed out. Here
each listener (the REST front and the metrics/readiness side port, one ``Listener`` each) wraps aiohttp's
protocol factory:

* **Cap** below the file-descriptor limit (`fd_budget_cap`). Past it, a new connection first evicts the
  oldest one that is not serving a request (idle keep-alive, or still sending its headers): an idle
  connection holds nothing, and a client may always see a keep-alive connection closed. Only when every
  connection is busy serving a request does the newcomer get a ``503`` and is closed at once.
* **Header-read timeout**: from a request's first byte to its complete headers (slowloris).
* **Idle timeout**: aiohttp's keep-alive timeout, which also covers a connection that never sends.

A connection counts as busy from its handler's start (the middleware of `serving`) until it ends, and
for `IDLE_GRACE_S` after that, so that the response being written is never cut by an eviction.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

# A connection stays un-evictable this long after its last request ended: its response may still be
# in the transport's buffer.
IDLE_GRACE_S = 1.0
# Connections asyncio accepts in one burst, before the cap sees them (the listen backlog).
BACKLOG = 64
# File descriptors kept out of the front's cap: the process' own (listening sockets, the model server's
# pipes, logs: 64), the metrics listener's default cap (64), and per listener one accepted burst plus the
# burst of evicted connections still closing (2 x 2 x BACKLOG).
FD_RESERVE = 64 + 64 + 4 * BACKLOG


def fd_budget_cap(requested: int, soft_limit: int | None = None) -> int:
    """The front's connection cap: at most `requested`, and within the descriptor limit. Each proxied
    request holds two descriptors (client and model server), so half of what is left after the reserve."""
    if soft_limit is None:
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft_limit == resource.RLIM_INFINITY or soft_limit <= 0:
        return max(1, requested)
    return max(1, min(requested, (soft_limit - FD_RESERVE) // 2))


def _busy_response(listener: str) -> bytes:
    body = json.dumps({"error": f"agent {listener}: too many connections, retry later"}).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class _Refuse(asyncio.Protocol):
    """Answers a connection past the cap with a 503 and closes it, reading nothing."""

    def __init__(self, payload: bytes) -> None:
        self._payload = payload

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(self._payload)
        transport.close()


class _Conn(asyncio.Protocol):
    """aiohttp's protocol for one connection, wrapped to be counted, timed and evicted."""

    def __init__(self, listener: Listener, inner: asyncio.Protocol) -> None:
        self._listener = listener
        self._inner = inner
        self.transport: asyncio.Transport | None = None
        self.busy = 0
        self.started_any = False
        self.ended_at = 0.0
        self._header_timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol, delegated ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.busy and self._header_timer is None and self._listener.header_timeout_s > 0:
            # First bytes of a request: its headers must be complete within the timeout.
            self._header_timer = asyncio.get_running_loop().call_later(
                self._listener.header_timeout_s, self._headers_too_slow
            )
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        self._listener.forget(self)
        self._inner.connection_lost(exc)

    # --- state ---------------------------------------------------------------------------------------

    def begin(self) -> None:
        self.busy += 1
        self.started_any = True
        self._cancel_header_timer()

    def end(self) -> None:
        self.busy -= 1
        self.ended_at = time.monotonic()

    def evictable(self, now: float) -> bool:
        if self.transport is None or self.busy:
            return False
        return not self.started_any or now - self.ended_at >= IDLE_GRACE_S

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.busy:
            self._listener.header_timeouts += 1
            self.close()


class Listener:
    """One listening port with a connection cap and a header-read timeout (see the module docstring)."""

    def __init__(self, name: str, max_connections: int, header_timeout_s: float) -> None:
        self.name = name
        self.max_connections = max(1, max_connections)
        self.header_timeout_s = header_timeout_s
        self.conns: OrderedDict[_Conn, None] = OrderedDict()  # oldest first
        self.evicted = 0
        self.refused = 0
        self.header_timeouts = 0
        self._refusal = _busy_response(name)
        self._server: asyncio.Server | None = None

    def factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        def make() -> asyncio.Protocol:
            if len(self.conns) >= self.max_connections and not self._evict_one():
                self.refused += 1
                return _Refuse(self._refusal)
            conn = _Conn(self, inner())
            self.conns[conn] = None
            return conn

        return make

    def _evict_one(self) -> bool:
        now = time.monotonic()
        for conn in self.conns:
            if conn.evictable(now):
                self.forget(conn)  # counted out at once: its close completes on a later loop pass
                conn.close()
                self.evicted += 1
                return True
        return False

    def forget(self, conn: _Conn) -> None:
        self.conns.pop(conn, None)

    async def start(self, runner: web.AppRunner, host: str, port: int) -> None:
        server = runner.server
        assert server is not None, "runner.setup() first"
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.factory(server),  # aiohttp's Server is the protocol factory
            host,
            port,
            reuse_address=True,
            backlog=BACKLOG,
        )

    def stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()

    async def wait_closed(self, timeout_s: float = 5.0) -> None:
        """After aiohttp's runner has closed the connections (Python 3.12 waits for them here)."""
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout_s)
            self._server = None


@web.middleware
async def serving(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Marks the request's connection busy while its handler runs, so it is never evicted."""
    transport = request.transport
    conn: Any = transport.get_protocol() if transport is not None else None
    if not isinstance(conn, _Conn):
        return await handler(request)
    conn.begin()
    try:
        return await handler(request)
    finally:
        conn.end()
