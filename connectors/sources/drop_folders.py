"""Remote folders a supplier drops CSV files into: FTP, SFTP, or a local directory."""

from __future__ import annotations

import asyncio
import ftplib
import io
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from pipeline.errors import ConnectorError
from pipeline.log import get_logger

from .retry import RetryableError

log = get_logger(__name__)


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    mtime: float  # epoch seconds


class DropFolder(Protocol):
    """List and read the files of one folder."""

    async def list(self) -> list[RemoteFile]: ...

    async def read(self, name: str) -> bytes: ...

    async def close(self) -> None: ...


class LocalFolder:
    """A directory on this machine (a mounted share, or tests)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    async def list(self) -> list[RemoteFile]:
        def scan() -> list[RemoteFile]:
            out = []
            for p in self.path.iterdir():
                if p.is_file():
                    st = p.stat()
                    out.append(RemoteFile(p.name, st.st_size, st.st_mtime))
            return out

        return await asyncio.to_thread(scan)

    async def read(self, name: str) -> bytes:
        return await asyncio.to_thread((self.path / name).read_bytes)

    async def close(self) -> None:
        return None


def _mlsd_time(value: str) -> float:
    # RFC 3659 time-val: YYYYMMDDHHMMSS[.sss], UTC.
    whole, _, frac = value.partition(".")
    parsed = datetime.strptime(whole, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    return parsed.timestamp() + (float(f"0.{frac}") if frac else 0.0)


class FtpFolder:
    """A folder on an FTP server (stdlib ftplib in a worker thread, one session per call)."""

    def __init__(self, host: str, port: int, *, user: str, password: str, directory: str = "/",
                 timeout_s: float = 15.0) -> None:
        self.host, self.port = host, port
        self.user, self.password = user, password
        self.directory = directory
        self.timeout_s = timeout_s

    def _connect(self) -> ftplib.FTP:
        ftp = ftplib.FTP(timeout=self.timeout_s)
        ftp.connect(self.host, self.port)
        ftp.login(self.user, self.password)
        ftp.cwd(self.directory)
        return ftp

    async def list(self) -> list[RemoteFile]:
        def listing() -> list[RemoteFile]:
            with self._connect() as ftp:
                out = []
                for name, facts in ftp.mlsd(facts=["type", "size", "modify"]):
                    if facts.get("type") == "file":
                        out.append(RemoteFile(name, int(facts.get("size", 0)),
                                              _mlsd_time(facts.get("modify", "19700101000000"))))
                return out

        return await self._call(listing)

    async def read(self, name: str) -> bytes:
        def fetch() -> bytes:
            buf = io.BytesIO()
            with self._connect() as ftp:
                ftp.retrbinary(f"RETR {name}", buf.write)
            return buf.getvalue()

        return await self._call(fetch)

    async def _call(self, fn):
        try:
            return await asyncio.to_thread(fn)
        except (OSError, EOFError, ftplib.error_temp) as exc:
            raise RetryableError(f"ftp {self.host}:{self.port}: {exc}") from exc
        except ftplib.Error as exc:
            raise ConnectorError(f"ftp {self.host}:{self.port}: {exc}") from exc

    async def close(self) -> None:
        return None


class SftpFolder:
    """A folder on an SFTP server (asyncssh), one connection kept open and re-opened on loss."""

    def __init__(self, host: str, port: int, *, user: str, password: str, directory: str = ".",
                 known_hosts: Path | None = None, timeout_s: float = 15.0) -> None:
        self.host, self.port = host, port
        self.user, self.password = user, password
        self.directory = directory
        self.known_hosts = known_hosts
        self.timeout_s = timeout_s
        self._conn = None
        self._sftp = None

    async def _client(self):
        import asyncssh

        if self._sftp is None:
            # asyncssh logs every channel at INFO.
            logging.getLogger("asyncssh").setLevel(logging.WARNING)
            if self.known_hosts is None:
                log.warning("sftp host key not verified (no known_hosts configured)",
                            host=self.host, port=self.port)
            try:
                self._conn = await asyncio.wait_for(asyncssh.connect(
                    self.host, self.port, username=self.user, password=self.password,
                    known_hosts=str(self.known_hosts) if self.known_hosts else None,
                    client_keys=None, agent_path=None), timeout=self.timeout_s)
                self._sftp = await self._conn.start_sftp_client()
            except (OSError, TimeoutError, asyncssh.Error) as exc:
                await self.close()
                raise RetryableError(f"sftp {self.host}:{self.port}: {exc}") from exc
        return self._sftp

    async def list(self) -> list[RemoteFile]:
        import asyncssh

        sftp = await self._client()
        try:
            names = await sftp.readdir(self.directory)
        except (OSError, asyncssh.Error) as exc:
            await self.close()
            raise RetryableError(f"sftp list {self.directory}: {exc}") from exc
        out = []
        for entry in names:
            if entry.filename in (".", "..") or entry.attrs.type != asyncssh.FILEXFER_TYPE_REGULAR:
                continue
            mtime = float(entry.attrs.mtime or 0)
            mtime_ns = getattr(entry.attrs, "mtime_ns", None)
            if mtime_ns:
                mtime = mtime_ns / 1e9
            out.append(RemoteFile(entry.filename, int(entry.attrs.size or 0), mtime))
        return out

    async def read(self, name: str) -> bytes:
        import asyncssh

        sftp = await self._client()
        try:
            async with sftp.open(f"{self.directory.rstrip('/')}/{name}", "rb") as fh:
                data: bytes = await fh.read()
                return data
        except (OSError, asyncssh.Error) as exc:
            await self.close()
            raise RetryableError(f"sftp read {name}: {exc}") from exc

    async def close(self) -> None:
        if self._sftp is not None:
            self._sftp.exit()
            self._sftp = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
