"""The cyclic garbage collector of a long-running stockflow process, tuned for batches.

A batch makes thousands of short-lived dicts (decoded records, outputs) that live as long as
the batch. With CPython's default thresholds (700, 10, 10) they survive two young
collections, are promoted to the oldest generation, and every few seconds a full collection
walks everything the process holds (decoded table values, modules, the driver's objects):
90-100 ms with the event loop stopped, three times in a 20 s run at 1,000 events/s, the
largest part of the freshness p99 (docs/performance.md, "Fifth pass"). A young generation of
tens of thousands of objects lets a batch's objects die of their reference counts before a
collection looks at them; what is still collected (reference cycles) is collected later.
"""

from __future__ import annotations

import gc


def tune(threshold0: int, *, freeze: bool = True) -> tuple[int, int, int]:
    """Set the young generation's threshold (0: leave the collector as it is) and, with
    `freeze`, move what the process holds now (modules, classes, the app) out of the
    collector's sight: a full collection then walks only what was made since. Returns the
    thresholds in force."""
    if threshold0 > 0:
        _, threshold1, threshold2 = gc.get_threshold()
        gc.set_threshold(threshold0, max(threshold1, 20), max(threshold2, 100))
        if freeze:
            gc.collect()
            gc.freeze()
    return gc.get_threshold()
