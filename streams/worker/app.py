"""The stream processor: a faust-streaming app whose one agent rates and pays every input event.

Exactly-once *effect* on an at-least-once broker, without Kafka transactions:

1. Events are taken in rounds (``take_rounds``, faust_internals.py). Each account's state is read
   once per round from the ``accounts`` table and updated in memory by the pure ``BillingEngine``.
2. All output records of the round (deductions, alerts, status, dead letters) and the dedupe
   entries of its events (``event-ids`` table, streams/dedupe.py) are produced, and their
   acknowledgements awaited together.
3. Only then is each changed account written back to the table (one changelog record per account,
   holding balances, the account's sequence and the input offset together).
4. faust commits the input offsets after that, below what this worker has durably applied.

A crash before (3) replays the round from the old state: the entries it finds are ahead of the
state's sequence and count for nothing, the same deterministic ids come out again and downstream
dedupes them. A crash after (3) finds the offset in the state and skips the message. A producer
duplicate (same event id, new offset) is caught by its dedupe entry, over the dedupe horizon.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Hashable
from dataclasses import replace
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from faust.types import TP

from streams.config import Settings
from streams.dedupe import RoundEntries, id_key, partition_scope, scope_partition
from streams.engine import BillingEngine
from streams.ingest.codec import registry
from streams.ingest.messages import Decoded, dead_letter_record, decode_message
from streams.ingest.partitioner import partition_for
from streams.kafka_client import producer_kwargs
from streams.ledger.state import AccountState
from streams.ledger.state_codec import pack_state
from streams.limits import MAX_STATE_BYTES, check_record_size
from streams.observability.metrics import PipelineMetrics, serve
from streams.rating.profiles import PROFILES_DIR, ProfileError, Profiles
from streams.worker.due_index import DueIndex
from streams.worker.entry_sweep import EntrySweep
from streams.worker.faust_internals import (
    ChangelogAcks,
    cap_commits,
    committed_offset,
    correct_recovery_highwaters,
    declare_gap,
    disable_implicit_gaps,
    on_no_partition,
    on_partition_of,
    partition_keys,
    set_fetch_max_wait,
    size_changelog_buffer,
    take_rounds,
)
from streams.worker.gap_check import first_offset_at, last_offsets_from, offsets_absent
from streams.worker.idle import IdleWatermark
from streams.worker.offset_order import OffsetOrder, Verdict
from streams.worker.partition_clocks import PartitionClocks
from streams.worker.round_outputs import RoundOutputs
from streams.worker.stall import (
    EXIT_ROUND_FAILED,
    EXIT_STALLED,
    StallWatch,
    exit_code_after_crash,
)
from streams.worker.tuning import faust_app_settings, table_options

log = logging.getLogger("streams.worker")
# accounts decoded per step of a due index rebuild: about 8 ms of the loop at the ~76 us an
# account of 1.2 KB takes (README "Worker state")
DUE_INDEX_STEP = 100

disable_implicit_gaps()  # see streams/worker/faust_internals.py


class Counts(Counter):
    """consumed = rated + applied + rejected + duplicate, per event (a batch message counts each);
    ``duplicate`` holds both kinds: redelivered offsets and repeated event ids."""

    def line(self) -> str:
        keys = ("messages", "consumed", "rated", "applied", "rejected", "duplicate")
        line = " ".join(f"{'duplicates' if k == 'duplicate' else k}={self.get(k, 0)}" for k in keys)
        written = " ".join(
            f"{k.split(':', 1)[1]}={v}"
            for k, v in sorted(self.items())
            if k.startswith("changelog_bytes:")
        )
        return f"{line} changelog_bytes: {written}" if written else line


def create_app(settings: Settings) -> faust.App:
    kafka_url = ";".join(
        f"kafka://{s.strip()}" for s in settings.kafka_bootstrap_servers.split(",")
    )
    set_fetch_max_wait(settings.kafka_fetch_max_wait_ms)
    if settings.kafka_end_offsets_from_last_batch:
        correct_recovery_highwaters(lambda starts: last_offsets_from(settings, starts))
    extra: dict[str, Any] = {}
    if settings.kafka_producer_max_batch_size:
        extra["producer_max_batch_size"] = settings.kafka_producer_max_batch_size
    if settings.kafka_security_protocol != "PLAINTEXT":
        extra["broker_credentials"] = _credentials(settings)
    app = faust.App(
        settings.worker_app_id,
        broker=kafka_url,
        store=settings.worker_store,
        datadir=str(settings.worker_data_dir),
        topic_partitions=settings.kafka_partitions,
        topic_replication_factor=settings.kafka_replication_factor,
        topic_allow_declare=False,
        web_enabled=False,
        **faust_app_settings(settings),
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        producer_acks=-1,
        key_serializer="raw",
        # values are Avro (topics) or orjson bytes (table) that we encode ourselves
        value_serializer="raw",
        **extra,
    )
    topics = settings.topics
    raw: dict[str, Any] = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    events_topic = app.topic(topics.events, partitions=settings.kafka_partitions, **raw)
    accounts = app.Table(
        "accounts",
        partitions=settings.kafka_partitions,
        key_type=bytes,
        value_type=bytes,
        options=table_options(settings),
    )
    # stream time per input partition: the largest event time seen there (persisted, so a
    # restarted worker closes periods exactly as the one before it would have)
    clocks = app.Table(
        "partition-clocks",
        partitions=settings.kafka_partitions,
        key_type=bytes,
        value_type=bytes,
        options=table_options(settings),
    )
    # one dedupe entry per applied event id, pruned by the horizon (streams/dedupe.py)
    event_ids_table = app.Table(
        "event-ids",
        partitions=settings.kafka_partitions,
        key_type=bytes,
        value_type=bytes,
        options=table_options(settings),
    )
    engine = BillingEngine(
        Profiles(settings.profiles_dir),
        allowed_lateness_ms=settings.settlement_allowed_lateness_s * 1000,
        horizon_ms=settings.dedupe_horizon_s * 1000,
        max_ahead_ms=settings.max_event_ahead_s * 1000,
    )
    sweep = EntrySweep(engine.horizon_ms)
    changelog = ChangelogAcks(accounts, clocks, event_ids_table)
    commit_ceilings: dict[int, int] = {}  # input partition -> first offset not durably applied

    async def read_first_offset(topic: str, partition: int, offset: int) -> int | None:
        return await first_offset_at(settings, topic, partition, offset)

    idle = IdleWatermark(settings.worker_idle_advance_s)
    reg = registry()
    outputs = OutputProducer(settings)
    tick_value = reg.encode("clock_tick", {"issued_by": settings.worker_app_id})
    counts = Counts()
    decoded = DecodedStates()
    metrics = PipelineMetrics()
    timing = RoundTiming()
    within = settings.worker_batch_within_ms / 1000
    idle_s = settings.worker_batch_idle_ms / 1000
    due = DueIndex(lambda key: next_due_of(accounts.get(key)))
    rebuilds: set[asyncio.Future] = set()  # kept referenced until done (asyncio holds weak refs)
    pclocks = PartitionClocks()  # stream time per owned partition (partition_clocks.py)
    order = OffsetOrder()  # offsets applied strictly in order (streams/worker/offset_order.py)
    gaps: list[tuple[Any, int, int]] = []

    def next_due_of(stored: bytes | None) -> int | None:
        return engine.next_due(AccountState.loads(stored)) if stored is not None else None

    async def rebuild_due_index(part: int, generation: int) -> None:
        """The partition's due index from the table, in steps that leave the loop to rounds and
        health checks between them (streams/worker/due_index.py)."""
        on_no_partition()
        keys = partition_keys(accounts, part)
        if generation != due.generation:
            return  # a rebalance came first; the next sweep of the partition starts again
        if keys is None:  # the memory store: every partition's keys, hashed in steps
            listing, every = list(accounts.keys()), settings.kafka_partitions
            for i in range(0, len(listing), DUE_INDEX_STEP * 10):
                if generation != due.generation:
                    return
                chunk = listing[i : i + DUE_INDEX_STEP * 10]
                due.add_keys(part, [k for k in chunk if partition_for(k, every) == part])
                await asyncio.sleep(0)
        else:
            due.add_keys(part, keys)
        due.listed(part)
        while generation == due.generation and due.build_step(part, DUE_INDEX_STEP) > 0:
            await asyncio.sleep(0)
        if generation == due.generation:
            log.info(
                "due index of partition %s rebuilt: %s accounts with something due",
                part,
                len(due.known.get(part, ())),
            )

    def rebuild_done(rebuild: asyncio.Future) -> None:
        rebuilds.discard(rebuild)
        if not rebuild.cancelled() and rebuild.exception() is not None:
            # a state that does not decode: a round reading it would fail the same way
            log.error(
                "due index rebuild failed; exiting with code %d",
                EXIT_ROUND_FAILED,
                exc_info=rebuild.exception(),
            )
            logging.shutdown()
            os._exit(EXIT_ROUND_FAILED)

    def due_accounts(part: int, clock_ms: int) -> list[bytes]:
        if not due.started(part):
            due.start(part)
            rebuild = asyncio.ensure_future(rebuild_due_index(part, due.generation))
            rebuilds.add(rebuild)
            rebuild.add_done_callback(rebuild_done)
        return due.due(part, clock_ms)

    async def confirm_gap(ev, through: int) -> None:
        """A jump past ``through`` that outlived the re-reads: moved past only if the broker
        confirms that nothing lies there (transaction markers, compaction); otherwise the worker
        stops loudly, to be restarted."""
        part, offset = ev.message.partition, ev.message.offset
        if not await offsets_absent(read_first_offset, ev.message.topic, part, through + 1, offset):
            log.error(
                "partition %d: offsets %d..%d are in the log, but the consumer keeps jumping over "
                "them; exiting with code %d to be restarted",
                part,
                through + 1,
                offset - 1,
                EXIT_STALLED,
            )
            logging.shutdown()
            os._exit(EXIT_STALLED)
        log.warning(
            "partition %d: offsets %d..%d are absent; continuing at %d",
            part,
            through + 1,
            offset - 1,
            offset,
        )
        gaps.append((ev.message.tp, through + 1, offset - 1))

    async def rate_round(round_events) -> None:
        round_started = time.time()
        timing.age_ms.append((round_started - round_events[0].message.timestamp) * 1000)
        states: dict[bytes, AccountState | None] = {}
        anchors: dict[bytes, Any] = {}
        clock_anchor: dict[int, Any] = {}
        outs = RoundOutputs(reg, topics, metrics)
        entries = RoundEntries(event_ids_table.get)

        def load(key: bytes) -> AccountState | None:
            if key not in states:
                states[key] = decoded.load(key, accounts.get(key))
            return states[key]

        def handle(ev) -> None:
            on_partition_of(ev)  # its key's state and dedupe entries live in its partition
            msg = ev.message
            key, part, offset = msg.key, msg.partition, msg.offset
            clock_anchor[part] = ev
            pclocks.last_offset[part] = offset
            if msg.value == tick_value:
                counts["ticks"] += 1
                pclocks.now[part] = now = idle.clock(part, pclocks.now[part], time.monotonic())
                for acct in due_accounts(part, now):
                    if (state := load(acct)) is not None:
                        outs.add(engine.advance(state, now), acct)
                        anchors[acct] = ev
                return
            counts["messages"] += 1
            decoded = decode_message(
                reg, key, msg.value, partition=part, partitions=settings.kafka_partitions
            )
            counts["consumed"] += len(decoded)
            # a message off its key's partition never touches that key's state (it would be
            # written back to the wrong changelog partition); its events are wrong_partition
            routed = key is not None and partition_for(key, settings.kafka_partitions) == part
            state = load(key) if routed else None
            entries.scope, entries.anchor = partition_scope(part), ev
            if state is not None and state.offsets.get(str(part), -1) >= offset:
                counts["duplicate"] += len(decoded)  # redelivered after a crash: already applied,
                for d in decoded:  # but its accepted events still move the clock, as the first time
                    if d.event is not None and entries.get(
                        id_key(d.event.main_account_id, d.event.event_id)
                    ):
                        pclocks.advance(part, d.event.event_time)
                # written again all the same: a local store (RocksDB) holds a round's states
                # before the changelog acknowledges them, and a worker killed in between leaves
                # its store ahead of its changelog; a restore elsewhere would go back in time
                states[key], anchors[key] = state, ev
                return
            wall_ms = int(time.time() * 1000)
            for i, d in enumerate(decoded):
                if d.event is not None:
                    outcomes, clock = engine.step(
                        state, d.event, clock_ms=pclocks.now[part], entries=entries, wall_ms=wall_ms
                    )
                    if pclocks.advance(part, clock):
                        idle.moved(part, clock, time.monotonic())
                    outcome = outcomes[-1]
                    state = outcome.state
                    if outcome.rejected is not None:
                        d = replace(d, rejected=outcome.rejected, payload=d.standalone_payload(reg))
                    else:
                        counts[outcome.result] += 1
                        for o in outcomes:
                            outs.add(o, key)
                        continue
                assert d.rejected is not None  # neither an event nor a tick: a rejection
                counts["rejected"] += 1
                counts[f"rejected:{d.rejected.code}"] += 1
                log.info(
                    "rejected %s: %s", d.rejected.code, d.rejected.message, extra=event_ids(d, key)
                )
                dl = dead_letter_record(
                    d,
                    topic=msg.topic,
                    partition=part,
                    offset=offset,
                    key=key,
                    fallback_id=f"{msg.topic}:{part}:{offset}:{i}",
                )
                outs.dead_letter(key, dl)
            if key is not None and state is not None:
                state.offsets[str(part)] = offset
                states[key] = state
                anchors[key] = ev

        order.start_round()
        for ev in round_events:
            part, offset = ev.message.partition, ev.message.offset
            if not pclocks.owns(part):
                on_partition_of(ev)
                pclocks.restore(part, offset, clocks.get(pclocks.key(part)))
                order.resume(part, pclocks.restored_through(part))
            verdict = order.judge(part, offset, time.monotonic())
            if verdict in (Verdict.SET_ASIDE, Verdict.SEEK):
                counts["set_aside"] += 1
                if verdict is Verdict.SEEK:
                    counts["resyncs"] += 1
                    log.info(
                        "partition %d: offset %d arrived after %d; reading again from %d (seek %d)",
                        part,
                        offset,
                        order.resync[part] - 1,
                        order.resync[part],
                        order.attempts(part),
                    )
                continue
            if verdict is Verdict.CONFIRM_GAP:
                through = order.through[part]
                assert through is not None  # a jump is measured from an offset applied
                await confirm_gap(ev, through)
            order.applied(part, offset)
            handle(ev)
            pclocks.passed(part, offset)
        processed = time.time()
        metrics.round_seconds.observe(processed - round_started)
        metrics.sync_counts(counts)
        metrics.mark_handled(
            settings.worker_app_id,
            topics.events,
            {p: ev.message.timestamp for p, ev in clock_anchor.items()},
        )
        for tp, first, last in gaps:
            await declare_gap(app.consumer, tp, first, last)
        gaps.clear()
        for part, offset in order.resync.items():
            await app.consumer.seek(TP(topics.events, part), offset)
        # 1) the outputs and the dedupe entries of the events applied, both acknowledged
        #    (together: an entry durable before its outputs is harmless, see 2) before ...
        records = outs.checked()  # a record over the limit fails the round before any write
        for scoped, (entry, ev) in entries.written.items():
            on_partition_of(ev)
            value = entry.encode()
            event_ids_table[scoped] = value
            counts["changelog_bytes:event-ids"] += len(scoped) + len(value)
        producer = await outputs.started() if records else None
        sent = [await producer.send(t, key=k, value=v) for t, k, v in records] if producer else []
        await asyncio.gather(changelog.durable(), *sent)
        # 2) ... the state that says they happened (the changelog partition is the message's
        #    partition, which is the account's). An entry whose sequence the state has not
        #    reached (a crash before 2 is acknowledged) is not taken for a duplicate: the event
        #    is applied again and its outputs, lost or not, are produced again with the same ids.
        for key, ev in anchors.items():
            state = states[key]
            assert state is not None  # an anchored key was stepped, so it has a state
            on_partition_of(ev)
            json = check_record_size(
                "account state", state.main_account_id, state.dumps(), MAX_STATE_BYTES
            )
            stored = pack_state(json)  # about a tenth of the JSON (streams/ledger/state_codec.py)
            accounts[key] = stored
            counts["changelog_bytes:accounts"] += len(key) + len(stored)
            decoded.keep(key, stored, state)
            part = ev.message.partition
            due.set(part, key, engine.next_due(state))
        timing.rounds.append(
            (processed - round_started, time.time() - processed, len(round_events))
        )

        def entry_on_its_partition(scoped: bytes) -> bytes | None:
            # the sweep reads keys of every partition; it visits only those anchored this round
            on_partition_of(clock_anchor[scope_partition(scoped)])
            return event_ids_table.get(scoped)

        for scoped, ev in sweep.expired(
            event_ids_table.keys, entry_on_its_partition, pclocks.now, clock_anchor
        ):
            on_partition_of(ev)
            del event_ids_table[scoped]
        counts["ids_forgotten"] = sweep.forgotten
        for part, ev in clock_anchor.items():
            on_partition_of(ev)
            committed = committed_offset(app.consumer, TP(topics.events, part))
            value = pclocks.record_round(part, committed)
            clocks[pclocks.key(part)] = value
            counts["changelog_bytes:partition-clocks"] += len(value)
        # 3) the round's events are acked (and so committable) only when this returns: every
        #    table write of the round acknowledged first (see faust_internals.ChangelogAcks) ...
        await changelog.durable()
        # ... and faust commits no offset of a message not applied yet (one set aside after a
        #    jump is acked all the same): only below what this worker has durably applied
        for part in clock_anchor:
            through = order.through.get(part)
            if through is not None:
                commit_ceilings[part] = through + 1

    @app.agent(events_topic, name="rate-events")
    async def rate_events(stream):
        cap_commits(app.consumer, topics.events, commit_ceilings)  # once: the consumer exists now
        size_changelog_buffer(
            app.producer,
            2 * settings.worker_batch_max + settings.kafka_partitions + sweep.budget,
        )
        rounds = take_rounds(stream, settings.worker_batch_max, within, idle_s)
        async for round_events in rounds:
            try:
                await rate_round(round_events)
                app.billing_rating = True  # a service crash from now on: exit to be restarted
            except asyncio.CancelledError:
                # take_rounds (as take_events) acks a round's events in a `finally`, so a round
                # cancelled half-way (a rebalance restarting the agent, a shutdown) would be
                # committed as if it had been applied. Exit before faust can commit; the round is
                # replayed.
                log.error(
                    "round of %d events cancelled before it completed; exiting with code %d",
                    len(round_events),
                    EXIT_ROUND_FAILED,
                )
                logging.shutdown()
                os._exit(EXIT_ROUND_FAILED)
            except Exception:  # noqa: BLE001 - a round that cannot complete must not be moved past:
                # faust would restart the agent and commit beyond it. Exit; the supervisor starts a
                # worker that replays the round from the last commit.
                log.exception(
                    "round of %d events failed; exiting with code %d to be restarted",
                    len(round_events),
                    EXIT_ROUND_FAILED,
                )
                logging.shutdown()
                os._exit(EXIT_ROUND_FAILED)

    @app.timer(interval=settings.worker_tick_interval_ms / 1000)
    async def tick_partitions() -> None:
        """Advance idle accounts: a tick into every input partition this worker owns."""
        owned = [tp.partition for tp in app.consumer.assignment() if tp.topic == topics.events]
        for part in owned:
            await events_topic.send(value=tick_value, partition=part, force=True)

    # faust's signal types want a ``signal`` parameter its own receivers do not declare
    @app.on_rebalance_complete.connect  # type: ignore[arg-type]
    async def forget_due_index(sender, **kwargs) -> None:
        due.forget()
        decoded.clear()
        pclocks.forget()  # restored from the clock history at the next message of each partition
        idle.forget()
        order.forget()
        commit_ceilings.clear()  # set again by the next round of each partition

    profiles_root = settings.profiles_dir or PROFILES_DIR
    watched = {"fingerprint": profile_fingerprint(profiles_root)}

    @app.timer(interval=5.0)
    async def reload_profiles() -> None:
        """A changed price book is picked up while running; an invalid one is refused, loudly."""
        current = profile_fingerprint(profiles_root)
        if current == watched["fingerprint"]:
            return
        watched["fingerprint"] = current
        try:
            engine.reload(Profiles(profiles_root))
        except ProfileError as exc:
            log.error("profile change refused, still rating with the loaded price books: %s", exc)
            return
        log.info("profiles reloaded from %s", profiles_root)

    @app.timer(interval=10.0)
    async def report_counts() -> None:
        log.info("counts %s; %s", counts.line(), timing.line())

    async def next_to_handle(tp) -> int | None:
        """The offset of the partition's next message to handle; None while not known yet."""
        handled = pclocks.last_offset.get(tp.partition)
        return handled + 1 if handled is not None else await app.consumer.position(tp)

    @app.timer(interval=2.0)
    async def measure_lag() -> None:
        """Messages behind the end of each owned input partition (ticks included). A metric must
        never stop the worker: anything unknown yet (no fetch, no position) is left out."""
        try:
            lags = []
            for tp in app.consumer.assignment():
                if tp.topic != topics.events:
                    continue
                end, position = app.consumer.highwater(tp), await next_to_handle(tp)
                if end is not None and position is not None:
                    lags.append((tp.topic, tp.partition, end - position))
            metrics.set_lag(settings.worker_app_id, lags)
        except Exception as exc:  # noqa: BLE001 - observability only
            log.debug("lag not measured: %s", exc)

    if settings.worker_stall_timeout_s > 0:
        watch = StallWatch(settings.worker_stall_timeout_s)

        @app.timer(interval=min(5.0, settings.worker_stall_timeout_s / 4))
        async def exit_when_stalled() -> None:
            """Exit (for the supervisor to restart) when owned partitions with messages waiting make
            no progress: see streams/worker/stall.py. What the broker cannot tell is no evidence."""
            tps = [tp for tp in app.consumer.assignment() if tp.topic == topics.events]
            if not tps:
                watch.observe(time.monotonic(), {})
                return
            # faust's TableManager has it, its interface type TableManagerT not
            recovery = app.tables.recovery  # type: ignore[attr-defined]
            recovering = (
                ("recovery", sum(recovery.active_offsets.values()))
                if recovery.in_recovery
                else None
            )
            owned: dict[int, tuple[Hashable, bool]] = {}
            try:
                ends = await asyncio.wait_for(app.consumer.highwaters(*tps), timeout=10.0)
                for tp in tps:
                    end, position = ends.get(tp), await next_to_handle(tp)
                    waiting = end is not None and position is not None and end > position
                    handled = recovering or pclocks.last_offset.get(tp.partition)
                    owned[tp.partition] = (handled, waiting)
            except Exception as exc:  # noqa: BLE001 - offsets unknown (broker away, rebalance):
                # no verdict, and the clock starts again once they are known
                log.debug("stall check skipped: %s", exc)
                watch.observe(time.monotonic(), {})
                return
            now = time.monotonic()
            stalled = watch.observe(now, owned)
            if stalled:
                log.error(
                    "stalled: partitions %s of %s have messages waiting and no progress for %.0fs "
                    "(recovering=%s, rebalancing=%s); exiting with code %d to be restarted",
                    stalled,
                    topics.events,
                    watch.stuck_for(now, stalled[0]),
                    recovery.in_recovery,
                    app.rebalancing,
                    EXIT_STALLED,
                )
                logging.shutdown()
                # a crash, as far as the ledger is concerned: nothing is lost
                os._exit(EXIT_STALLED)

    def ready() -> bool:
        recovery = app.tables.recovery  # type: ignore[attr-defined]  # see stall check
        return recovery.completed.is_set() and not recovery.in_recovery and not app.rebalancing

    if settings.metrics_port:

        @app.task
        async def serve_metrics() -> None:
            runner = await serve(settings.metrics_host, settings.metrics_port, metrics, ready)
            app.metrics_runner = runner  # type: ignore[attr-defined]

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # see forget_due_index
    async def close_outputs(sender, **kwargs) -> None:
        if outputs.producer is not None:
            await outputs.producer.stop()
        runner = getattr(app, "metrics_runner", None)
        if runner is not None:
            await runner.cleanup()

    app.billing_counts = counts  # type: ignore[attr-defined]
    app.billing_metrics = metrics  # type: ignore[attr-defined]
    return app


def event_ids(decoded: Decoded, key: bytes | None) -> dict[str, str]:
    """Log-record extras: every log line about an event carries its ids (JSON logs show them)."""
    ev, payload = decoded.event, decoded.record if isinstance(decoded.record, dict) else {}
    return {
        "event_id": getattr(ev, "event_id", None) or str(payload.get("event_id") or ""),
        "trace_id": getattr(ev, "trace_id", None) or str(payload.get("trace_id") or ""),
        "main_account_id": key.decode("utf-8", "replace") if key else "",
    }


class DecodedStates:
    """The decoded form of the account states this worker wrote last, so a busy account is not
    parsed again every round. An entry is used only while the table still holds the same bytes
    it was decoded from (a recovery or another write replaces them); the least recently written
    go first beyond ``MAX_ACCOUNTS``."""

    MAX_ACCOUNTS = 10_000

    def __init__(self) -> None:
        self.states: dict[bytes, tuple[bytes, AccountState]] = {}
        self.hits = 0

    def load(self, key: bytes, stored: bytes | None) -> AccountState | None:
        if stored is None:
            return None
        cached = self.states.get(key)
        if cached is not None and cached[0] == stored:
            self.hits += 1
            return cached[1]
        return AccountState.loads(stored)

    def keep(self, key: bytes, stored: bytes, state: AccountState) -> None:
        self.states.pop(key, None)  # re-inserted last: the dict's order is the order of writes
        self.states[key] = (stored, state)
        if len(self.states) > self.MAX_ACCOUNTS:
            del self.states[next(iter(self.states))]

    def clear(self) -> None:
        self.states.clear()


class RoundTiming:
    """How long rounds take and how old events are when their round starts (logged, then reset)."""

    def __init__(self) -> None:
        self.age_ms: list[float] = []
        self.rounds: list[tuple[float, float, int]] = []

    def line(self) -> str:
        if not self.rounds:
            return "no rounds"
        ages = sorted(self.age_ms)
        work = sorted(r[0] for r in self.rounds)
        acks = sorted(r[1] for r in self.rounds)
        out = (
            f"rounds={len(self.rounds)} "
            f"events/round={sum(r[2] for r in self.rounds) / len(self.rounds):.0f} "
            f"age_at_start_ms p50={ages[len(ages) // 2]:.0f} max={ages[-1]:.0f} "
            f"process_ms p50={1000 * work[len(work) // 2]:.1f} max={1000 * work[-1]:.1f} "
            f"output_ack_ms p50={1000 * acks[len(acks) // 2]:.1f} max={1000 * acks[-1]:.1f}"
        )
        self.age_ms.clear()
        self.rounds.clear()
        return out


class OutputProducer:
    """Outputs go through their own producer with ordinary batching: the one-record-per-batch
    setting that local Tansu needs (KAFKA_PRODUCER_MAX_BATCH_SIZE) protects table changelog
    recovery only, and stays on faust's producer, which writes nothing but the changelogs."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.producer: AIOKafkaProducer | None = None

    async def started(self) -> AIOKafkaProducer:
        if self.producer is None:
            kwargs = producer_kwargs(self.settings)
            kwargs["linger_ms"] = 0
            producer = AIOKafkaProducer(**kwargs)
            await producer.start()
            self.producer = producer
        return self.producer


def profile_fingerprint(root) -> tuple:
    return tuple(
        sorted((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*.yaml"))
    )


def _credentials(settings: Settings):
    import ssl

    from faust.auth import SASLCredentials, SSLCredentials

    ctx = ssl.create_default_context(cafile=settings.kafka_ssl_cafile or None)
    if settings.kafka_security_protocol == "SSL":
        return SSLCredentials(ctx)
    return SASLCredentials(
        username=settings.kafka_sasl_username,
        password=settings.kafka_sasl_password,
        mechanism=settings.kafka_sasl_mechanism or "SCRAM-SHA-512",
        ssl_context=ctx if settings.kafka_security_protocol == "SASL_SSL" else None,
    )


def run_worker(settings: Settings) -> None:
    """Run one worker until SIGTERM/SIGINT (faust handles both and shuts down cleanly)."""
    from streams.kafka_admin import ensure_topics

    ensure_topics(settings)
    settings.worker_data_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(settings)
    from streams.observability.logs import dict_config

    worker = faust.Worker(
        app, loglevel=settings.log_level, quiet=True, logging_config=dict_config(settings)
    )
    started = time.monotonic()
    log.info("worker starting (app id %s, store %s)", settings.worker_app_id, settings.worker_store)
    try:
        worker.execute_from_commandline()
    except SystemExit as exit_:
        crash = worker.crash_reason or app.crash_reason
        code = exit_code_after_crash(exit_.code, crash, getattr(app, "billing_rating", False))
        if code != exit_.code:
            log.error(
                "a faust service crashed while the worker was rating (%r); exiting with code %d "
                "to be restarted",
                crash,
                code,
            )
            raise SystemExit(code) from crash
        raise
    finally:
        counts = app.billing_counts  # type: ignore[attr-defined]
        log.info("worker stopped after %.1fs: %s", time.monotonic() - started, counts.line())
