"""Full-restore rate of the accounts table (README "Worker state"): N account records written to
the accounts changelog of a local Tansu broker, then a worker started with an empty store (what a
new pod or a lost volume does) timed to /readyz, against a worker with an empty changelog.

    .venv/bin/python -m streams.bench.restore_rate 60000
"""

import asyncio
import shutil
import sys
import time
from pathlib import Path

from aiokafka import AIOKafkaProducer

from streams.engine import BillingEngine
from streams.ingest.events import parse_json_event
from streams.kafka_admin import create_topics
from streams.kafka_client import client_kwargs
from streams.local.pipeline import LocalPipeline
from streams.local.tansu import start_broker
from streams.rating.profiles import Profiles

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20000


def records(n):
    engine = BillingEngine(Profiles())
    ev = parse_json_event
    out = []
    for i in range(n):
        key = f"s-{i:07d}"
        s = engine.apply(
            None,
            ev(
                dict(
                    kind="account",
                    event_id=f"o{i}",
                    account_id=key,
                    main_account_id=key,
                    event_time="2026-05-01T00:00:00Z",
                    type="account_opened",
                    profile="tokenhub",
                    post_paid=True,
                )
            ),
        ).state
        for j in range(5):
            s = engine.apply(
                s,
                ev(
                    dict(
                        kind="usage",
                        event_id=f"u{i}-{j}",
                        account_id=key,
                        main_account_id=key,
                        event_time=f"2026-05-01T01:0{j}:00Z",
                        item="tokens",
                        model="kimi-k2.5",
                        input_tokens=1000,
                        output_tokens=100,
                    )
                ),
            ).state
        out.append((key.encode(), s.stored()))
    return out


def wait_log(path, needle, timeout):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if path.exists() and needle in path.read_bytes():
            return time.monotonic() - t0
        time.sleep(0.05)
    raise RuntimeError(f"no {needle!r} in {path} after {timeout}s")


def wait_ready(port, timeout):
    import urllib.request

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200:
                return time.monotonic() - t0
        except Exception:
            pass
        time.sleep(0.1)
    raise RuntimeError("not ready")


def main():
    run = Path(".run/restore-rate")
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    with start_broker(log_path=run / "broker.log") as broker:
        times = {}
        for tag, n in (("empty", 0), ("full", N)):
            p = LocalPipeline(
                run / tag,
                env_overrides={"KAFKA_TOPIC_PREFIX": f"{tag}.", "WORKER_APP_ID": f"{tag}-rating"},
            )
            s = p.start_broker(broker.bootstrap)
            asyncio.run(create_topics(s))
            size = 0
            if n:
                recs = records(n)
                size = sum(len(k) + len(v) for k, v in recs)

                async def fill(s=s, tag=tag, recs=recs):
                    prod = AIOKafkaProducer(**client_kwargs(s), acks="all", max_batch_size=16)
                    await prod.start()
                    try:
                        futs = [
                            await prod.send(f"{tag}-rating-accounts-changelog", key=k, value=v)
                            for k, v in recs
                        ]
                        await asyncio.gather(*futs)
                    finally:
                        await prod.stop()

                t0 = time.monotonic()
                asyncio.run(fill())
                print(f"filled {n} records, {size / 1e6:.1f} MB in {time.monotonic() - t0:.1f}s")
            w = p.start_worker()
            t = wait_ready(w.metrics_port, 900)
            times[tag] = (t, size)
            print(tag, n, f"ready after {t:.1f}s")
            w.terminate()
        base = times["empty"][0]
        t, size = times["full"]
        print(
            f"RESULT: {N} accounts, {size / 1e6:.1f} MB changelog, start {base:.1f}s empty vs "
            f"{t:.1f}s full: "
            f"restore {t - base:.1f}s = {N / max(t - base, 1e-9):,.0f} records/s, "
            f"{size / 1e6 / max(t - base, 1e-9):.2f} MB/s"
        )


if __name__ == "__main__":
    main()
