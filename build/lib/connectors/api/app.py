"""The FastAPI application of `stockflow api`: /v1 inventory, reservations, stream; page, health.

A reservation request becomes a ReservationCommand on reservations.commands (keyed by
platform SKU, so the one agent owning the SKU decides it in order); the request then waits
for the decision with its command id, which the follower reads from reservations.decisions.
Nothing is decided here: a retried request (same client and Idempotency-Key) is written
again and the agent answers with its first answer, so an API restart, a timeout or a worker
crash mid-request never makes a second hold. Reads: Redis first (cache-aside: a miss reads
Cassandra and fills Redis), `?consistency=strong` reads Cassandra; reserved units come from
the decisions (`<prefix>atp:<sku>` in Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field

from connectors.api.follower import DecisionFollower, atp_key
from connectors.api.hash_reads import HashReader
from connectors.api.keys import ApiKeys, RateLimiter, retry_after_header
from connectors.api.page import PAGE
from connectors.api.stream import StreamHub
from pipeline.log import get_logger
from pipeline.reservations import (
    ALREADY_CONFIRMED,
    CONFIRMED,
    EXPIRED,
    GRANTED,
    NOT_FOUND,
    RELEASED,
    SOLD_OUT,
    reservation_id,
    sku_of_reservation,
)
from pipeline.settings import Settings
from schemas.codec import codec_for

log = get_logger(__name__)

REQUESTS = Counter("stockflow_api_requests_total", "API requests", ["route", "status"])
LATENCY = Histogram("stockflow_api_request_seconds", "API request latency", ["route"],
                    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15,
                             0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 10))
DECISION_WAIT = Histogram("stockflow_api_decision_seconds",
                          "From writing a command to reading its decision",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25,
                                   0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 10))

SKU_PATTERN = r"^[^\x00-\x1f\x7f|]{1,128}$"
KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,128}$")
PUBLIC_PATHS = ("/", "/docs", "/openapi.json", "/health", "/ready", "/metrics",
                "/docs/oauth2-redirect")


class HoldRequest(BaseModel):
    """A hold of `quantity` units of a platform SKU for `ttl_s` seconds."""

    platform_sku: str = Field(pattern=SKU_PATTERN, description="the platform SKU")
    quantity: int = Field(default=1, ge=1, le=1000)
    ttl_s: int | None = Field(default=None, ge=1, le=24 * 3600,
                              description="default: STOCKFLOW_RESERVATION_DEFAULT_TTL_S")


def error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    headers = extra.pop("headers", None)
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status,
                        headers=headers)


class Api:
    """The state of one API process: Kafka producer, follower, waiters, stream, clients."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = ApiKeys.from_entries(settings.api_keys,
                                         development=settings.environment == "development")
        self.limiter = RateLimiter(settings.api_rate_per_s, settings.api_rate_burst)
        self.hub = StreamHub(settings.api_stream_buffer)
        self.commands_topic = settings.topic("reservations.commands")
        self.waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        # sku -> (decision sequence, reserved units, of which confirmed not yet reflected)
        self.reserved: dict[str, tuple[int, int, int]] = {}
        self.totals: dict[str, int] = {}  # sku -> supplier total last seen on the stream
        self.producer: Any = None
        self.follower: DecisionFollower | None = None
        self.cache: Any = None
        self.hashes: HashReader | None = None  # the availability read's two HGETALLs
        self._cassandra: Any = None
        self._cassandra_lock = threading.Lock()
        self._tasks: list[asyncio.Task[Any]] = []
        self._stop = threading.Event()
        self._command = codec_for("ReservationCommand")

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        from confluent_kafka import Producer

        from connectors.redis.cache import RedisCache
        from pipeline.topics import create_topics

        s = self.settings
        await asyncio.to_thread(create_topics, s)
        self.producer = Producer({**s.confluent_config(), "acks": "all",
                                  "enable.idempotence": True, "linger.ms": 2,
                                  "partitioner": "murmur2_random", "log_level": 3})
        threading.Thread(target=self._poll_producer, name="stockflow-api-producer",
                         daemon=True).start()
        self.cache = RedisCache.from_settings(s)
        url = s.redis_url.get_secret_value()
        if HashReader.supports(url):  # else (TLS, a socket) the reads go through redis-py
            self.hashes = HashReader(url, timeout_s=s.redis_cache_socket_timeout_s)
        loop = asyncio.get_running_loop()
        self.follower = DecisionFollower(s, loop, on_decision=self._on_decision,
                                         on_change=self._on_change)
        self.follower.start()
        self._tasks.append(asyncio.create_task(self._tick()))
        # The ~120,000 objects of the started process (modules, FastAPI, pydantic, clients)
        # live as long as it does. Out of the collector's sight, a full collection (up to
        # 156 ms measured under load on 2 cores, every request waiting) walks only the rest.
        gc.freeze()

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        if self.follower is not None:
            await asyncio.to_thread(self.follower.stop)
        if self.producer is not None:
            await asyncio.to_thread(self.producer.flush, 10)
        if self.hashes is not None:
            await self.hashes.close()
        if self.cache is not None:
            await self.cache.close()
        if self._cassandra is not None:
            self._cassandra[0].shutdown()

    def _poll_producer(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.05)

    async def _tick(self) -> None:
        """Every partition's reservation clock moves on with a TICK (expiries happen then)."""
        s = self.settings
        while True:
            await asyncio.sleep(s.api_tick_interval_s)
            if self.follower is None or not self.follower.ready.is_set():
                continue
            try:
                value = self._tick_value("")
                for p in range(s.partitions):
                    self.producer.produce(self.commands_topic, value, None, partition=p)
            except Exception as exc:  # the next tick tries again
                log.warning("api.tick_failed", error=str(exc))

    def _tick_value(self, sku: str) -> bytes:
        return self._command.encode({
            "command_id": "tick", "kind": "TICK", "platform_sku": sku, "reservation_id": None,
            "quantity": 0, "ttl_ms": 0, "idempotency_key": None,
            "requested_at": int(time.time() * 1000)})

    def _send_tick(self, sku: str) -> None:
        try:
            self.producer.produce(self.commands_topic, self._tick_value(sku), sku.encode())
        except Exception as exc:  # the SKU's next command or bound reflects the sale
            log.warning("api.tick_failed", platform_sku=sku, error=str(exc))

    # -- decisions and changes (on the event loop) ---------------------------------------------
    def _on_decision(self, decision: dict[str, Any]) -> None:
        sku = decision["platform_sku"]
        waiter = self.waiters.pop(decision["command_id"] or "", None)
        if waiter is not None and not waiter.done():
            waiter.set_result(decision)
        reserved = decision["held"] + decision["confirmed_pending"]
        seen = self.reserved.get(sku)
        if seen is None or seen[0] < decision["sequence"]:
            self.reserved[sku] = (decision["sequence"], reserved, decision["confirmed_pending"])
        self.totals[sku] = decision["supplier_total"]
        if decision["replayed"]:
            return  # nothing changed
        self.hub.publish(sku, {
            "platform_sku": sku, "type": "reservation", "kind": decision["kind"],
            "outcome": decision["outcome"], "reservation_id": decision["reservation_id"],
            "quantity": decision["quantity"], "available": decision["available"],
            "supplier_total": decision["supplier_total"], "reserved": reserved,
            "sequence": decision["sequence"], "at": decision["decided_at"]})

    def _on_change(self, change: dict[str, Any]) -> None:
        sku = change["platform_sku"]
        total = change["total_available"]
        self.totals[sku] = total
        _seq, reserved, confirmed = self.reserved.get(sku, (0, 0, 0))
        if confirmed:
            # The change may be the snapshot that reflects a confirmed sale: the agent looks
            # at once instead of at the SKU's next command.
            self._send_tick(sku)
        self.hub.publish(sku, {
            "platform_sku": sku, "type": "supply", "supplier_id": change["supplier_id"],
            "quantity_after": change["quantity_after"], "version": change["version"],
            "available": max(0, total - reserved), "supplier_total": total,
            "reserved": reserved, "at": change["changed_at"]})

    # -- commands -------------------------------------------------------------------------------
    async def command(self, kind: str, sku: str, *, rid: str | None, quantity: int = 0,
                      ttl_ms: int = 0, idempotency_key: str | None = None
                      ) -> dict[str, Any] | None:
        """Write a command and wait for its decision; None when none came in time."""
        command_id = uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.waiters[command_id] = waiter
        value = self._command.encode({
            "command_id": command_id, "kind": kind, "platform_sku": sku,
            "reservation_id": rid, "quantity": quantity, "ttl_ms": ttl_ms,
            "idempotency_key": idempotency_key, "requested_at": int(time.time() * 1000)})
        started = time.perf_counter()

        def fail(err: Any) -> None:
            if not waiter.done():
                waiter.set_exception(RuntimeError(str(err)))

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                loop.call_soon_threadsafe(fail, err)

        def expire() -> None:
            if not waiter.done():
                waiter.set_exception(TimeoutError("no decision in time"))

        timer = loop.call_later(self.settings.api_decision_timeout_s, expire)
        try:
            while True:
                try:
                    self.producer.produce(self.commands_topic, value, sku.encode(),
                                          on_delivery=delivered)
                    break
                except BufferError:
                    await asyncio.sleep(0.01)
            return await waiter
        except (TimeoutError, RuntimeError) as exc:
            log.warning("api.decision_missing", kind=kind, platform_sku=sku, error=str(exc))
            return None
        finally:
            timer.cancel()
            self.waiters.pop(command_id, None)
            DECISION_WAIT.observe(time.perf_counter() - started)

    # -- reads ------------------------------------------------------------------------------------
    def _cassandra_session(self) -> Any:
        with self._cassandra_lock:
            if self._cassandra is None:
                from connectors.cassandra.cluster import ClusterConfig, connect

                self._cassandra = connect(ClusterConfig.from_settings(self.settings))
            return self._cassandra[1]

    def _read_cassandra(self, sku: str) -> dict[str, Any] | None:
        from connectors.cassandra.read import read_availability

        return read_availability(self._cassandra_session(), sku,
                                 self.settings.cassandra_keyspace)

    async def _cassandra_rows(self, sku: str) -> list[dict[str, Any]]:
        summary = await asyncio.to_thread(self._read_cassandra, sku)
        if summary is None:
            return []
        return [{"platform_sku": sku, "supplier_id": sid, **entry}
                for sid, entry in summary["suppliers"].items()]

    async def reserved_units(self, sku: str) -> int:
        """Held + confirmed-not-reflected units: Redis (any API's view), else this one's."""
        try:
            fields = await self.cache.client.hgetall(atp_key(
                self.settings.redis_cache_key_prefix, sku))
        except Exception:  # Redis down: what this process saw
            fields = {}
        return self._reserved_of(sku, fields)

    def _reserved_of(self, sku: str, fields: dict[str, str]) -> int:
        """Redis' reserved units unless this process has seen a newer decision."""
        seen = self.reserved.get(sku)
        if fields and (seen is None or int(fields["sequence"]) >= seen[0]):
            return int(fields["reserved"])
        return seen[1] if seen else 0

    async def availability(self, sku: str, strong: bool) -> dict[str, Any] | None:
        from connectors.redis.cache import parse_hash, read_availability

        avail: dict[str, Any] | None = None
        reserved: int | None = None
        if strong:
            found = await asyncio.to_thread(self._read_cassandra, sku)
            avail = {**found, "source": "cassandra"} if found else None
        else:
            # The availability hash and the reserved units in one round trip; a miss (or a
            # hash that is not complete) goes the cache-aside way through Cassandra.
            keys = (self.cache.key(sku), atp_key(self.settings.redis_cache_key_prefix, sku))
            try:
                if self.hashes is not None:
                    fields, atp = await self.hashes.hgetall(*keys)
                else:
                    pipe = self.cache.client.pipeline(transaction=False)
                    for key in keys:
                        pipe.hgetall(key)
                    fields, atp = await pipe.execute()
            except Exception:  # Redis down: read_availability falls back to Cassandra
                fields, atp = None, None
            if fields and fields.get("complete") == "1":
                avail = {**parse_hash(sku, fields), "source": "redis"}
            else:
                avail = await read_availability(self.cache, self._cassandra_rows, sku)
            if atp is not None:
                reserved = self._reserved_of(sku, atp)
        if reserved is None:
            reserved = await self.reserved_units(sku)
        if avail is None and not reserved:
            return None
        total = avail["total"] if avail else 0
        suppliers = avail["suppliers"] if avail else {}
        return {
            "platform_sku": sku, "available": max(0, total - reserved),
            "supplier_total": total, "reserved": reserved,
            "best_supplier": avail["best_supplier"] if avail else None,
            "suppliers": [{"supplier_id": sid, "sku": e["sku"], "quantity": e["quantity"],
                           "status": e["status"], "lead_time_days": e.get("lead_time_days"),
                           "version": e["version"]} for sid, e in sorted(suppliers.items())],
            "source": avail["source"] if avail else "reservations",
        }


class Guard:
    """API key, rate limit and request metrics as a plain ASGI app in front of the FastAPI
    app (Starlette's `@app.middleware("http")` runs every request in a task group of its own:
    a third of the API's CPU at a few hundred requests a second).

    It also answers the two hot routes, a hold (`POST /v1/reservations`) and an availability
    read (`GET /v1/inventory/{sku}`), when the request is plainly valid: FastAPI's routing,
    dependency solving, validation and middleware stack cost about 0.5 ms of CPU per request,
    most of what one API process spends on it. The answer comes from the same functions the
    routes call (`hold_answer`, `inventory_answer`); anything else (a body or header that
    does not validate, another content type, `consistency=strong`) goes on to the route, so
    errors, OpenAPI and every other route are FastAPI's.
    """

    def __init__(self, app: Any, api: Api) -> None:
        self.app = app
        self.api = api
        # prometheus_client's labels() is a dict lookup under a lock: keep the children.
        self._requests: dict[tuple[str, int], Any] = {}
        self._latency: dict[str, Any] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = _route_of(path)
        started = time.perf_counter()
        client = None
        if path not in PUBLIC_PATHS:
            client, rejected = self._check(scope)
            if rejected is not None:
                self._count(route, rejected.status_code)
                await rejected(scope, receive, send)
                return
        status = 500

        async def send_with_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            response = None
            if client is not None:
                response, receive = await self._fast(scope, receive, route, client)
            if response is not None:
                await response(scope, receive, send_with_status)
            else:
                await self.app(scope, receive, send_with_status)
        finally:
            self._count(route, status)
            if route != "/v1/stream":  # a stream lasts as long as its client
                histogram = self._latency.get(route)
                if histogram is None:
                    histogram = self._latency[route] = LATENCY.labels(route)
                histogram.observe(time.perf_counter() - started)

    def _count(self, route: str, status: int) -> None:
        counter = self._requests.get((route, status))
        if counter is None:
            counter = self._requests[(route, status)] = REQUESTS.labels(route, str(status))
        counter.inc()

    def _check(self, scope: Any) -> tuple[str | None, JSONResponse | None]:
        """(client, None) when the request may go on; else (None, the 401 or 429)."""
        from urllib.parse import parse_qs

        headers = {k: v for k, v in scope["headers"] if k in (b"x-api-key", b"authorization")}
        key = headers.get(b"x-api-key", b"").decode("latin-1")
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if not key and auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        if not key and scope.get("query_string"):
            key = parse_qs(scope["query_string"].decode("latin-1")).get("api_key", [""])[0]
        client = self.api.keys.client(key)
        if client is None:
            return None, error(401, "UNAUTHORIZED", "a valid API key is required "
                               "(X-API-Key or Authorization: Bearer)",
                               headers={"WWW-Authenticate": "Bearer"})
        wait = self.api.limiter.take(client)
        if wait > 0:
            return None, error(429, "RATE_LIMITED", "too many requests for this API key",
                               headers={"Retry-After": retry_after_header(wait)})
        scope.setdefault("state", {})["client"] = client
        return client, None

    async def _fast(self, scope: Any, receive: Any, route: str, client: str
                    ) -> tuple[Response | None, Any]:
        """The answer of a plainly valid hot request, or None (and a `receive` that gives
        the route the body again) when FastAPI is to answer it."""
        method = scope["method"]
        if route == "/v1/inventory/{sku}" and method == "GET":
            sku = scope["path"][len("/v1/inventory/"):]
            query = scope.get("query_string", b"")
            # "/" too: the route's path parameter stops at it.
            if query not in (b"", b"consistency=eventual") or "/" in sku \
                    or not _SKU.fullmatch(sku):
                return None, receive
            if_none_match = None
            for name, value in scope["headers"]:
                if name == b"if-none-match":
                    if if_none_match is not None:
                        return None, receive
                    if_none_match = value.decode("latin-1")
            return await inventory_answer(self.api, sku, False, if_none_match), receive
        if route != "/v1/reservations" or method != "POST":
            return None, receive
        key = content_type = None
        for name, value in scope["headers"]:
            if name == b"idempotency-key":
                if key is not None:
                    return None, receive
                key = value.decode("latin-1")
            elif name == b"content-type":
                content_type = value
        if key is None or not KEY_PATTERN.match(key) or content_type is None \
                or content_type.split(b";")[0].strip().lower() != b"application/json":
            return None, receive
        messages: list[Any] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":  # the client went away
                return None, _replay(messages, receive)
            size += len(message.get("body", b""))
            if size > MAX_FAST_BODY:  # the route reads the rest, under its own limits
                return None, _replay(messages, receive)
            if not message.get("more_body", False):
                break
        body = _plain_hold(b"".join(m.get("body", b"") for m in messages))
        if body is None:
            return None, _replay(messages, receive)
        sku, quantity, ttl_s = body
        return await hold_answer(self.api, client, sku, quantity, ttl_s, key), receive


_SKU = re.compile(SKU_PATTERN.removeprefix("^").removesuffix("$"))  # for fullmatch
MAX_FAST_BODY = 4096  # a hold's body is a few dozen bytes
_HOLD_FIELDS = frozenset(("platform_sku", "quantity", "ttl_s"))


def _plain_hold(raw: bytes) -> tuple[str, int, int | None] | None:
    """(sku, quantity, ttl_s) of a hold body that HoldRequest accepts as it is; None for
    anything else (HoldRequest then decides, and names the field that is wrong)."""
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    if type(body) is not dict or not _HOLD_FIELDS.issuperset(body):
        return None
    sku = body.get("platform_sku")
    quantity = body.get("quantity", 1)
    ttl_s = body.get("ttl_s")
    if type(sku) is not str or not _SKU.fullmatch(sku) or type(quantity) is not int \
            or not 1 <= quantity <= 1000:
        return None
    if ttl_s is not None and (type(ttl_s) is not int or not 1 <= ttl_s <= 24 * 3600):
        return None
    return sku, quantity, ttl_s


def _replay(messages: list[Any], receive: Any) -> Any:
    """A `receive` that hands the route the messages already read, then the client's."""
    pending = list(reversed(messages))

    async def replay() -> Any:
        if pending:
            return pending.pop()
        return await receive()

    return replay


def create_app(settings: Settings) -> Guard:
    """The API application: the Guard in front of the FastAPI app (`.app`); Kafka, Redis and
    the follower start with it (lifespan)."""
    api = Api(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await api.start()
        try:
            yield
        finally:
            await api.stop()

    app = FastAPI(title="stockflow", version="1",
                  description="Availability across suppliers, reservations that never "
                              "oversell, and a live stream of changes.", lifespan=lifespan)
    app.state.api = api

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path",
                                                                   "header")]
        return error(422, "INVALID", str(first.get("msg", "invalid request")),
                     field=".".join(where) or None)


    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        demo = "demo-key" if settings.environment == "development" else ""
        return PAGE.replace("__DEMO_KEY__", demo)

    @app.get("/health", tags=["operations"])
    async def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready", tags=["operations"])
    async def ready() -> JSONResponse:
        """Readiness: the decision follower is positioned and Redis answers."""
        follower_ok = api.follower is not None and api.follower.ready.is_set()
        try:
            redis_ok = bool(await api.cache.client.ping())
        except Exception:
            redis_ok = False
        ok = follower_ok and redis_ok
        return JSONResponse({"ready": ok, "follower": follower_ok, "redis": redis_ok},
                            status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/inventory/{platform_sku}", tags=["inventory"])
    async def get_inventory(
        request: Request,
        platform_sku: Annotated[str, _sku_path()],
        consistency: Annotated[str, Query(pattern="^(eventual|strong)$")] = "eventual",
    ) -> Response:
        """Available-to-promise of one platform SKU: suppliers' total - reserved units.

        Redis first (a miss reads Cassandra and fills Redis); `consistency=strong` reads
        Cassandra. The ETag changes with the content; If-None-Match answers 304.
        """
        return await inventory_answer(api, platform_sku, consistency == "strong",
                                      request.headers.get("if-none-match"))

    @app.get("/v1/inventory", tags=["inventory"])
    async def list_inventory(
        cursor: Annotated[str, Query(pattern="^[0-9]{1,20}$")] = "0",
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> dict[str, Any]:
        """A page of platform SKUs with their availability; pass `next_cursor` back for more."""
        from connectors.redis.cache import parse_hash, platform_sku_of

        prefix = settings.redis_cache_key_prefix
        client = api.cache.client
        items: list[dict[str, Any]] = []
        next_cursor = int(cursor)
        # SCAN's cursor survives restarts and resharding; a page may hold fewer than limit.
        while True:
            next_cursor, keys = await client.scan(next_cursor, match=f"{prefix}avail:*",
                                                  count=limit)
            for key in keys:
                sku = platform_sku_of(prefix, key)
                avail = parse_hash(sku, await client.hgetall(key))
                reserved = await api.reserved_units(sku)
                items.append({"platform_sku": sku, "supplier_total": avail["total"],
                              "reserved": reserved,
                              "available": max(0, avail["total"] - reserved),
                              "best_supplier": avail["best_supplier"]})
            if len(items) >= limit or next_cursor == 0:
                break
        return {"items": sorted(items, key=lambda i: i["platform_sku"]),
                "next_cursor": str(next_cursor) if next_cursor else None}

    @app.post("/v1/reservations", status_code=201, tags=["reservations"],
              responses={409: {"description": "SOLD_OUT, with `available`"},
                         422: {"description": "INVALID, with `field`"},
                         503: {"description": "no decision in time: retry, same key"}})
    async def hold(
        request: Request, body: HoldRequest,
        idempotency_key: Annotated[str, Header(alias="Idempotency-Key",
                                               min_length=1, max_length=128)],
    ) -> JSONResponse:
        """Hold units for a while. A retry with the same Idempotency-Key gets the same answer."""
        if not KEY_PATTERN.match(idempotency_key):
            return error(422, "INVALID", "printable ASCII without spaces, 1-128 characters",
                         field="Idempotency-Key")
        return await hold_answer(api, request.state.client, body.platform_sku, body.quantity,
                                 body.ttl_s, idempotency_key)

    @app.post("/v1/reservations/{reservation}/confirm", tags=["reservations"])
    async def confirm(reservation: str) -> JSONResponse:
        """Turn a hold into an order for the best supplier now (idempotent)."""
        sku = sku_of_reservation(reservation)
        if sku is None:
            return error(404, NOT_FOUND, "no such reservation")
        decision = await api.command("CONFIRM", sku, rid=reservation)
        if decision is None:
            return _pending()
        outcome = decision["outcome"]
        if outcome == CONFIRMED:
            return JSONResponse({"reservation_id": reservation, "status": CONFIRMED,
                                 "supplier_id": decision["supplier_id"],
                                 "platform_sku": sku})
        return _ended(outcome, reservation)

    @app.delete("/v1/reservations/{reservation}", tags=["reservations"])
    async def release(reservation: str) -> JSONResponse:
        """Release a hold: its units are available again at once (idempotent)."""
        sku = sku_of_reservation(reservation)
        if sku is None:
            return error(404, NOT_FOUND, "no such reservation")
        decision = await api.command("RELEASE", sku, rid=reservation)
        if decision is None:
            return _pending()
        if decision["outcome"] == RELEASED:
            return JSONResponse({"reservation_id": reservation, "status": RELEASED,
                                 "available": decision["available"]})
        return _ended(decision["outcome"], reservation)

    @app.get("/v1/stream", tags=["stream"])
    async def stream(
        request: Request,
        skus: Annotated[str | None, Query(max_length=20_000,
                                          description="comma-separated; all when absent")]
        = None,
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    ) -> StreamingResponse:
        """Server-Sent Events of availability changes, resumable with Last-Event-ID."""
        wanted = frozenset(s for s in (skus or "").split(",") if s) or None
        sub = api.hub.subscribe(wanted)
        missed = api.hub.since(last_event_id or request.query_params.get("last_event_id"),
                               wanted)
        resets: list[dict[str, Any]] = []
        if missed is None and wanted is not None:
            for sku in sorted(wanted)[:200]:
                view = await api.availability(sku, False)
                if view is not None:
                    resets.append({k: view[k] for k in ("platform_sku", "available",
                                                        "supplier_total", "reserved")})
        current = api.hub.event_id(api.hub.seq)

        async def events() -> AsyncIterator[bytes]:
            try:
                yield b"retry: 1000\n\n"
                for view in resets:
                    yield _sse(current, "reset", view)
                for eid, event in missed or ():
                    yield _sse(eid, "availability", event)
                while True:
                    try:
                        item = await asyncio.wait_for(sub.queue.get(), 15)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    if item is None:
                        return
                    eid, event = item
                    yield _sse(eid, "availability", event)
            finally:
                api.hub.unsubscribe(sub)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})

    # In front of FastAPI's own middleware (error pages, body limit, telemetry) rather than
    # inside it: the fast path's answers skip those layers too (a fifth of a read's CPU).
    # An exception in the fast path is answered 500 by uvicorn, as FastAPI would answer it.
    return Guard(app, api)


async def hold_answer(api: Api, client: str, sku: str, quantity: int, ttl_s: int | None,
                      idempotency_key: str) -> JSONResponse:
    """The answer to a valid hold request (the route and the fast path share it)."""
    scope = f"{client}:{idempotency_key}"
    rid = reservation_id(sku, scope)
    decision = await api.command("HOLD", sku, rid=rid, quantity=quantity,
                                 ttl_ms=(ttl_s or 0) * 1000, idempotency_key=scope)
    if decision is None:
        return _pending()
    replay = {"Idempotent-Replayed": "true"} if decision["replayed"] else {}
    if decision["outcome"] == GRANTED:
        return JSONResponse({
            "reservation_id": decision["reservation_id"], "status": "HELD",
            "platform_sku": sku, "quantity": decision["quantity"],
            "expires_at": decision["expires_at"], "available": decision["available"]},
            status_code=201, headers=replay)
    if decision["outcome"] == SOLD_OUT:
        return error(409, SOLD_OUT, "not enough units available to promise",
                     available=decision["available"],
                     headers={"Retry-After": "5", **replay})
    if decision["outcome"] in (EXPIRED, RELEASED, CONFIRMED):
        # The same key's hold already ended.
        return error(409, decision["outcome"], "this Idempotency-Key's hold already ended",
                     reservation_id=decision["reservation_id"])
    return error(422, "INVALID", decision.get("reason") or "invalid hold", field=None)


async def inventory_answer(api: Api, sku: str, strong: bool,
                           if_none_match: str | None) -> Response:
    """The answer to a valid availability read (the route and the fast path share it)."""
    view = await api.availability(sku, strong)
    if view is None:
        return error(404, "NOT_FOUND", "no supplier has reported this platform SKU")
    body = json.dumps(view, sort_keys=True).encode()
    etag = '"' + hashlib.sha256(
        json.dumps({k: v for k, v in view.items() if k != "source"},
                   sort_keys=True).encode()).hexdigest()[:32] + '"'
    if if_none_match == etag:
        return Response(status_code=304, headers={"ETag": etag})
    return Response(body, media_type="application/json",
                    headers={"ETag": etag, "Cache-Control": "no-cache"})


def _sse(eid: str, event: str, data: dict[str, Any]) -> bytes:
    return f"id: {eid}\nevent: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _pending() -> JSONResponse:
    return error(503, "DECISION_PENDING", "no decision yet; retry with the same "
                 "Idempotency-Key (a retry never makes a second hold)",
                 headers={"Retry-After": "1"})


def _ended(outcome: str, reservation: str) -> JSONResponse:
    if outcome == EXPIRED:
        return error(410, EXPIRED, "the hold expired", reservation_id=reservation)
    if outcome == NOT_FOUND:
        return error(404, NOT_FOUND, "no such reservation", reservation_id=reservation)
    if outcome == ALREADY_CONFIRMED:
        return error(409, ALREADY_CONFIRMED, "the reservation is confirmed; it cannot be "
                     "released", reservation_id=reservation)
    if outcome == RELEASED:
        return error(409, RELEASED, "the hold was released", reservation_id=reservation)
    return error(422, "INVALID", f"cannot do that now ({outcome})", reservation_id=reservation)


def _sku_path() -> Any:
    from fastapi import Path

    return Path(pattern=SKU_PATTERN, description="the platform SKU")


def _route_of(path: str) -> str:
    # A bounded label set: never the SKU or reservation id itself.
    if path.startswith("/v1/inventory/"):
        return "/v1/inventory/{sku}"
    if path.startswith("/v1/reservations/"):
        return "/v1/reservations/{id}/confirm" if path.endswith("/confirm") \
            else "/v1/reservations/{id}"
    if path in PUBLIC_PATHS or path in ("/v1/inventory", "/v1/reservations", "/v1/stream"):
        return path
    return "other"
