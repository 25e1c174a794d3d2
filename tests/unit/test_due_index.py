"""The incremental due index (streams/worker/due_index.py): a rebuild in bounded steps that never
overwrites what a round learned, and stops at a rebalance."""

from __future__ import annotations

from streams.worker.due_index import DueIndex


def table(**due):
    """An accounts table: key -> next due time (None: nothing due); reads are counted."""
    reads = []

    def next_due(key: bytes):
        reads.append(key)
        return due[key.decode()]

    return next_due, reads


def test_a_rebuild_reads_a_bounded_number_of_accounts_per_step():
    next_due, reads = table(a=5, b=None, c=7, d=1)
    index = DueIndex(next_due)
    index.start(0)
    index.add_keys(0, [b"a", b"b"])
    index.add_keys(0, [b"c", b"d"])
    assert index.started(0) and not index.complete(0)
    index.listed(0)
    assert index.build_step(0, 3) == 1 and len(reads) == 3
    assert index.due(0, 6) == [b"a"]  # what is known so far; b has nothing due
    assert index.build_step(0, 3) == 0 and index.complete(0)
    assert sorted(index.due(0, 7)) == [b"a", b"c", b"d"] and index.due(0, 0) == []
    assert index.build_step(0, 3) == 0 and len(reads) == 4  # nothing read twice


def test_what_a_round_sets_wins_over_the_rebuilds_older_reading():
    next_due, reads = table(a=5, b=9, c=7)
    index = DueIndex(next_due)
    index.set(0, b"a", None)  # a round touched a before the rebuild started: nothing due now
    index.start(0)
    index.add_keys(0, [b"a", b"b"])
    index.set(0, b"b", 2)  # b after it was listed
    index.set(0, b"c", 3)  # and c before
    index.add_keys(0, [b"c"])
    index.listed(0)
    index.build_step(0, 10)
    assert reads == [] and index.complete(0)
    assert sorted(index.due(0, 100)) == [b"b", b"c"] and index.due(0, 2) == [b"b"]
    index.set(0, b"c", 7)
    assert sorted(index.due(0, 7)) == [b"b", b"c"]
    index.set(0, b"c", None)
    assert index.due(0, 100) == [b"b"]


def test_the_rebuild_reads_what_no_round_touched():
    next_due, reads = table(a=5, b=9, c=7)
    index = DueIndex(next_due)
    index.start(0)
    index.set(0, b"b", 2)
    index.add_keys(0, [b"a", b"b", b"c"])
    index.listed(0)
    index.build_step(0, 10)
    assert reads == [b"a", b"c"]
    assert sorted(index.due(0, 100)) == [b"a", b"b", b"c"] and index.due(0, 2) == [b"b"]


def test_a_rebalance_forgets_every_partition_and_moves_the_generation_on():
    next_due, _ = table(a=1, b=2)
    index = DueIndex(next_due)
    for part, key in ((0, b"a"), (1, b"b")):
        index.start(part)
        index.add_keys(part, [key])
        index.listed(part)
    index.build_step(0, 10)
    generation = index.generation
    index.forget()
    assert index.generation == generation + 1
    assert not index.started(0) and not index.started(1) and index.due(0, 10) == []
    assert index.pending_count() == 0
    index.set(1, b"b", 4)  # rounds after the rebalance, before the new rebuild
    index.start(1)
    index.add_keys(1, [b"a", b"b"])
    assert index.pending_count() == 1 and index.due(1, 4) == [b"b"]
