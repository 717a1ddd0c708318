"""Shorter end-of-recovery detection for exactly-once changelogs (a Faust patch).

Under exactly-once every changelog partition ends with a transaction marker. Faust's table
recovery reads a partition until it has seen the record at the partition's highwater (end
offset - 1), which is that marker: no record ever arrives there. Faust then waits for two
consecutive empty 5-second polls of its changelog queue before it checks the consumer's
position against the highwater (`detect_aborted_tx`) -- so every exactly-once start spent
10 s or more in recovery, even with nothing to read.

Two consecutive empty polls are kept (Faust's guard against a position that ran ahead of
the queue); only their length is cut to RECOVERY_POLL_S, so an idle recovery ends in about
a second.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

RECOVERY_POLL_S = 0.5
_FAUST_POLL_S = 5.0


class _AsyncioWithShortRecoveryPoll:
    """asyncio, except that Faust's 5 s changelog-queue poll in recovery is RECOVERY_POLL_S."""

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    @staticmethod
    async def wait_for(aw: Awaitable[Any], timeout: float | None) -> Any:
        if timeout == _FAUST_POLL_S:
            timeout = RECOVERY_POLL_S
        return await asyncio.wait_for(aw, timeout=timeout)


def install() -> None:
    """Patch faust.tables.recovery (once, before the worker starts)."""
    from faust.tables import recovery

    if not isinstance(recovery.asyncio, _AsyncioWithShortRecoveryPoll):
        recovery.asyncio = _AsyncioWithShortRecoveryPoll()  # type: ignore[assignment]
