"""The bench's sink step on its own: 100,000 deductions from Kafka into chDB through the sink, and
the same rows in one direct row insert, in the same run (`python -m streams.bench.sink_rate
[ROWS]`)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from rich.console import Console

from streams.bench.run import Bench, measure_sink
from streams.config import Settings
from streams.engine import BillingEngine
from streams.local.synthetic import generate
from streams.local.tansu import start_broker
from streams.rating.profiles import Profiles
from streams.simulate import simulate
from streams.sink.clickhouse import connect, migrate


def main(rows: int = 100_000) -> tuple[float, float]:
    run_dir = Path(".run") / "bench-sink"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    console = Console()
    sim = simulate(
        list(enumerate(generate(seed=3, accounts=200, usage_events=5000, prefix="base"), 1)),
        BillingEngine(Profiles()),
    )
    with start_broker(log_path=run_dir / "broker.log") as broker:
        ch = connect(Settings(chdb_path=run_dir / "chdb"))
        migrate(ch)
        b = Bench(run_dir, console, rows, 200)
        sink_rate, direct_rate, alone_rate = measure_sink(b, broker, ch, sim.deductions, rows)
    console.print(
        f"sink {sink_rate:,.0f} rows/s, direct row insert {direct_rate:,.0f} rows/s = "
        f"{sink_rate / direct_rate:.2f}x; ClickHouse alone {alone_rate:,.0f} rows/s = "
        f"{sink_rate / alone_rate:.2f}x"
    )
    return sink_rate, direct_rate


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
