"""The records one round produces: every outcome's records encoded once, in the order the engine
made them, each under the record size limit before anything is sent.

Plain Python, no faust: the shell sends ``records`` and awaits their acknowledgements once.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from streams.ledger.alerts import ARREARS_KINDS
from streams.limits import check_record_size

if TYPE_CHECKING:
    from streams.config import Topics
    from streams.engine import Outcome
    from streams.ingest.codec import Registry
    from streams.observability.metrics import PipelineMetrics

Record = tuple[str, bytes | None, bytes]  # topic, key, Avro value


class RoundOutputs:
    def __init__(self, reg: Registry, topics: Topics, metrics: PipelineMetrics | None = None):
        self.reg, self.metrics = reg, metrics
        # topic names resolved once: Topics builds them per access
        self.deductions, self.alerts = topics.deductions, topics.alerts
        self.arrears_alerts, self.account_status = topics.arrears_alerts, topics.account_status
        self.account_balances, self.settlements = topics.account_balances, topics.settlements
        self.usage_per_minute, self.dead_letters = topics.usage_per_minute, topics.dead_letters
        self.records: list[Record] = []

    def add(self, outcome: Outcome, key: bytes) -> None:
        if self.metrics is not None:
            self.metrics.count_outcome(outcome, int(time.time() * 1000))
        encode, out = self.reg.encode, self.records
        if outcome.deduction is not None:
            out.append((self.deductions, key, encode("deduction", outcome.deduction.to_record())))
        for a in outcome.alerts:
            value = encode("alert", a)
            out.append((self.alerts, key, value))
            if a["kind"] in ARREARS_KINDS:
                out.append((self.arrears_alerts, key, value))
        if outcome.status is not None:
            out.append((self.account_status, key, encode("account_status", outcome.status)))
        if outcome.balance is not None:
            out.append((self.account_balances, key, encode("account_balance", outcome.balance)))
        for line in outcome.settlements:
            out.append((self.settlements, key, encode("settlement", line)))
        for minute in outcome.usage_minutes:
            out.append((self.usage_per_minute, key, encode("usage_minute", minute)))

    def dead_letter(self, key: bytes | None, record: dict[str, Any]) -> None:
        self.records.append((self.dead_letters, key, self.reg.encode("dead_letter", record)))

    def checked(self) -> list[Record]:
        """The records, each checked against the record size limit (RecordTooLarge names it)."""
        for topic, key, value in self.records:
            check_record_size(topic, key.decode("utf-8", "replace") if key else "", value)
        return self.records
