"""Remote folders a supplier drops CSV files into: FTP, SFTP, or a local directory."""

from __future__ import annotations

import asyncio
import contextlib
import ftplib
import io
import logging
import os
import ssl
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

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
    """List and read the files of one folder; `read` returns at most `limit` bytes."""

    async def list(self) -> list[RemoteFile]: ...

    async def read(self, name: str, limit: int | None = None) -> bytes: ...

    async def close(self) -> None: ...


def _plain_name(name: str) -> str:
    # A listing could name "../x" or "a/b"; only a file directly in the folder is read.
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise ConnectorError(f"not a plain file name: {name!r}")
    return name


class LocalFolder:
    """A directory on this machine (a mounted share, or tests).

    Only regular files are listed and read; a symbolic link is neither followed nor listed
    (a link to a secret file would otherwise end up in a dead letter).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    async def list(self) -> list[RemoteFile]:
        def scan() -> list[RemoteFile]:
            out = []
            with os.scandir(self.path) as entries:
                for entry in entries:
                    if entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        out.append(RemoteFile(entry.name, st.st_size, st.st_mtime))
            return out

        return await asyncio.to_thread(scan)

    async def read(self, name: str, limit: int | None = None) -> bytes:
        path = self.path / _plain_name(name)

        def read() -> bytes:
            # O_NOFOLLOW: a file swapped for a link after the listing is refused too.
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
                         | getattr(os, "O_NONBLOCK", 0))
            with os.fdopen(fd, "rb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    raise ConnectorError(f"{name!r} is not a regular file")
                return fh.read(-1 if limit is None else limit)

        try:
            return await asyncio.to_thread(read)
        except OSError as exc:
            raise ConnectorError(f"cannot read {name!r}: {exc}") from exc

    async def close(self) -> None:
        return None


def _mlsd_time(value: str) -> float:
    # RFC 3659 time-val: YYYYMMDDHHMMSS[.sss], UTC.
    whole, _, frac = value.partition(".")
    parsed = datetime.strptime(whole, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    return parsed.timestamp() + (float(f"0.{frac}") if frac else 0.0)


class _ReadLimit(Exception):
    pass


class FtpFolder:
    """A folder on an FTP server (stdlib ftplib in a worker thread, one session per call).

    FTPS (explicit TLS, `AUTH TLS`, data channel protected, server certificate verified)
    unless `tls=False`: plain FTP sends the password in clear, so it is only used when the
    configuration asks for it, with a warning at every connection.
    """

    def __init__(self, host: str, port: int, *, user: str, password: str, directory: str = "/",
                 timeout_s: float = 15.0, tls: bool = True,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.host, self.port = host, port
        self.user = user
        self._password = password
        self.directory = directory
        self.timeout_s = timeout_s
        self.tls = tls
        self.ssl_context = ssl_context

    def __repr__(self) -> str:
        return f"FtpFolder({self.host}:{self.port}, user={self.user!r}, tls={self.tls})"

    def _connect(self) -> ftplib.FTP:
        ftp: ftplib.FTP
        if self.tls:
            ftp = ftplib.FTP_TLS(timeout=self.timeout_s,
                                 context=self.ssl_context or ssl.create_default_context())
        else:
            log.warning("plain FTP: password and files travel unencrypted (tls: false)",
                        host=self.host, port=self.port)
            ftp = ftplib.FTP(timeout=self.timeout_s)
        ftp.connect(self.host, self.port)
        ftp.login(self.user, self._password)  # FTP_TLS.login sends AUTH TLS first
        if isinstance(ftp, ftplib.FTP_TLS):
            ftp.prot_p()
        ftp.cwd(self.directory)
        return ftp

    async def list(self) -> list[RemoteFile]:
        def listing() -> list[RemoteFile]:
            with self._connect() as ftp:
                out = []
                for name, facts in ftp.mlsd(facts=["type", "size", "modify"]):
                    if facts.get("type") != "file":
                        continue
                    try:
                        size = int(facts.get("size", "0")[:20])
                        mtime = _mlsd_time(facts.get("modify", "19700101000000")[:32])
                    except ValueError:
                        # A server's listing is supplier input too: one odd entry is skipped.
                        log.warning("ftp listing entry with unreadable facts skipped",
                                    host=self.host, file=name[:200], facts=str(facts)[:200])
                        continue
                    out.append(RemoteFile(name, size, mtime))
                return out

        return await self._call(listing)

    async def read(self, name: str, limit: int | None = None) -> bytes:
        _plain_name(name)

        def fetch() -> bytes:
            buf = io.BytesIO()

            def write(chunk: bytes) -> None:
                buf.write(chunk)
                if limit is not None and buf.tell() >= limit:
                    raise _ReadLimit  # the caller only needs to know it is too large

            with self._connect() as ftp, contextlib.suppress(_ReadLimit):
                ftp.retrbinary(f"RETR {name}", write)
            return buf.getvalue()[:limit]

        return await self._call(fetch)

    async def _call(self, fn: Any) -> Any:
        try:
            return await asyncio.to_thread(fn)
        except ssl.SSLError as exc:
            raise ConnectorError(f"ftps {self.host}:{self.port}: TLS failed: {exc}") from exc
        except (OSError, EOFError, ftplib.error_temp) as exc:
            raise RetryableError(f"ftp {self.host}:{self.port}: {exc}") from exc
        except ftplib.Error as exc:
            raise ConnectorError(f"ftp {self.host}:{self.port}: {exc}") from exc

    async def close(self) -> None:
        return None


class SftpFolder:
    """A folder on an SFTP server (asyncssh), one connection kept open and re-opened on loss.

    The server's host key is checked against `known_hosts` (default: the user's
    ~/.ssh/known_hosts); an unknown or changed key refuses the connection before the
    password is sent. Only `verify_host_key=False`, which the configuration must ask for
    explicitly, skips the check, with a warning at every connection.
    """

    def __init__(self, host: str, port: int, *, user: str, password: str, directory: str = ".",
                 known_hosts: Path | None = None, verify_host_key: bool = True,
                 timeout_s: float = 15.0) -> None:
        self.host, self.port = host, port
        self.user = user
        self._password = password
        self.directory = directory
        self.known_hosts = known_hosts
        self.verify_host_key = verify_host_key
        self.timeout_s = timeout_s
        self._conn: Any = None
        self._sftp: Any = None

    def __repr__(self) -> str:
        return f"SftpFolder({self.host}:{self.port}, user={self.user!r})"

    def _known_hosts(self) -> Any:
        if not self.verify_host_key:
            log.warning("SFTP HOST KEY NOT VERIFIED: any server answering on this address "
                        "gets the password (insecure_skip_host_key_check: true)",
                        host=self.host, port=self.port)
            return None
        if self.known_hosts is not None:
            return str(self.known_hosts)
        return ()  # asyncssh: the user's ~/.ssh/known_hosts; a missing file trusts nothing

    async def _client(self) -> Any:
        import asyncssh

        if self._sftp is None:
            # asyncssh logs every channel at INFO.
            logging.getLogger("asyncssh").setLevel(logging.WARNING)
            try:
                self._conn = await asyncio.wait_for(asyncssh.connect(
                    self.host, self.port, username=self.user, password=self._password,
                    known_hosts=self._known_hosts(),
                    client_keys=None, agent_path=None), timeout=self.timeout_s)
                self._sftp = await self._conn.start_sftp_client()
            except asyncssh.HostKeyNotVerifiable as exc:
                await self.close()
                raise ConnectorError(f"sftp {self.host}:{self.port}: host key not trusted "
                                     f"({exc}); add it to known_hosts") from exc
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

    async def read(self, name: str, limit: int | None = None) -> bytes:
        import asyncssh

        _plain_name(name)
        sftp = await self._client()
        try:
            async with sftp.open(f"{self.directory.rstrip('/')}/{name}", "rb") as fh:
                data: bytes = await fh.read(-1 if limit is None else limit)
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
