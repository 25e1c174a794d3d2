"""The faust internals the worker relies on (streams/worker/faust_internals.py) still exist with
the shape it expects: an upgrade of faust-streaming that moves one fails here."""

import inspect
import weakref

import faust.streams
from faust.transport.consumer import Consumer

from streams.worker import faust_internals


def test_add_gap_exists_and_takes_a_partition_and_a_range():
    params = list(inspect.signature(faust_internals._FAUST_ADD_GAP).parameters)
    assert params == ["self", "tp", "offset_from", "offset_to"]
    assert inspect.iscoroutinefunction(faust_internals._FAUST_ADD_GAP)


def test_implicit_gaps_are_disabled_once_the_worker_module_is_loaded():
    import streams.worker.app  # noqa: F401 - importing it installs the guard

    assert Consumer._add_gap is faust_internals._no_implicit_gap


def test_current_event_is_the_context_variable_tables_read():
    from faust.tables import base

    assert isinstance(faust.streams._current_event, type(faust_internals._current_event))
    assert "current_event" in inspect.getsource(base.Collection.partition_for_key)
    marker = object.__new__(type("Ev", (), {}))
    faust_internals.write_as(marker)
    assert faust.streams._current_event.get()() is marker
    assert isinstance(faust.streams._current_event.get(), weakref.ref)


def test_the_worker_consumer_is_built_with_the_configured_fetch_wait(monkeypatch):
    """faust hard-codes fetch_max_wait_ms=1500 in the factory it calls; the override replaces it."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    assert "fetch_max_wait_ms=1500" in inspect.getsource(
        faust_internals._FAUST_CREATE_WORKER_CONSUMER
    )
    made = type("Made", (), {"_fetch_max_wait_ms": 1500})()
    monkeypatch.setattr(
        faust_internals, "_FAUST_CREATE_WORKER_CONSUMER", lambda self, transport: made
    )
    monkeypatch.setattr(
        AIOKafkaConsumerThread,
        "_create_worker_consumer",
        AIOKafkaConsumerThread._create_worker_consumer,
    )
    faust_internals.set_fetch_max_wait(37)
    assert AIOKafkaConsumerThread._create_worker_consumer(None, None) is made
    assert made._fetch_max_wait_ms == 37


def test_committed_offsets_are_kept_per_partition_by_the_consumer():
    assert "self._committed_offset = defaultdict(lambda: None)" in inspect.getsource(
        Consumer.__init__
    )
    consumer = type("C", (), {"_committed_offset": {"tp": 41}})()
    assert faust_internals.committed_offset(consumer, "tp") == 41
    assert faust_internals.committed_offset(consumer, "other") is None
