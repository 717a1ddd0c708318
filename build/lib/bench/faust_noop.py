"""Baseline: a Faust worker whose one agent does nothing per event (Faust's own cost per event).

    python -m bench.faust_noop --topic T --count N --result out.json

Writes the wall clock and its own CPU time at the first and at the N-th event to `--result`.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path
from typing import Any


def main() -> None:
    """Build the app from the arguments and run its worker until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topic", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--broker", default="kafka://127.0.0.1:9092")
    parser.add_argument("--datadir", type=Path, required=True)
    args = parser.parse_args()

    import faust

    app = faust.App(f"bench-noop-{uuid.uuid4().hex[:8]}", broker=args.broker,
                    store="memory://", datadir=str(args.datadir), web_enabled=False,
                    consumer_auto_offset_reset="earliest", broker_commit_interval=0.1,
                    processing_guarantee="at_least_once", topic_allow_declare=False)
    source = app.topic(args.topic, key_serializer="raw", value_serializer="raw")
    state: dict[str, Any] = {"count": 0}

    @app.agent(source)
    async def nothing(stream: Any) -> None:
        async for _event in stream.events():
            state["count"] += 1
            if state["count"] == 1:
                state["t_first"], state["cpu_first"] = time.time(), time.process_time()
            if state["count"] == args.count:
                state["t_last"], state["cpu_last"] = time.time(), time.process_time()
                args.result.write_text(json.dumps(state))

    from faust.worker import Worker

    Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    main()
