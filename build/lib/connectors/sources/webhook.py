"""Webhook receiver: signed supplier pushes, answered 2xx only after Kafka acknowledged them.

Signature scheme (what a supplier implements): header `X-Stockflow-Timestamp` = epoch seconds,
header `X-Stockflow-Signature` = `sha256=` + hex HMAC-SHA256(secret, f"{timestamp}." + body).
Signing the timestamp with the body and refusing timestamps outside a window stops an old,
captured request from being replayed later; a redelivery inside the window carries the same
supplier event ids, so the pipeline's dedup makes it harmless.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from pipeline import tracing
from pipeline.log import get_logger

from .base import Emitter, RecordMapper, dead_letter, map_one, now_ms, raw_bytes, safe_text
from .metrics import CONNECTOR_DEAD_LETTERS, CONNECTOR_DELTAS, LAST_POLL, WEBHOOK_REJECTED

log = get_logger(__name__)

TIMESTAMP_HEADER = "X-Stockflow-Timestamp"
SIGNATURE_HEADER = "X-Stockflow-Signature"


def webhook_signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header value for `body` sent at `timestamp` (epoch seconds)."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class TooManyEvents(Exception):
    """One request carries more events than the receiver accepts at once."""


@dataclass(frozen=True)
class WebhookSupplier:
    """One supplier's endpoint: its shared secret, mapping and where its events are."""

    supplier_id: str
    secret: bytes = field(repr=False)  # never in a log line or a traceback
    mapper: RecordMapper
    events_path: str = "events"


class WebhookReceiver:
    """An aiohttp app serving `POST /webhooks/{supplier_id}` for every webhook supplier."""

    kind = "webhook"

    def __init__(self, suppliers: Mapping[str, WebhookSupplier], emitter: Emitter, *,
                 max_body_bytes: int = 1_048_576, tolerance_s: int = 300,
                 max_events: int = 1000,
                 clock: Callable[[], float] = time.time) -> None:
        self.suppliers = dict(suppliers)
        self.emitter = emitter
        self.max_body_bytes = max_body_bytes
        # More events than this in one request is refused (413) before any is mapped: a
        # signed 1 MB body of tiny bad events must not become 250,000 dead letters.
        self.max_events = max_events
        self.tolerance_s = tolerance_s
        self._clock = clock
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_post("/webhooks/{supplier_id}", self.handle)
        app.router.add_get("/healthz", self._health)
        return app

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    def _reject(self, supplier_id: str, reason: str, status: int,
                detail: str | None = None) -> web.Response:
        WEBHOOK_REJECTED.labels(supplier_id, reason).inc()
        log.warning("webhook rejected", supplier=supplier_id, reason=reason, status=status)
        body = {"error": reason, **({"detail": detail} if detail else {})}
        return web.json_response(body, status=status)

    async def handle(self, request: web.Request) -> web.Response:
        """One supplier request; with tracing on, in a span its records' traces start from."""
        if not tracing.ENABLED:
            return await self._handle(request)
        with tracing.receive_span("webhook receive", connector=self.kind,
                                  supplier_id=request.match_info.get("supplier_id")) as span:
            response = await self._handle(request)
            span.set_attribute("http.response.status_code", response.status)
            return response

    async def _handle(self, request: web.Request) -> web.Response:
        supplier_id = request.match_info["supplier_id"]
        supplier = self.suppliers.get(supplier_id)
        if supplier is None:
            return self._reject("unknown", "unknown_supplier", 404)
        if (request.content_length or 0) > self.max_body_bytes:
            return self._reject(supplier_id, "too_large", 413)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._reject(supplier_id, "too_large", 413)
        try:
            timestamp = int(request.headers.get(TIMESTAMP_HEADER, ""))
        except ValueError:
            return self._reject(supplier_id, "bad_signature", 401)
        expected = webhook_signature(supplier.secret, timestamp, body)
        given = request.headers.get(SIGNATURE_HEADER, "")
        # backslashreplace: a header with non-ASCII bytes is a bad signature, not a 500.
        if not hmac.compare_digest(expected.encode(), given.encode("utf-8", "backslashreplace")):
            return self._reject(supplier_id, "bad_signature", 401)
        if abs(self._clock() - timestamp) > self.tolerance_s:
            return self._reject(supplier_id, "expired", 401)

        try:
            deltas, dead = self._map(supplier, body)
        except TooManyEvents as exc:
            return self._reject(supplier_id, "too_many_events", 413, detail=str(exc))
        try:
            await self.emitter.emit(deltas, dead)
        except Exception as exc:  # Kafka did not acknowledge: the supplier must redeliver
            log.error("webhook events not acknowledged by Kafka", supplier=supplier_id,
                      error=f"{type(exc).__name__}: {exc}")
            return web.json_response({"error": "unavailable"}, status=503)
        CONNECTOR_DELTAS.labels(supplier_id, self.kind).inc(len(deltas))
        for d in dead:
            CONNECTOR_DEAD_LETTERS.labels(supplier_id, self.kind, d["reason"]).inc()
        LAST_POLL.labels(supplier_id).set_to_current_time()
        return web.json_response({"accepted": len(deltas), "dead_lettered": len(dead)})

    def _map(self, supplier: WebhookSupplier, body: bytes) -> tuple[list[dict[str, Any]],
                                                                    list[dict[str, Any]]]:
        """Deltas and dead letters of one signed body; never raises for bad content (only
        TooManyEvents, answered 413)."""
        sid = supplier.supplier_id
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError) as exc:
            return [], [dead_letter(reason="decode_error",
                                    message=f"body is not JSON: {safe_text(exc, 200)}",
                                    original=body, supplier_id=sid, connector=self.kind)]
        events = payload.get(supplier.events_path) if isinstance(payload, dict) else None
        if not isinstance(events, list):
            return [], [dead_letter(reason="malformed_record",
                                    message=f"no list of events at {supplier.events_path!r}",
                                    original=body, supplier_id=sid, connector=self.kind)]
        if len(events) > self.max_events:
            raise TooManyEvents(f"{len(events)} events in one request; at most "
                                f"{self.max_events}")
        received = now_ms()
        deltas: list[dict[str, Any]] = []
        dead: list[dict[str, Any]] = []
        for index, event in enumerate(events):
            delta, bad = map_one(supplier.mapper, event,
                                 original=functools.partial(raw_bytes, event),
                                 context={"index": str(index)}, received_at=received)
            if delta is not None:
                deltas.append(delta)
            elif bad is not None:
                dead.append(bad)
        return deltas, dead

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve on host:port (0 = a free port); returns the bound port."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("webhook receiver listening", host=host, port=self.port,
                 suppliers=sorted(self.suppliers))
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
