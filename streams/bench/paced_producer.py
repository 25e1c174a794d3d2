"""The latency bench's load: JSON lines produced at a steady rate from a process of its own.

The measuring process also runs the ClickHouse sink into embedded chDB, whose inserts hold its
event loop; events produced from that loop left late whenever an insert ran, and the wait counted
as pipeline latency. Here nothing else runs: each event is stamped just before it is handed to
the producer, and the stamps are written out once all are acknowledged.

    python -m streams.bench.paced_producer LINES RATE STAMPS    (settings from the environment)
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import orjson

from streams.config import Settings
from streams.ingest.producer import EventProducer, encode_line


async def produce_paced(settings: Settings, lines: list[bytes], rate: float) -> dict[str, float]:
    """Every line at ``rate`` events/s; returns event id -> wall time when it was sent."""
    sent_at: dict[str, float] = {}
    async with EventProducer(settings) as producer:
        interval, start = 1.0 / rate, time.time()
        futures = []
        for i, raw in enumerate(lines):
            delay = start + i * interval - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            key, value, _ = encode_line(producer.registry, raw)
            sent_at[orjson.loads(raw)["event_id"]] = time.time()
            futures.append(
                await producer.producer.send(settings.topics.events, key=key, value=value)
            )
        await asyncio.gather(*futures)
    return sent_at


def main(argv: list[str]) -> None:
    lines_path, rate, stamps_path = Path(argv[0]), float(argv[1]), Path(argv[2])
    lines = lines_path.read_bytes().splitlines()
    sent_at = asyncio.run(produce_paced(Settings.from_env(), lines, rate))
    stamps_path.write_bytes(orjson.dumps(sent_at))


if __name__ == "__main__":
    main(sys.argv[1:])
