"""The named finance queries of docs/finance.sql, loaded by name."""

from __future__ import annotations

import re
from pathlib import Path

FINANCE_SQL = Path(__file__).resolve().parents[2] / "docs" / "finance.sql"


def load_queries(path: Path = FINANCE_SQL) -> dict[str, str]:
    queries: dict[str, str] = {}
    for block in re.split(r"^-- name: ", path.read_text(), flags=re.M)[1:]:
        name, _, body = block.partition("\n")
        sql = (
            "\n".join(line for line in body.splitlines() if not line.lstrip().startswith("--"))
            .strip()
            .rstrip(";")
        )
        queries[name.strip()] = sql
    return queries
