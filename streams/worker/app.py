"""The stream processor: a faust-streaming app whose one agent rates and pays every input event.

Exactly-once *effect* on an at-least-once broker, without Kafka transactions:

1. Events are taken in rounds (``take_events``). Each account's state is read once per round from
   the ``accounts`` table and updated in memory by the pure ``BillingEngine``.
2. All output records of the round (deductions, alerts, status, dead letters) are produced and
   their acknowledgements awaited.
3. Only then is each changed account written back to the table (one changelog record per account,
   holding balances, the recent event ids and the input offset together).
4. faust commits the input offsets after that, flushing the producer first.

A crash before (3) replays the round from the old state: the same deterministic ids come out
again and downstream dedupes them. A crash after (3) finds the offset in the state and skips the
message. A producer duplicate (same event id, new offset) is caught by the recent-ids window.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import Counter
from typing import Any

import faust
from faust.streams import _current_event

from streams.config import Settings
from streams.engine import BillingEngine
from streams.ingest.codec import registry
from streams.ingest.messages import Decoded, dead_letter_record, decode_message
from streams.ledger.alerts import ARREARS_KINDS
from streams.ledger.state import AccountState
from streams.rating.profiles import PROFILES_DIR, ProfileError, Profiles

log = logging.getLogger("streams.worker")


class Counts(Counter):
    """consumed = rated + applied + rejected + duplicates, per event (a batch message counts each)."""

    def line(self) -> str:
        keys = ("messages", "consumed", "rated", "applied", "rejected", "duplicates")
        return " ".join(f"{k}={self.get(k, 0)}" for k in keys)


def create_app(settings: Settings) -> faust.App:
    kafka_url = ";".join(f"kafka://{s.strip()}" for s in settings.kafka_bootstrap_servers.split(","))
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
        broker_rebalance_timeout=5.0,
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        producer_acks=-1,
        table_standby_replicas=0,
        key_serializer="raw",
        value_serializer="raw",  # values are Avro (topics) or orjson bytes (table) we encode ourselves
        **extra,
    )
    topics = settings.topics
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    events_topic = app.topic(topics.events, partitions=settings.kafka_partitions, **raw)
    out = {name: app.topic(name, **raw) for name in topics.all()}
    accounts = app.Table("accounts", partitions=settings.kafka_partitions, key_type=bytes, value_type=bytes)
    engine = BillingEngine(Profiles(settings.profiles_dir))
    reg = registry()
    counts = Counts()
    within = settings.worker_batch_within_ms / 1000

    def outputs_for(outcome, key: bytes, produce: list) -> None:
        if outcome.deduction is not None:
            produce.append((topics.deductions, key, reg.encode("deduction", outcome.deduction)))
        for a in outcome.alerts:
            value = reg.encode("alert", a)
            produce.append((topics.alerts, key, value))
            if a["kind"] in ARREARS_KINDS:
                produce.append((topics.arrears_alerts, key, value))
        if outcome.status is not None:
            produce.append((topics.account_status, key, reg.encode("account_status", outcome.status)))

    @app.agent(events_topic, name="rate-events")
    async def rate_events(stream):
        async for round_events in stream.take_events(settings.worker_batch_max, within=within):
            states: dict[bytes, AccountState | None] = {}
            anchors: dict[bytes, Any] = {}
            produce: list[tuple[str, bytes | None, bytes]] = []
            for ev in round_events:
                msg = ev.message
                key, part, offset = msg.key, msg.partition, msg.offset
                counts["messages"] += 1
                decoded = decode_message(reg, key, msg.value)
                counts["consumed"] += len(decoded)
                state = None
                if key is not None:
                    if key not in states:
                        stored = accounts.get(key)
                        states[key] = AccountState.loads(stored) if stored is not None else None
                    state = states[key]
                if state is not None and state.offsets.get(str(part), -1) >= offset:
                    counts["duplicates"] += len(decoded)  # redelivered after a crash: already applied
                    continue
                for i, d in enumerate(decoded):
                    if d.event is not None:
                        outcome = engine.apply(state, d.event)
                        state = outcome.state
                        if outcome.rejected is not None:
                            d = Decoded(d.event, outcome.rejected, d.payload)
                        else:
                            counts[outcome.result] += 1
                            outputs_for(outcome, key, produce)
                            continue
                    counts["rejected"] += 1
                    counts[f"rejected:{d.rejected.code}"] += 1
                    dl = dead_letter_record(d, topic=msg.topic, partition=part, offset=offset, key=key,
                                            fallback_id=f"{msg.topic}:{part}:{offset}:{i}")
                    produce.append((topics.dead_letters, key, reg.encode("dead_letter", dl)))
                if key is not None and state is not None:
                    state.offsets[str(part)] = offset
                    states[key] = state
                    anchors[key] = ev
            # 1) outputs durable first ...
            if produce:
                futures = [await out[t].send(key=k, value=v, force=True) for t, k, v in produce]
                await asyncio.gather(*futures)
            # 2) ... then the state that says they happened
            for key, ev in anchors.items():
                _current_event.set(weakref.ref(ev))  # the changelog partition is the account's partition
                accounts[key] = states[key].dumps()

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
        log.info("counts %s", counts.line())

    app.billing_counts = counts  # type: ignore[attr-defined]
    return app


def profile_fingerprint(root) -> tuple:
    return tuple(sorted((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*.yaml")))


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
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True)
    started = time.monotonic()
    log.info("worker starting (app id %s, store %s)", settings.worker_app_id, settings.worker_store)
    try:
        worker.execute_from_commandline()
    finally:
        log.info("worker stopped after %.1fs: %s", time.monotonic() - started, app.billing_counts.line())  # type: ignore[attr-defined]
