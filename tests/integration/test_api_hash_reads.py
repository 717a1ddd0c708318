"""The availability read's own Redis client (connectors/api/hash_reads.py), on the real Redis.

It answers as redis-py's HGETALL does, keeps the replies of many reads in flight on one
connection in order, and turns a dead, silent or refusing Redis into CacheError (the read's
fallback) without leaving the next read out of step.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator

import pytest
import redis

from connectors.api.hash_reads import HashReader
from connectors.redis.cache import CacheError
from pipeline.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def url() -> str:
    return Settings().redis_url.get_secret_value()


@pytest.fixture
def keys(url: str) -> Iterator[tuple[redis.Redis, str]]:
    client = redis.Redis.from_url(url, decode_responses=True)
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    try:
        yield client, prefix
    finally:
        found = list(client.scan_iter(match=f"{prefix}*"))
        if found:
            client.delete(*found)
        client.close()


def test_answers_as_redis_py_for_hashes_and_missing_keys(
        url: str, keys: tuple[redis.Redis, str]) -> None:
    client, prefix = keys
    client.hset(f"{prefix}avail:A%2FB", mapping={"total": "7", "complete": "1", "q:s1": "7",
                                                 "k:s1": "sku é", "best": "s1"})
    client.hset(f"{prefix}atp:A%2FB", mapping={"sequence": "3", "reserved": "2"})

    async def read() -> list[dict[str, str]]:
        reader = HashReader(url, timeout_s=5)
        try:
            return await reader.hgetall(f"{prefix}avail:A%2FB", f"{prefix}atp:A%2FB",
                                        f"{prefix}avail:none")
        finally:
            await reader.close()

    assert asyncio.run(read()) == [client.hgetall(f"{prefix}avail:A%2FB"),
                                   client.hgetall(f"{prefix}atp:A%2FB"), {}]


def test_many_reads_in_flight_on_one_connection_each_get_their_own_hash(
        url: str, keys: tuple[redis.Redis, str]) -> None:
    client, prefix = keys
    for i in range(50):
        client.hset(f"{prefix}{i}", mapping={"n": str(i), "pad": "x" * (i * 40)})

    async def read() -> list[list[dict[str, str]]]:
        reader = HashReader(url, timeout_s=5)
        try:
            return await asyncio.gather(*[reader.hgetall(f"{prefix}{i % 50}",
                                                         f"{prefix}{(i + 1) % 50}")
                                          for i in range(500)])
        finally:
            await reader.close()

    for i, (first, second) in enumerate(asyncio.run(read())):
        assert first["n"] == str(i % 50) and second["n"] == str((i + 1) % 50)


def test_a_killed_connection_fails_the_read_and_the_next_read_reconnects(
        url: str, keys: tuple[redis.Redis, str]) -> None:
    client, prefix = keys
    client.hset(f"{prefix}k", mapping={"n": "1"})

    async def scenario() -> None:
        reader = HashReader(url, timeout_s=5)
        try:
            assert await reader.hgetall(f"{prefix}k") == [{"n": "1"}]
            conn = reader._conn
            assert conn is not None and conn.transport is not None
            host, port = conn.transport.get_extra_info("sockname")[:2]
            assert client.client_kill(f"{host}:{port}")
            # Seen when the connection is next used, or before; at once, not at the timeout.
            started = asyncio.get_running_loop().time()
            with pytest.raises(CacheError, match="connection lost"):
                for _ in range(50):
                    await reader.hgetall(f"{prefix}k")
                    await asyncio.sleep(0.05)
            assert asyncio.get_running_loop().time() - started < 2
            assert await reader.hgetall(f"{prefix}k") == [{"n": "1"}]
        finally:
            await reader.close()

    asyncio.run(scenario())


def test_a_silent_server_times_out_and_an_absent_one_is_refused() -> None:
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    port = silent.getsockname()[1]

    async def scenario() -> None:
        reader = HashReader(f"redis://127.0.0.1:{port}/0", timeout_s=0.3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(CacheError, match="no Redis reply"):
            await asyncio.wait_for(reader.hgetall("k"), 3)  # a TimeoutError fails the test
        assert loop.time() - started < 2
        await reader.close()
        silent.close()
        with pytest.raises(CacheError, match="unreachable"):
            await HashReader(f"redis://127.0.0.1:{port}/0", timeout_s=0.3).hgetall("k")

    try:
        asyncio.run(scenario())
    finally:
        silent.close()


def test_error_replies_and_another_database(url: str, keys: tuple[redis.Redis, str]) -> None:
    client, prefix = keys
    client.set(f"{prefix}string", "not a hash")
    other = redis.Redis.from_url(url.rsplit("/", 1)[0] + "/1", decode_responses=True)
    other.hset(f"{prefix}db1", mapping={"n": "1"})

    async def scenario() -> None:
        reader = HashReader(url, timeout_s=5)
        with pytest.raises(CacheError, match="WRONGTYPE"):
            await reader.hgetall(f"{prefix}string")
        assert await reader.hgetall(f"{prefix}db1") == [{}]  # database 0
        await reader.close()
        in_db1 = HashReader(url.rsplit("/", 1)[0] + "/1", timeout_s=5)
        assert await in_db1.hgetall(f"{prefix}db1") == [{"n": "1"}]
        await in_db1.close()

    try:
        asyncio.run(scenario())
    finally:
        other.delete(f"{prefix}db1")
        other.close()
    assert not HashReader.supports("rediss://127.0.0.1:6379/0")
    assert not HashReader.supports("unix:///tmp/redis.sock")
    assert not HashReader.supports("redis://127.0.0.1:6379?db=1")
