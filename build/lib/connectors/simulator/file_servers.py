"""The simulator's FTP (pyftpdlib, in a thread) and SFTP (asyncssh) servers over drop folders."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.log import get_logger

log = get_logger(__name__)


class FtpDropServer:
    """One FTP user per supplier (user = supplier id), read-only, home = its drop folder."""

    def __init__(self, root: Path, passwords: Mapping[str, str]) -> None:
        self.root = Path(root)
        self.passwords = dict(passwords)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        import logging

        from pyftpdlib.authorizers import DummyAuthorizer
        from pyftpdlib.handlers import FTPHandler
        from pyftpdlib.servers import FTPServer

        # pyftpdlib logs every command at INFO; the simulator's own log says what matters.
        logging.getLogger("pyftpdlib").setLevel(logging.WARNING)
        authorizer = DummyAuthorizer()
        for user, password in self.passwords.items():
            home = self.root / user
            home.mkdir(parents=True, exist_ok=True)
            authorizer.add_user(user, password, str(home), perm="elr")
        # A subclass, so the class-level settings do not leak into other FTPHandler users.
        handler: Any = type("SimulatorFtpHandler", (FTPHandler,), {
            "authorizer": authorizer, "banner": "stockflow supplier simulator"})
        self._server = FTPServer((host, port), handler)
        self._server.max_cons = 64
        self.port = self._server.address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"timeout": 0.5, "blocking": True,
                                                       "handle_exit": False},
            name="simulator-ftp", daemon=True)
        self._thread.start()
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.close_all()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


class SftpDropServer:
    """SFTP with password logins (user = supplier id), each user jailed in its drop folder."""

    def __init__(self, root: Path, passwords: Mapping[str, str]) -> None:
        self.root = Path(root)
        self.passwords = dict(passwords)
        self._acceptor: Any = None
        self.port: int | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        import logging

        import asyncssh

        # asyncssh logs every channel at INFO.
        logging.getLogger("asyncssh").setLevel(logging.WARNING)
        passwords = self.passwords
        root = self.root

        class _Server(asyncssh.SSHServer):
            def begin_auth(self, username: str) -> bool:
                return True

            def password_auth_supported(self) -> bool:
                return True

            def validate_password(self, username: str, password: str) -> bool:
                return passwords.get(username) == password

        def sftp_factory(chan: Any) -> asyncssh.SFTPServer:
            user = chan.get_extra_info("username")
            home = root / user
            home.mkdir(parents=True, exist_ok=True)
            return asyncssh.SFTPServer(chan, chroot=str(home).encode())

        for user in passwords:
            (root / user).mkdir(parents=True, exist_ok=True)
        key = asyncssh.generate_private_key("ssh-ed25519")
        self._acceptor = await asyncssh.listen(
            host, port, server_host_keys=[key], server_factory=_Server,
            sftp_factory=sftp_factory, allow_scp=False)
        self.port = self._acceptor.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None
