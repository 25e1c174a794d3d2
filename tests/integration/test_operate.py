"""Operating the pipeline as an operator would: metrics scraped over HTTP after a known stream, the
health endpoints, and every cluster-facing `rating` subcommand run as a subprocess against the real
broker (exit codes and output)."""

import asyncio
import json
import subprocess
import sys
import urllib.request
from decimal import Decimal
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.engine import BillingEngine
from streams.local.synthetic import generate, malformed
from streams.rating.profiles import Profiles
from streams.simulate import simulate

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def rating(h, *args, env_extra=None, timeout=120, input=None):
    env = h.pipeline.worker_env()
    env["METRICS_PORT"] = "0"
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "streams.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
        input=input,
    )


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples, name, **labels):
    return sum(
        v
        for (n, lab), v in samples.items()
        if n == name and all(dict(lab).get(k) == w for k, w in labels.items())
    )


def status(port: int, path: str) -> int:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_metrics_show_the_counts_of_a_known_stream(harness):
    h = harness
    good = generate(seed=5, accounts=12, usage_events=300, prefix=h.tag)
    bad = malformed(seed=5, count=9, known_account=f"{h.tag}-00001")
    lines = good[:150] + bad + good[150:] + good[:20]  # the last 20 again: duplicates by event id
    expected = simulate(
        list(enumerate(lines, 1)),
        BillingEngine(Profiles(), allowed_lateness_ms=300_000),
        partitions=4,
    )
    worker = h.start_worker()
    assert worker.metrics_port
    asyncio.run(h.produce(lines))
    assert h.land(lambda: h.count("deductions", f"{h.tag}-%") >= len(expected.deductions))

    def settled():
        m = scrape(worker.metrics_port)
        return total(m, "billing_events_consumed_total") >= len(lines)

    assert h.land(settled, timeout=30)
    m = scrape(worker.metrics_port)
    c = expected.counts
    assert total(m, "billing_events_consumed_total") == c["consumed"] == len(lines)
    assert total(m, "billing_events_rated_total") == c["rated"] == len(expected.deductions)
    assert total(m, "billing_events_applied_total") == c["applied"]
    assert total(m, "billing_events_duplicate_total") == c["duplicate"] == 20
    assert total(m, "billing_events_rejected_total") == c["rejected"] == 9
    by_reason = {}  # as published: bytes that are not JSON are not Avro either on the wire
    for _, d in h.consume(h.settings.topics.dead_letters, 9, timeout=20):
        by_reason[d["reason_code"]] = by_reason.get(d["reason_code"], 0) + 1
    assert sum(by_reason.values()) == 9 and len(by_reason) >= 3
    for reason, n in by_reason.items():
        assert total(m, "billing_events_rejected_total", reason=reason) == n, reason
    # amounts per profile and currency agree with the exact sums (to float precision: dashboards
    # only)
    for profile in {d["profile"] for d in expected.deductions}:
        mine = [d for d in expected.deductions if d["profile"] == profile]
        assert total(m, "billing_deductions_total", profile=profile) == len(mine)
        exact = sum((Decimal(d["rated_amount"]) for d in mine), Decimal(0))
        assert abs(
            total(m, "billing_rated_amount_total", profile=profile) - float(exact)
        ) < 1e-6 * max(1.0, float(exact))
        cash = sum(
            (Decimal(s["amount"]) for d in mine for s in d["splits"] if s["bucket_kind"] == "cash"),
            Decimal(0),
        )
        assert abs(
            total(m, "billing_bucket_amount_total", profile=profile, bucket="cash") - float(cash)
        ) < 1e-6 * max(1.0, float(cash))
    # alerts by kind: exactly what the worker published on the alerts topic
    published = h.consume(
        h.settings.topics.alerts, int(total(m, "billing_alerts_total")), timeout=20
    )
    kinds = {}
    for _, a in published:
        kinds[a["kind"]] = kinds.get(a["kind"], 0) + 1
    assert kinds and sum(kinds.values()) == total(m, "billing_alerts_total")
    for kind, n in kinds.items():
        assert total(m, "billing_alerts_total", kind=kind) == n, kind
    assert total(m, "billing_worker_round_seconds_count") > 0
    assert (
        "billing_consumer_lag",
        (
            ("group", h.settings.worker_app_id),
            ("partition", "0"),
            ("topic", h.settings.topics.events),
        ),
    ) in m
    assert status(worker.metrics_port, "/healthz") == 200
    assert status(worker.metrics_port, "/readyz") == 200
    # the sink's metrics (in this process) count the rows it inserted
    sink = scrape_text(h.sink.metrics.exposition())
    assert total(sink, "billing_sink_rows_total", table="deductions") >= len(expected.deductions)
    assert total(sink, "billing_sink_batch_rows_count") > 0
    assert total(sink, "billing_sink_insert_seconds_count", table="deductions") > 0


def scrape_text(body: bytes):
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_endpoints_bind_to_loopback_by_default(harness):
    worker = harness.start_worker()
    assert harness.land(lambda: _listening(worker.metrics_port), timeout=60)
    assert status(worker.metrics_port, "/healthz") == 200
    # the kernel's table of listening sockets: the endpoint's only address is 127.0.0.1
    addresses = listening_addresses(worker.metrics_port)
    assert addresses == {"0100007F"}, addresses


def listening_addresses(port: int) -> set[str]:
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                found.add(address)
    return found


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_cli_against_the_cluster(harness):
    h = harness
    tag = h.tag
    opened = json.dumps(
        {
            "kind": "account",
            "event_id": f"{tag}-open",
            "account_id": f"{tag}-ann",
            "main_account_id": f"{tag}-ann",
            "event_time": "2026-05-01T08:00:00+08:00",
            "type": "account_opened",
            "profile": "tokenhub",
            "currency": "CNY",
            "post_paid": True,
            "amount": "20",
        }
    )
    early = json.dumps(
        {
            "kind": "usage",
            "event_id": f"{tag}-early",
            "trace_id": f"tr-{tag}-early",
            "account_id": f"{tag}-bo",
            "main_account_id": f"{tag}-bo",
            "event_time": "2026-05-01T09:00:00+08:00",
            "item": "tokens",
            "model": "Deepseek-v3.2",
            "input_tokens": 1000,
            "output_tokens": 500,
        }
    )
    used = json.dumps(
        {
            "kind": "usage",
            "event_id": f"{tag}-u1",
            "trace_id": f"tr-{tag}-u1",
            "account_id": f"{tag}-ann",
            "main_account_id": f"{tag}-ann",
            "event_time": "2026-05-01T09:00:00+08:00",
            "item": "tokens",
            "model": "Deepseek-v3.2",
            "input_tokens": 1000,
            "output_tokens": 500,
        }
    )
    events = Path(h.pipeline.run_dir) / "ops.jsonl"
    events.write_text("\n".join([opened, early, used]) + "\n")

    r = rating(h, "topics", "--check")
    assert r.returncode == 0, r.stderr
    assert h.settings.topics.dead_letters_redriven in r.stdout and "missing" not in r.stdout
    r = rating(h, "replay", str(events))
    assert r.returncode == 0 and "sent 3 events" in r.stdout, r.stderr
    worker = h.start_worker()
    assert h.land(
        lambda: h.count("deductions", f"{tag}-%") >= 1 and h.count("dead_letters", f"{tag}-%") >= 1
    )

    r = rating(h, "account", "show", f"{tag}-ann")
    assert r.returncode == 0, r.stderr
    assert "tokenhub" in r.stdout and "active" in r.stdout and "cash balance" in r.stdout
    state = json.loads(rating(h, "account", "show", f"{tag}-ann", "--json").stdout)
    assert state["main_account_id"] == f"{tag}-ann" and state["offsets"]
    kind = h.scalar(
        f"SELECT split_bucket_kind[1] FROM deductions FINAL WHERE event_id = '{tag}-u1'"
    )
    if kind == "trial":  # the tokenhub trial of the model paid: it shows as used in the state
        assert any(
            Decimal(t["remaining"]) == Decimal(t["granted"]) - 1500
            for t in state["trials"].values()
        ), state["trials"]
    else:
        assert Decimal(state["cash"]) < Decimal(20)
    r = rating(h, "account", "show", f"{tag}-nobody")
    assert (
        r.returncode == 2
        and "not in the pipeline's state" in r.stderr
        and "Traceback" not in r.stderr
    )

    r = rating(h, "dlq", "list")
    assert r.returncode == 0 and "by reason: unknown_account 1" in r.stdout, r.stdout + r.stderr
    letter_id = h.scalar(
        f"SELECT dead_letter_id FROM dead_letters FINAL WHERE event_id = '{tag}-early'"
    )
    r = rating(h, "dlq", "explain", letter_id[:12])
    assert r.returncode == 0, r.stderr
    assert "send its open_account event" in r.stdout or "open_account" in r.stdout
    assert "would still be rejected" in r.stdout

    # fix the cause (open the account), then re-drive: charged once, and a second re-drive sends
    # nothing before the fix, the letter would still be rejected: nothing to send
    r = rating(h, "dlq", "redrive", "--reason", "unknown_account", "--dry-run")
    assert r.returncode == 0 and "0 to send" in r.stdout, r.stdout
    asyncio.run(
        h.produce(
            [
                opened.replace(f"{tag}-ann", f"{tag}-bo")
                .replace(f"{tag}-open", f"{tag}-open-bo")
                .encode()
            ]
        )
    )
    assert h.land(lambda: rating(h, "account", "show", f"{tag}-bo").returncode == 0, timeout=60)
    r = rating(h, "dlq", "redrive", "--reason", "unknown_account", "--dry-run")
    assert r.returncode == 0 and "1 to send" in r.stdout, r.stdout
    r = rating(h, "dlq", "redrive", "--reason", "unknown_account", "--yes")
    assert r.returncode == 0 and "re-drove 1 events" in r.stdout, r.stdout + r.stderr
    assert h.land(
        lambda: (
            h.scalar(f"SELECT count() FROM deductions FINAL WHERE event_id = '{tag}-early'") == 1
        )
    )
    r = rating(h, "dlq", "redrive", "--reason", "unknown_account", "--yes")
    assert (
        r.returncode == 0
        and "1 already re-driven or charged" in r.stdout
        and "0 to send" in r.stdout
    )
    r = rating(h, "dlq", "redrive")
    assert r.returncode == 2 and "--reason" in r.stderr
    assert worker.alive()


def test_secrets_never_appear_in_logs_errors_or_metrics(harness, tmp_path):
    h = harness
    secret = "s3cr3t-Pa55word-9f2c"
    # a worker with a secret configured (PLAINTEXT ignores it) logs in JSON and serves metrics
    h.pipeline.env_overrides.update(
        {"KAFKA_SASL_PASSWORD": secret, "CLICKHOUSE_PASSWORD": secret, "LOG_FORMAT": "json"}
    )
    h.pipeline.settings = h.pipeline.start_broker(h.settings.kafka_bootstrap_servers)
    worker = h.start_worker()
    bad = malformed(seed=3, count=5, known_account=f"{h.tag}-x")
    asyncio.run(h.produce(bad))
    assert h.land(
        lambda: (
            _listening(worker.metrics_port)
            and total(scrape(worker.metrics_port), "billing_events_consumed_total") >= 5
        ),
        timeout=60,
    )
    body = (
        urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=5)
        .read()
        .decode()
    )
    worker.terminate()
    log = worker.log_path.read_text()
    assert "billing_events_rejected_total" in body and secret not in body
    assert '"level"' in log and "rejected" in log and secret not in log
    # errors that involve the secret-bearing settings print one line without it
    env = {
        "CLICKHOUSE_URL": f"http://admin:{secret}@127.0.0.1:9/billing",
        "CLICKHOUSE_PASSWORD": secret,
        "KAFKA_SASL_PASSWORD": secret,
    }
    r = rating(h, "migrate", env_extra=env, timeout=60)
    assert (
        r.returncode != 0 and "Traceback" not in r.stderr and secret not in r.stdout + r.stderr
    ), r.stderr
    r = rating(
        h,
        "account",
        "show",
        "x",
        env_extra={**env, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"},
        timeout=90,
    )
    assert (
        r.returncode != 0 and "Traceback" not in r.stderr and secret not in r.stdout + r.stderr
    ), r.stderr


def test_run_starts_workers_and_sink_on_the_configured_cluster(harness, tmp_path):
    h = harness
    lines = generate(seed=8, accounts=4, usage_events=40, prefix=h.tag)
    expected = simulate(
        list(enumerate(lines, 1)),
        BillingEngine(Profiles(), allowed_lateness_ms=300_000),
        partitions=4,
    )
    events = tmp_path / "run.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    # its own chDB directory: chDB opens one database per process
    r = rating(
        h,
        "run",
        "--duration",
        "35",
        "--replay",
        str(events),
        env_extra={"CHDB_PATH": str(tmp_path / "run-chdb"), "SINK_GROUP_ID": f"{h.tag}-run-sink"},
        timeout=180,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"replay  {len(lines)} events" in r.stdout
    inserted = dict(
        part.rsplit(" ", 1)
        for part in r.stdout.split("rows inserted this run: ")[1].strip().split(", ")
    )
    assert int(inserted["deductions"]) >= len(expected.deductions)
    # trace a settlement line from the same database (the run has exited, so this process may open
    # it)
    line = min(
        (
            x
            for x in expected.settlements
            if x["line_type"] == "regular"
            and x["event_count"] >= 2
            and not any(v.endswith("@elsewhere") for v in x["price_versions"])
        ),
        key=lambda x: (x["period_start"], x["settlement_id"]),
    )
    r = rating(
        h,
        "trace",
        line["settlement_id"],
        "--json",
        env_extra={"CHDB_PATH": str(tmp_path / "run-chdb")},
    )
    assert r.returncode == 0, r.stderr
    chain = json.loads(r.stdout)
    assert [x["settlement_id"] for x in chain["settlement_lines"]] == [line["settlement_id"]]
    members = [d for d in expected.deductions if d["settlement_id"] == line["settlement_id"]]
    assert len(members) == line["event_count"]
    assert sorted(d["event_id"] for d in chain["deductions"]) == sorted(
        d["event_id"] for d in members
    )
    for d in chain[
        "deductions"
    ]:  # a model billed by its own platform has no price row here, by design
        assert (
            d["price_row"]
            if not d["price_version"].endswith("@elsewhere")
            else d["price_row"] is None
        ), d
    assert sum(Decimal(d["rated_amount"]) for d in chain["deductions"]) == Decimal(
        line["gross_amount"]
    )
    # from one event: its deduction and the line that holds it
    r = rating(
        h, "trace", members[0]["event_id"], env_extra={"CHDB_PATH": str(tmp_path / "run-chdb")}
    )
    assert (
        r.returncode == 0
        and line["settlement_id"] in r.stdout
        and "paid by:" in r.stdout
        and "price row:" in r.stdout
    )
    r = rating(h, "trace", "no-such-id", env_extra={"CHDB_PATH": str(tmp_path / "run-chdb")})
    assert r.returncode == 2 and "is not a settlement line" in r.stderr


def test_demo_is_what_make_run_runs(tmp_path):
    """`rating demo` starts its own broker, worker and sink; it fails unless ClickHouse equals
    simulate."""
    r = subprocess.run(
        [sys.executable, "-m", "streams.cli.main", "demo", "examples/demo.jsonl"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=240,
        env={
            k: v
            for k, v in __import__("os").environ.items()
            if not k.startswith(("KAFKA_", "CLICKHOUSE_", "CHDB_", "WORKER_", "SINK_"))
        },
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "identical to" in r.stdout and "dead letters in ClickHouse" in r.stdout


def test_sink_process_lands_rows_serves_health_and_stops_cleanly(harness, tmp_path):
    import signal
    import time

    from streams.local.pipeline import free_port

    h = harness
    lines = generate(seed=13, accounts=3, usage_events=30, prefix=h.tag)
    expected = simulate(
        list(enumerate(lines, 1)),
        BillingEngine(Profiles(), allowed_lateness_ms=300_000),
        partitions=4,
    )
    h.start_worker()
    asyncio.run(h.produce(lines))
    port = free_port()
    env = h.pipeline.worker_env()
    env.update(
        {
            "METRICS_PORT": str(port),
            "CHDB_PATH": str(tmp_path / "sink-chdb"),
            "SINK_GROUP_ID": f"{h.tag}-sink-process",
        }
    )
    sink = subprocess.Popen(
        [sys.executable, "-m", "streams.cli.main", "sink"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    try:
        deadline = time.monotonic() + 90
        rows = 0.0
        while time.monotonic() < deadline:
            if _listening(port) and status(port, "/readyz") == 200:
                rows = total(scrape(port), "billing_sink_rows_total", table="deductions")
                if rows >= len(expected.deductions):
                    break
            time.sleep(1)
        assert rows == len(expected.deductions)
        assert status(port, "/healthz") == 200
    finally:
        sink.send_signal(signal.SIGTERM)
        out, errors = sink.communicate(timeout=60)
    assert sink.returncode == 0, errors[-2000:]
    assert "sink stopped" in out and "Traceback" not in errors


def test_topics_check_reports_what_differs_from_the_definitions(harness):
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from streams.kafka_client import client_kwargs

    h = harness
    prefix = f"{h.tag}x."

    async def precreate():
        admin = AIOKafkaAdminClient(**client_kwargs(h.settings))
        await admin.start()
        try:  # the events topic with too few partitions, the status topic without compaction
            await admin.create_topics(
                [NewTopic(f"{prefix}events", 2, 1), NewTopic(f"{prefix}account-status", 4, 1)]
            )
        finally:
            await admin.close()

    asyncio.run(precreate())
    r = rating(h, "topics", "--check", env_extra={"KAFKA_TOPIC_PREFIX": prefix})
    assert r.returncode == 1, r.stdout + r.stderr
    assert (
        "2 partitions, expected 4" in r.stdout
        and "broker has cleanup.policy=" in r.stdout
        and "missing" in r.stdout
    )
    # creates what is missing, cannot fix the rest
    r = rating(h, "topics", env_extra={"KAFKA_TOPIC_PREFIX": prefix})
    assert r.returncode == 1 and "created" in r.stdout and "2 partitions, expected 4" in r.stdout
    # production durability against topics created with replication 1 and min ISR 1
    r = rating(
        h,
        "topics",
        "--check",
        env_extra={
            "KAFKA_TOPIC_PREFIX": prefix,
            "KAFKA_REPLICATION_FACTOR": "3",
            "KAFKA_MIN_INSYNC_REPLICAS": "2",
        },
    )
    assert r.returncode == 1, r.stdout + r.stderr
    flat = " ".join(r.stdout.split())
    assert "replication factor 1, expected 3" in flat and "min.insync.replicas='1'" in flat, (
        r.stdout
    )


def test_sink_stops_rather_than_skip_a_record_it_cannot_read(harness):
    """An unknown schema id on an output
    topic (a newer writer than this sink): nothing committed."""
    from aiokafka import AIOKafkaProducer

    from streams.kafka_client import client_kwargs
    from streams.sink.clickhouse import SinkHalted

    h = harness
    topic = h.settings.topics.deductions

    async def go():
        producer = AIOKafkaProducer(**client_kwargs(h.settings))
        await producer.start()
        try:
            await producer.send_and_wait(
                topic,
                key=b"x",
                value=b"\x00\x00\x00\x03\xe7 written by a newer schema",
                partition=0,
            )
        finally:
            await producer.stop()
        await h.sink.start()
        try:
            with pytest.raises(SinkHalted, match="upgrade the sink"):
                for _ in range(60):
                    await h.sink.step()
            from aiokafka import TopicPartition

            assert await h.sink.consumer.committed(TopicPartition(topic, 0)) is None
        finally:
            await h.sink.stop()

    asyncio.run(go())
