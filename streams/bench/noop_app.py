"""The benchmark's baseline: a faust agent that does nothing per event, on the same broker with the
same topic layout and settings as the rating worker. Run as a subprocess by `rating bench`."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import faust

from streams.config import Settings
from streams.worker.faust_internals import set_fetch_max_wait


def main() -> None:
    s = Settings.from_env(
        {k: v for k, v in os.environ.items() if k in __import__("streams.config").config.SETTINGS}
    )
    expect = int(os.environ["BENCH_EXPECT"])
    out = Path(os.environ["BENCH_OUT"])
    set_fetch_max_wait(s.kafka_fetch_max_wait_ms)  # the same consumer as the rating worker's
    kafka_url = ";".join(f"kafka://{h.strip()}" for h in s.kafka_bootstrap_servers.split(","))
    extra: dict[str, Any] = (
        {"producer_max_batch_size": s.kafka_producer_max_batch_size}
        if s.kafka_producer_max_batch_size
        else {}
    )
    app = faust.App(
        s.worker_app_id,
        broker=kafka_url,
        store="memory://",
        topic_partitions=s.kafka_partitions,
        web_enabled=False,
        topic_allow_declare=False,
        broker_rebalance_timeout=5.0,
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        key_serializer="raw",
        value_serializer="raw",
        **extra,
    )
    topic = app.topic(
        s.topics.events, key_type=bytes, value_type=bytes, partitions=s.kafka_partitions
    )
    seen = {"n": 0, "first": None}

    @app.agent(topic, name="noop")
    async def noop(stream):
        async for _ in stream:
            if seen["first"] is None:
                seen["first"] = time.time()
            seen["n"] += 1
            if seen["n"] == expect:
                out.write_text(f"{seen['first']} {time.time()} {seen['n']}")

    worker = faust.Worker(app, loglevel="INFO", quiet=True)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
