"""The consumer's GC pause that promotes what it allocated: leaves the GC as it found it, puts
the bulk objects in the oldest generation, and never releases an application's frozen objects."""

from __future__ import annotations

import gc

from client._gc import gc_paused_promoting


def _in_generation(obj: object, generation: int) -> bool:
    return any(o is obj for o in gc.get_objects(generation=generation))


def test_objects_allocated_inside_skip_the_young_generations() -> None:
    assert gc.isenabled()
    with gc_paused_promoting():
        assert not gc.isenabled()
        records = [[i] for i in range(10)]  # tracked containers, like decoded records
    assert gc.isenabled()
    assert all(_in_generation(record, 2) for record in records)
    assert gc.get_freeze_count() == 0


def test_young_cycles_from_before_are_still_collected() -> None:
    # The young generations are collected before the pause: a cycle made earlier must not be
    # promoted past the collections that would free it.
    class Node:
        def __init__(self) -> None:
            self.me = self

    gc.collect()
    freed: list[bool] = []
    node = Node()
    node.__dict__["probe"] = _Finalizer(freed)
    del node
    with gc_paused_promoting():
        pass
    assert freed == [True]


class _Finalizer:
    def __init__(self, freed: list[bool]) -> None:
        self.freed = freed

    def __del__(self) -> None:
        self.freed.append(True)


def test_an_application_freeze_is_left_alone() -> None:
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with gc_paused_promoting():
            record = [1]
        assert gc.get_freeze_count() == frozen  # nothing unfrozen by the pause
        assert not _in_generation(record, 2)
    finally:
        gc.unfreeze()


def test_inside_a_disabled_gc_it_stays_disabled() -> None:
    gc.disable()
    try:
        with gc_paused_promoting():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
