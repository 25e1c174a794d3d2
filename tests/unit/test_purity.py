"""The pure core has no I/O dependencies and no float on the money path."""

import ast
import re
from pathlib import Path

STREAMS = Path(__file__).resolve().parents[2] / "streams"
CORE = [
    "engine.py",
    "rating",
    "ledger",
    "deduction",
    "settlement",
    "rerate",
    "ingest/events.py",
    "simulate.py",
]
FORBIDDEN = ("faust", "aiokafka", "kafka", "clickhouse_connect", "chdb", "mode")


def core_files():
    for entry in CORE:
        path = STREAMS / entry
        yield from ([path] if path.is_file() else sorted(path.rglob("*.py")))


def test_core_imports_no_kafka_faust_or_clickhouse():
    for path in core_files():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, (
                    f"{path.relative_to(STREAMS)} imports {name}"
                )


def test_no_float_in_the_core():
    files = list(core_files())
    assert len(files) > 8
    for path in files:
        text = path.read_text()
        assert not re.search(r"\bfloat\(", text), f"{path.relative_to(STREAMS)} calls float("
