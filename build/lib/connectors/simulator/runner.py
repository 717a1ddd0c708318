"""The simulator: suppliers, their servers and senders, and the clock that changes stock."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from pipeline.log import get_logger

from .catalog import SimulatedSupplier
from .config import SimulatedSupplierConfig, SimulatorConfig
from .drops import CsvDropWriter
from .faults import FaultInjector
from .file_servers import FtpDropServer, SftpDropServer
from .http_api import SupplierHttpApi
from .webhook_sender import WebhookSender

log = get_logger(__name__)


class Simulator:
    """Starts the endpoints the configured suppliers need; `truth()` is what they hold.

    Every port may be 0 (a free one); the bound ports are in `http_port`, `ftp_port`,
    `sftp_port` after `start()`. With `changes_per_second: 0` nothing changes by itself, and
    tests drive `supplier(x).step(n)` and `drop(x)` directly.
    """

    def __init__(self, config: SimulatorConfig, environ: Mapping[str, str] | None = None, *,
                 environment: str = "development") -> None:
        self.config = config
        env = environ or {}
        self.suppliers: dict[str, SimulatedSupplier] = {}
        self.faults: dict[str, FaultInjector] = {}
        self.specs: dict[str, SimulatedSupplierConfig] = {}
        self.senders: dict[str, WebhookSender] = {}
        self.writers: dict[str, CsvDropWriter] = {}
        self._tokens: dict[str, str] = {}
        self._passwords: dict[str, dict[str, str]] = {"ftp": {}, "sftp": {}}
        self._secrets: dict[str, bytes] = {}
        for spec in config.suppliers:
            self.specs[spec.id] = spec
            self.suppliers[spec.id] = SimulatedSupplier(spec.id, skus=spec.skus,
                                                        seed=config.seed)
            self.faults[spec.id] = FaultInjector(spec.faults, seed=f"{config.seed}:{spec.id}")
            if spec.token is not None:
                self._tokens[spec.id] = spec.token.resolve(env, environment=environment)
            if spec.feed in ("ftp", "sftp"):
                password = spec.password.resolve(env, environment=environment) \
                    if spec.password else spec.id
                self._passwords[spec.feed][spec.id] = password
                self.writers[spec.id] = CsvDropWriter(
                    self.suppliers[spec.id], config.drop_dir / spec.id, self.faults[spec.id],
                    spec.csv)
            if spec.feed == "webhook":
                secret = spec.secret.resolve(env, environment=environment) if spec.secret \
                    else ""
                self._secrets[spec.id] = secret.encode()
        self.http = SupplierHttpApi(self.suppliers, self.faults, tokens=self._tokens)
        self.ftp = FtpDropServer(config.drop_dir, self._passwords["ftp"]) \
            if self._passwords["ftp"] else None
        self.sftp = SftpDropServer(config.drop_dir, self._passwords["sftp"]) \
            if self._passwords["sftp"] else None
        self.http_port: int | None = None
        self.ftp_port: int | None = None
        self.sftp_port: int | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def supplier(self, supplier_id: str) -> SimulatedSupplier:
        return self.suppliers[supplier_id]

    def truth(self, supplier_id: str) -> dict[str, dict[str, Any]]:
        """What the supplier holds now; for a CSV supplier, what its latest file says."""
        if supplier_id in self.writers:
            return self.writers[supplier_id].last_truth
        return self.suppliers[supplier_id].truth()

    async def start(self, *, webhooks: bool = True) -> None:
        host = self.config.host
        if any(s.feed in ("rest", "graphql") for s in self.specs.values()):
            self.http_port = await self.http.start(host, self.config.http_port)
        if self.ftp is not None:
            self.ftp_port = await asyncio.to_thread(self.ftp.start, host, self.config.ftp_port)
        if self.sftp is not None:
            self.sftp_port = await self.sftp.start(host, self.config.sftp_port)
        for writer in self.writers.values():
            await writer.drop(partial=False)
        if webhooks:
            for spec in self.specs.values():
                if spec.feed == "webhook" and spec.webhook_url:
                    self.start_webhooks(spec.id, spec.webhook_url)
        loop = asyncio.get_running_loop()
        for spec in self.specs.values():
            if spec.changes_per_second > 0:
                self._tasks.append(loop.create_task(self._change_loop(spec)))
            if spec.id in self.writers:
                self._tasks.append(loop.create_task(self._drop_loop(spec)))
        log.info("simulator started", http_port=self.http_port, ftp_port=self.ftp_port,
                 sftp_port=self.sftp_port, suppliers={s.id: s.feed for s in self.specs.values()})

    def start_webhooks(self, supplier_id: str, url: str) -> WebhookSender:
        sender = WebhookSender(self.suppliers[supplier_id], url, self._secrets[supplier_id],
                               self.faults[supplier_id])
        sender.start()
        self.senders[supplier_id] = sender
        return sender

    async def drop(self, supplier_id: str, **kwargs: Any) -> Any:
        return await self.writers[supplier_id].drop(**kwargs)

    async def _change_loop(self, spec: SimulatedSupplierConfig) -> None:
        # Changes come in ticks of 0.1 s; fractional rates accumulate across ticks.
        supplier = self.suppliers[spec.id]
        owed = 0.0
        while True:
            await asyncio.sleep(0.1)
            owed += spec.changes_per_second * 0.1
            if owed >= 1:
                supplier.step(int(owed))
                owed -= int(owed)

    async def _drop_loop(self, spec: SimulatedSupplierConfig) -> None:
        while True:
            await asyncio.sleep(spec.drop_every_s)
            try:
                await self.writers[spec.id].drop()
            except OSError as exc:
                log.warning("simulated drop failed", supplier=spec.id, error=str(exc))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for sender in self.senders.values():
            await sender.stop()
        await self.http.stop()
        if self.ftp is not None:
            await asyncio.to_thread(self.ftp.stop)
        if self.sftp is not None:
            await self.sftp.stop()

    def report(self) -> dict[str, Any]:
        """Per supplier: SKUs, revision, injected faults, deliveries."""
        out: dict[str, Any] = {}
        for sid, supplier in self.suppliers.items():
            row: dict[str, Any] = {"feed": self.specs[sid].feed, "skus": len(supplier.items),
                                   "revision": supplier.revision,
                                   "faults": dict(self.faults[sid].injected)}
            if sid in self.senders:
                row["webhook"] = {"pending": self.senders[sid].pending,
                                  "delivered": self.senders[sid].delivered}
            out[sid] = row
        return out
