"""HTTP calls to a supplier with the manners a connector owes it: rate limit, backoff, breaker."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from pipeline.errors import ConnectorError
from pipeline.log import get_logger

from .circuit_breaker import CircuitBreaker, CircuitOpenError
from .metrics import CONNECTOR_REQUESTS, CONNECTOR_RETRIES, REQUEST_SECONDS
from .rate_limit import TokenBucket
from .retry import Backoff, RetryableError

log = get_logger(__name__)


# Largest response body read, counted after decompression (a 300 KiB gzip response can
# inflate to hundreds of MiB); a bigger one fails the request as `ResponseTooLarge`.
DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024


class ResponseTooLarge(ConnectorError):
    """A supplier response was larger than the configured cap (after decompression)."""

    def __init__(self, message: str, head: bytes) -> None:
        super().__init__(message)
        self.head = head


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP-date; the backoff alone is good enough


class SupplierHttp:
    """Makes one logical request, retrying 429/5xx/timeouts/connection errors with backoff.

    Every attempt passes the rate limiter and the circuit breaker; a 4xx other than 429 is
    the connector's or the supplier's configuration at fault and is not retried.
    """

    def __init__(self, supplier_id: str, connector: str, *, limiter: TokenBucket,
                 backoff: Backoff, breaker: CircuitBreaker, timeout_s: float = 10.0,
                 headers: Mapping[str, str] | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 rng: random.Random | None = None,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES) -> None:
        self.supplier_id = supplier_id
        self.connector = connector
        self.limiter = limiter
        self.backoff = backoff
        self.breaker = breaker
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.headers = dict(headers or {})
        self.max_response_bytes = max_response_bytes
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._session: aiohttp.ClientSession | None = None

    def _outcome(self, outcome: str) -> None:
        CONNECTOR_REQUESTS.labels(self.supplier_id, self.connector, outcome).inc()

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout, headers=self.headers)
        return self._session

    async def request(self, method: str, url: str, *, params: Mapping[str, Any] | None = None,
                      headers: Mapping[str, str] | None = None,
                      json_body: Any = None) -> HttpResponse:
        attempt = 0
        while True:
            attempt += 1
            try:
                self.breaker.before_call()
            except CircuitOpenError:
                self._outcome("circuit_open")
                raise
            await self.limiter.acquire()
            started = time.monotonic()
            try:
                response = await self._once(method, url, params, headers, json_body)
            except RetryableError as exc:
                self.breaker.record_failure()
                self._outcome("retryable")
                if attempt >= self.backoff.max_attempts:
                    raise
                delay = self.backoff.delay(attempt, retry_after=exc.retry_after, rng=self._rng)
                CONNECTOR_RETRIES.labels(self.supplier_id, self.connector).inc()
                log.info("supplier request failed, retrying", supplier=self.supplier_id,
                         connector=self.connector, attempt=attempt, delay_s=round(delay, 3),
                         error=str(exc))
                await self._sleep(delay)
                continue
            except ConnectorError:
                # A ResponseTooLarge too: the supplier is misbehaving, as for any error.
                self.breaker.record_failure()
                self._outcome("error")
                raise
            finally:
                REQUEST_SECONDS.labels(self.supplier_id, self.connector).observe(
                    time.monotonic() - started)
            self.breaker.record_success()
            self._outcome("not_modified" if response.status == 304 else "ok")
            return response

    async def _once(self, method: str, url: str, params: Mapping[str, Any] | None,
                    headers: Mapping[str, str] | None, json_body: Any) -> HttpResponse:
        session = await self.session()
        try:
            # No redirects: one to another host or to http:// would carry the bearer token
            # where the configuration never said it may go.
            async with session.request(method, url, params=params, headers=headers,
                                       json=json_body, allow_redirects=False) as resp:
                body = await self._read_capped(resp, method, url)
                result = HttpResponse(resp.status, resp.headers.copy(), body)
        except TimeoutError as exc:
            raise RetryableError(f"{method} {url} timed out") from exc
        except aiohttp.ClientError as exc:
            raise RetryableError(f"{method} {url} failed: {type(exc).__name__}: {exc}") from exc
        if result.status == 429 or result.status >= 500:
            raise RetryableError(f"{method} {url} answered {result.status}",
                                 retry_after=_retry_after(result.headers))
        if 300 <= result.status < 400 and result.status != 304:
            raise ConnectorError(f"{method} {url} redirected ({result.status}) to "
                                 f"{result.headers.get('Location', '?')!r}; configure the "
                                 "final URL")
        if result.status >= 400:
            raise ConnectorError(f"{method} {url} answered {result.status}: "
                                 f"{result.body[:200]!r}")
        return result

    async def _read_capped(self, resp: aiohttp.ClientResponse, method: str, url: str) -> bytes:
        """The body, decompressed, refused once it passes `max_response_bytes`."""
        cap = self.max_response_bytes
        declared = resp.content_length
        if declared is not None and declared > cap and \
                not resp.headers.get("Content-Encoding"):
            raise ResponseTooLarge(f"{method} {url}: response of {declared} bytes exceeds "
                                   f"the {cap}-byte cap", b"")
        chunks: list[bytes] = []
        size = 0
        # iter_chunked yields decompressed bytes: the cap bounds memory, not the wire size.
        async for chunk in resp.content.iter_chunked(65_536):
            size += len(chunk)
            if size > cap:
                head = b"".join(chunks)[:4096]
                resp.close()
                raise ResponseTooLarge(f"{method} {url}: response larger than the {cap}-byte "
                                       "cap (after decompression)", head)
            chunks.append(chunk)
        return b"".join(chunks)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
