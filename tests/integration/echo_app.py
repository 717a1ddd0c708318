"""A minimal Faust app for the foundation test: doubles a number from one topic into another."""

from __future__ import annotations

import os

import faust

app = faust.App(
    os.environ["ECHO_APP_ID"],
    broker="kafka://127.0.0.1:9092",
    store="memory://",
    datadir=os.environ["ECHO_DATADIR"],
    web_enabled=False,
    consumer_auto_offset_reset="earliest",
    processing_guarantee=os.environ.get("ECHO_GUARANTEE", "exactly_once"),
)
source = app.topic(os.environ["ECHO_IN"], value_serializer="json")
sink = app.topic(os.environ["ECHO_OUT"], value_serializer="json")


@app.agent(source)
async def double(stream):  # type: ignore[no-untyped-def]
    async for value in stream:
        await sink.send(value={"doubled": value["n"] * 2})
