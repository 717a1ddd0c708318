"""The worker's and the API's garbage-collector tuning (pipeline/gc_tuning.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from pipeline import gc_tuning
from pipeline.settings import Settings


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)
    gc.unfreeze()


def test_young_threshold_raised_and_older_generations_kept_at_least_default(
        restore_gc: None) -> None:
    gc.set_threshold(700, 10, 10)
    assert gc_tuning.tune(50_000, freeze=False) == (50_000, 20, 100)
    assert gc.get_threshold() == (50_000, 20, 100)


def test_zero_leaves_the_collector_alone(restore_gc: None) -> None:
    gc.set_threshold(700, 10, 10)
    gc.unfreeze()
    assert gc_tuning.tune(0) == (700, 10, 10)
    assert gc.get_freeze_count() == 0


def test_freeze_moves_what_exists_out_of_the_collectors_sight(restore_gc: None) -> None:
    gc.unfreeze()
    held = [{"n": [i]} for i in range(1000)]
    gc_tuning.tune(50_000)
    assert gc.get_freeze_count() >= len(held)
    seen = {id(obj) for obj in gc.get_objects()}  # the three generations, not the frozen
    assert not any(id(obj) in seen for obj in held)
    made_after = {"n": []}  # holds a container: tracked
    assert id(made_after) in {id(obj) for obj in gc.get_objects()}


def test_the_batch_sized_young_generation_is_the_default() -> None:
    assert Settings().gc_young_threshold == 50_000
