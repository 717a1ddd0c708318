"""Builds the sources a suppliers file describes and runs them together."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from connectors.suppliers import (
    CsvSupplier,
    GraphqlSupplier,
    RestSupplier,
    SupplierConfig,
    SuppliersFile,
    WebhookSupplier,
)
from pipeline.errors import ConfigurationError
from pipeline.log import get_logger

from .base import Emitter, FieldMapping, RecordMapper, Source, Units
from .circuit_breaker import CircuitBreaker
from .csv_drop import CsvDropSource, CsvOptions
from .cursor_store import CursorStore
from .drop_folders import DropFolder, FtpFolder, LocalFolder, SftpFolder
from .graphql import DEFAULT_QUERY, GraphqlOptions, GraphqlSource
from .http_client import SupplierHttp
from .rate_limit import TokenBucket
from .rest import RestOptions, RestSource
from .retry import Backoff
from .webhook import WebhookReceiver
from .webhook import WebhookSupplier as WebhookEndpoint

log = get_logger(__name__)


def mapper_for(cfg: SupplierConfig, connector: str) -> RecordMapper:
    units = Units(quantity_multiplier=cfg.units.quantity_multiplier,
                  price_divisor=cfg.units.price_divisor, timestamp=cfg.units.timestamp,
                  default_currency=cfg.units.default_currency,
                  status_map={k.casefold(): v for k, v in cfg.units.status_map.items()})
    return RecordMapper(cfg.id, connector, FieldMapping(cfg.aliases()), units)


def http_for(cfg: RestSupplier | GraphqlSupplier, environ: Mapping[str, str],
             environment: str) -> SupplierHttp:
    headers = {}
    if cfg.credentials.bearer is not None:
        token = cfg.credentials.bearer.resolve(environ, environment=environment)
        headers["Authorization"] = f"Bearer {token}"
    if urlsplit(cfg.endpoint).scheme != "https":
        log.warning("plain http endpoint: requests and credentials travel unencrypted",
                    supplier=cfg.id, endpoint=cfg.endpoint,
                    credentials=cfg.credentials.bearer is not None)
    return SupplierHttp(
        cfg.id, cfg.kind,
        limiter=TokenBucket(cfg.rate_limit.per_second, cfg.rate_limit.burst),
        backoff=Backoff(cfg.retry.base_s, cfg.retry.cap_s, cfg.retry.max_attempts),
        breaker=CircuitBreaker(cfg.id, failure_threshold=cfg.circuit_breaker.failure_threshold,
                               reset_timeout_s=cfg.circuit_breaker.reset_timeout_s),
        timeout_s=cfg.timeout_s, headers=headers, max_response_bytes=cfg.max_response_bytes)


def folder_for(cfg: CsvSupplier, environ: Mapping[str, str], environment: str) -> DropFolder:
    if cfg.kind == "local":
        return LocalFolder(Path(cfg.endpoint))
    url = urlsplit(cfg.endpoint)
    assert cfg.credentials is not None  # checked by the config model
    password = cfg.credentials.password.resolve(environ, environment=environment)
    directory = url.path or ("/" if cfg.kind == "ftp" else ".")
    if cfg.kind == "ftp":
        context = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
        return FtpFolder(url.hostname or "127.0.0.1", url.port or 21,
                         user=cfg.credentials.username, password=password, directory=directory,
                         timeout_s=cfg.timeout_s, tls=cfg.tls, ssl_context=context)
    return SftpFolder(url.hostname or "127.0.0.1", url.port or 22,
                      user=cfg.credentials.username, password=password, directory=directory,
                      known_hosts=cfg.known_hosts,
                      verify_host_key=not cfg.insecure_skip_host_key_check,
                      timeout_s=cfg.timeout_s)


def build_source(cfg: SupplierConfig, *, emitter: Emitter, store: CursorStore,
                 environ: Mapping[str, str], environment: str = "production") -> Source:
    """The polling source of one supplier (webhook suppliers are served by the receiver)."""
    mapper = mapper_for(cfg, cfg.kind)
    interval = cfg.schedule.interval_s
    if isinstance(cfg, RestSupplier):
        options = RestOptions(url=cfg.endpoint, cursor_param=cfg.cursor_param,
                              cursor_format=cfg.cursor_format,
                              page_token_param=cfg.page_token_param,
                              limit_param=cfg.limit_param, page_size=cfg.page_size,
                              items_path=cfg.items_path, next_page_path=cfg.next_page_path)
        return RestSource(cfg.id, options=options, http=http_for(cfg, environ, environment),
                          mapper=mapper, emitter=emitter, store=store, interval_s=interval)
    if isinstance(cfg, GraphqlSupplier):
        gql = GraphqlOptions(url=cfg.endpoint, query=cfg.query or DEFAULT_QUERY,
                             connection_path=cfg.connection_path, page_size=cfg.page_size)
        return GraphqlSource(cfg.id, options=gql, http=http_for(cfg, environ, environment),
                             mapper=mapper, emitter=emitter, store=store, interval_s=interval)
    if isinstance(cfg, CsvSupplier):
        csv_options = CsvOptions(pattern=cfg.pattern, encoding=cfg.encoding,
                                 delimiter=cfg.delimiter, stable_s=cfg.stable_s,
                                 on_missing=cfg.on_missing,
                                 max_missing_ratio=cfg.max_missing_ratio,
                                 require_trailer=cfg.require_trailer,
                                 require_final_newline=cfg.require_final_newline,
                                 max_file_bytes=cfg.max_file_bytes)
        return CsvDropSource(cfg.id, connector=cfg.kind,
                             folder=folder_for(cfg, environ, environment), mapper=mapper,
                             emitter=emitter, store=store, options=csv_options,
                             interval_s=interval)
    raise ConfigurationError(f"supplier {cfg.id}: {cfg.kind} is not a polling feed")


def build_webhook_receiver(config: SuppliersFile, suppliers: Sequence[SupplierConfig], *,
                           emitter: Emitter, environ: Mapping[str, str],
                           environment: str = "production") -> WebhookReceiver | None:
    endpoints = {
        s.id: WebhookEndpoint(s.id, s.credentials.secret.resolve(
            environ, environment=environment).encode(), mapper_for(s, "webhook"),
            events_path=s.events_path)
        for s in suppliers if isinstance(s, WebhookSupplier)
    }
    if not endpoints:
        return None
    rc = config.webhook_receiver
    return WebhookReceiver(endpoints, emitter, max_body_bytes=rc.max_body_bytes,
                           tolerance_s=rc.tolerance_s, max_events=rc.max_events)


class ConnectorService:
    """Every enabled supplier of a suppliers file (or one), polling and receiving, until stop."""

    def __init__(self, config: SuppliersFile, *, emitter: Emitter, store: CursorStore,
                 environ: Mapping[str, str], environment: str = "production",
                 only: str | None = None) -> None:
        chosen = [config.supplier(only)] if only else [s for s in config.suppliers if s.enabled]
        self.config = config
        # Resolving every source now makes a missing secret fail before anything starts.
        self.sources = [build_source(s, emitter=emitter, store=store, environ=environ,
                                     environment=environment)
                        for s in chosen if not isinstance(s, WebhookSupplier)]
        self.receiver = build_webhook_receiver(config, chosen, emitter=emitter,
                                               environ=environ, environment=environment)

    async def run(self, stop: asyncio.Event) -> None:
        if self.receiver is not None:
            rc = self.config.webhook_receiver
            await self.receiver.start(rc.host, rc.port)
        tasks = [asyncio.create_task(s.run(stop), name=f"source-{s.supplier_id}")
                 for s in self.sources]
        log.info("connectors running", polling=[s.supplier_id for s in self.sources],
                 webhooks=sorted(self.receiver.suppliers) if self.receiver else [])
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for source in self.sources:
                await source.close()
            if self.receiver is not None:
                await self.receiver.stop()
