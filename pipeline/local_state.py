"""The worker's local table state: when to keep it and when to restore from the changelogs.

The RocksDB stores under the worker's tabledir are a cache of the tables' changelog topics.
They may be used only while they describe those topics. They do not when:

- the worker died (exactly-once): the stores are written as events are processed, before
  their Kafka transaction commits, so they may be *ahead* of the committed changelog;
- the changelog topics were deleted and created again (a rebuild, an operator's cleanup):
  the stores hold offsets of the old topic and Faust stops with a ConsistencyError
  ("persisted offset ... > highwater ...");
- the data dir belonged to another app id (a reused directory).

A clean stop leaves a marker file; every start records the app id and the changelog topics'
Kafka topic ids (`state-identity.json`) next to it and compares them with the last start's.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLEAN_MARKER = "clean-shutdown"
IDENTITY_FILE = "state-identity.json"


def changelog_topic_ids(config: Mapping[str, Any], topics: Iterable[str],
                        timeout_s: float = 30.0) -> dict[str, str | None]:
    """Kafka's topic id of each topic; None for a topic that does not exist (yet)."""
    from confluent_kafka import KafkaException, TopicCollection
    from confluent_kafka.admin import AdminClient

    names = sorted(set(topics))
    if not names:
        return {}
    admin = AdminClient(dict(config))
    out: dict[str, str | None] = {}
    futures = admin.describe_topics(TopicCollection(names), request_timeout=timeout_s)
    for name, fut in futures.items():
        try:
            out[name] = str(fut.result().topic_id)
        except KafkaException as exc:
            if "UNKNOWN_TOPIC" not in str(exc):
                raise
            out[name] = None
    return out


def stale_reason(recorded: Mapping[str, Any] | None, app_id: str,
                 topic_ids: Mapping[str, str | None]) -> str | None:
    """Why local state recorded as `recorded` does not describe the current topics, or None.

    A topic recorded without an id (it did not exist at that start) proves nothing.
    """
    if recorded is None:
        return None
    if recorded.get("app_id") != app_id:
        return f"data dir belonged to app id {recorded.get('app_id')!r}"
    before = recorded.get("changelogs") or {}
    for topic, now in sorted(topic_ids.items()):
        then = before.get(topic)
        if then is not None and then != now:
            return (f"changelog topic {topic} was deleted" if now is None
                    else f"changelog topic {topic} was recreated")
    return None


@dataclass(frozen=True)
class Decision:
    """What a start did with the local stores."""

    action: str  # "kept", "rolled_back", "discarded" or "none" (no stores)
    reason: str = ""
    keys_restored: int = 0


def boot_id() -> str | None:
    """This machine boot's id: a change means the OS may have lost unsynced writes."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def roll_back_all(tabledir: Path) -> int:
    """Roll every partition store back to its last commit with its undo log
    (pipeline/undo_store.py). Raises UndoLogError when a store has no readable undo log.
    """
    from pipeline.undo_store import UndoLogError, roll_back, undo_marker, undo_path

    stores = []
    for path in sorted(tabledir.glob("*-*.db")):
        table, _, partition = path.name[:-len(".db")].rpartition("-")
        if partition.isdigit():
            stores.append((table, int(partition)))
    unlogged = sorted({t for t, _p in stores if not undo_marker(tabledir, t).exists()})
    if unlogged:
        raise UndoLogError(f"table(s) {', '.join(unlogged)} written without undo logs")
    # An undo-logged store without a log was never written since it was opened.
    return sum(roll_back(tabledir, t, p) for t, p in stores
               if undo_path(tabledir, t, p).exists())


def prepare_local_state(datadir: Path, tabledir: Path, *, app_id: str,
                        topic_ids: Mapping[str, str | None], exactly_once: bool,
                        undo_logs: bool = False) -> Decision:
    """Decide at start whether the local stores may be kept; roll them back or delete them.

    Under exactly-once with undo-logged stores (`undo_logs`), the stores are rolled back to
    the last commit, whatever the stop; without undo logs an unclean stop discards them.
    Consumes the clean-stop marker (a crash during this run counts as unclean) and records
    this start's identity.
    """
    from pipeline.undo_store import UndoLogError

    marker = datadir / CLEAN_MARKER
    identity = datadir / IDENTITY_FILE
    was_clean = marker.exists()
    marker.unlink(missing_ok=True)
    recorded = None
    if identity.exists():
        try:
            recorded = json.loads(identity.read_text())
        except (OSError, ValueError):
            recorded = {"app_id": None}  # unreadable: trust nothing
    reason = stale_reason(recorded, app_id, topic_ids)
    boot = boot_id()
    decision = Decision("kept" if tabledir.exists() else "none")
    if reason is None and exactly_once and tabledir.exists():
        if not was_clean and recorded is not None and recorded.get("boot_id") not in (None, boot):
            reason = "the machine restarted since the last (unclean) run"
        elif undo_logs:
            try:
                decision = Decision("rolled_back", "exactly-once: back to the last commit",
                                    roll_back_all(tabledir))
            except (UndoLogError, OSError) as exc:
                reason = f"cannot roll back ({exc}) after an unclean stop" if not was_clean \
                    else None
        elif not was_clean:
            reason = "the last run did not stop cleanly (exactly-once)"
    if reason is not None and tabledir.exists():
        shutil.rmtree(tabledir)
        decision = Decision("discarded", reason)
    datadir.mkdir(parents=True, exist_ok=True)
    identity.write_text(json.dumps({"app_id": app_id, "changelogs": dict(topic_ids),
                                    "boot_id": boot}, indent=1, sort_keys=True))
    return decision


def mark_clean_stop(datadir: Path) -> None:
    """The worker stopped cleanly: its stores match the committed changelogs."""
    datadir.mkdir(parents=True, exist_ok=True)
    (datadir / CLEAN_MARKER).touch()
