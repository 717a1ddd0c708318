"""The availability read's Redis client: HGETALLs pipelined on one connection, hiredis-parsed.

An availability read is two HGETALLs in one round trip. Through redis-py's asyncio pipeline
that costs about 130 µs of CPU on the 2-core machine (a pool checkout, a lock, a timeout
object per reply, the command and response-callback machinery), most of what the API spends
on a read besides HTTP; written as one RESP buffer on a connection of its own and parsed by
hiredis, about 20 µs. Every read in flight shares the connection: requests are written in
order and Redis answers in order, so the replies fill the oldest waiting read's batch.

A reply that does not come within `timeout_s` (or a lost connection) fails every read in
flight with CacheError and drops the connection; the next read opens a new one. The
caller treats CacheError as Redis being away (the read falls back as before).
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis

from connectors.redis.cache import CacheError


def resp_command(*args: str) -> bytes:
    """One command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


class _Replies(asyncio.Protocol):
    """Feeds what Redis sends to hiredis; the replies fill the oldest batch in `waiting`
    (a future, the replies so far, how many it takes: one future per read, not per reply)."""

    def __init__(self) -> None:
        self.parser = hiredis.Reader(encoding="utf-8")
        self.waiting: deque[tuple[asyncio.Future[list[Any]], list[Any], int]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:  # a read is one small write: never held back for more
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        while self.waiting:
            try:
                reply = self.parser.gets()
            except hiredis.ProtocolError as exc:
                self.fail(CacheError(f"Redis reply unreadable: {exc}"))
                return
            if reply is False:
                return
            future, replies, expected = self.waiting[0]
            replies.append(reply)
            if len(replies) == expected:
                self.waiting.popleft()
                # A cancelled read keeps its place until its replies: the order stays right.
                if not future.done():
                    future.set_result(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        error = CacheError(f"Redis connection lost: {exc or 'closed by the server'}")
        while self.waiting:
            future = self.waiting.popleft()[0]
            if not future.done():
                future.set_exception(error)

    def fail(self, error: CacheError) -> None:
        """Fail every read in flight and drop the connection (its replies are out of step)."""
        self.closed = True
        while self.waiting:
            future = self.waiting.popleft()[0]
            if not future.done():
                future.set_exception(error)
        if self.transport is not None:
            self.transport.abort()


class HashReader:
    """HGETALL of several keys in one round trip, on one lazily opened connection."""

    def __init__(self, url: str, *, timeout_s: float) -> None:
        parts = urlsplit(url)
        if not self.supports(url):
            raise ValueError("HashReader takes redis://[user:password@]host:port/db URLs")
        self.host: str = parts.hostname or ""  # supports() checked there is one
        self.port = parts.port or 6379
        self.timeout_s = timeout_s
        self._setup: list[bytes] = []
        if parts.password is not None:
            self._setup.append(resp_command("AUTH", unquote(parts.username or "default"),
                                            unquote(parts.password)))
        db = parts.path.strip("/")
        if db and db != "0":
            self._setup.append(resp_command("SELECT", db))
        self._conn: _Replies | None = None
        self._connecting: asyncio.Future[_Replies] | None = None

    @classmethod
    def supports(cls, url: str) -> bool:
        """Whether a URL is one this reader speaks: plain TCP with no query options (TLS,
        sockets and `?db=`-style options stay with redis-py)."""
        parts = urlsplit(url)
        return parts.scheme == "redis" and bool(parts.hostname) and not parts.query

    async def hgetall(self, *keys: str) -> list[dict[str, str]]:
        """The hashes of `keys` ({} for a missing key), in one write and one round trip."""
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connect()
        replies = await self._send(conn, b"".join([resp_command("HGETALL", k) for k in keys]),
                                   len(keys))
        hashes = []
        for reply in replies:
            if not isinstance(reply, list):
                raise CacheError(f"HGETALL: {reply}")  # an error reply (e.g. WRONGTYPE)
            hashes.append(dict(zip(reply[::2], reply[1::2], strict=True)))
        return hashes

    async def close(self) -> None:
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.close()
        self._conn = None

    async def _send(self, conn: _Replies, data: bytes, replies: int) -> list[Any]:
        if conn.closed:  # lost while this read waited for the connection to open
            raise CacheError("Redis connection lost")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        conn.waiting.append((future, [], replies))
        assert conn.transport is not None
        conn.transport.write(data)
        timer = loop.call_later(self.timeout_s, self._expire, conn, future)
        try:
            return await future
        finally:
            timer.cancel()

    def _expire(self, conn: _Replies, future: asyncio.Future[list[Any]]) -> None:
        if not future.done():
            conn.fail(CacheError(f"no Redis reply within {self.timeout_s} s"))

    async def _connect(self) -> _Replies:
        # Concurrent first reads share one connection attempt.
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _open(self) -> _Replies:
        loop = asyncio.get_running_loop()
        try:
            _transport, conn = await asyncio.wait_for(
                loop.create_connection(_Replies, self.host, self.port), self.timeout_s)
        except (OSError, TimeoutError) as exc:
            raise CacheError(f"Redis {self.host}:{self.port} unreachable: {exc}") from exc
        if self._setup:
            for reply in await self._send(conn, b"".join(self._setup), len(self._setup)):
                if reply != "OK":
                    conn.fail(CacheError(f"Redis refused the connection setup: {reply}"))
                    raise CacheError(f"Redis refused the connection setup: {reply}")
        self._conn = conn
        return conn
