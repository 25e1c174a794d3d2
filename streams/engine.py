"""The pure billing core: one event + the account's state -> new state + output records.

Both the faust worker (live) and ``rating simulate`` (offline) call ``BillingEngine.apply`` in the
same per-account order, which is what makes their outputs identical. No Kafka, faust or ClickHouse
import may appear under this module or the packages it uses (a test checks).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from streams.ingest.events import AccountEvent, Event, Rejected, UsageEvent
from streams.ledger.ledger import Effects, Ledger
from streams.ledger.state import AccountState, event_fingerprint
from streams.rating.profiles import Profiles

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    state: AccountState | None  # the account's state after the event (unchanged on rejection)
    deduction: dict[str, Any] | None = None
    alerts: list[dict[str, Any]] = field(default_factory=list)
    status: dict[str, Any] | None = None  # account status record, when it changed
    rejected: Rejected | None = None
    duplicate: bool = False

    @property
    def result(self) -> str:
        if self.duplicate:
            return "duplicate"
        if self.rejected is not None:
            return "rejected"
        return "rated" if self.deduction is not None else "applied"


class BillingEngine:
    def __init__(self, profiles: Profiles):
        self.profiles = profiles
        self.ledger = Ledger(profiles)

    def reload(self, profiles: Profiles) -> None:
        """Swap in newly loaded price books. Each event is still rated with the version in force
        at its event time, so a new version changes only events from its effective time on."""
        self.profiles = profiles
        self.ledger = Ledger(profiles)

    def apply(self, state: AccountState | None, event: Event) -> Outcome:
        fingerprint = event_fingerprint(event.event_id)
        if state is not None and state.seen(fingerprint):
            return Outcome(state, duplicate=True)
        if state is None:
            if isinstance(event, AccountEvent) and event.type == "account_opened":
                try:
                    new = self.ledger.open_account(event)
                except Rejected as exc:
                    return Outcome(None, rejected=exc)
                new.remember(fingerprint)
                return Outcome(new, status=self._status(new, event))
            return Outcome(None, rejected=Rejected("unknown_account", f"main account {event.main_account_id!r} has not been opened"))
        if state.main_account_id != event.main_account_id:
            return Outcome(state, rejected=Rejected("wrong_account", "event main_account_id does not match the state it was routed to"))
        before = state.dumps()
        fx = Effects()
        try:
            if isinstance(event, UsageEvent):
                self.ledger.apply_usage(state, event, fx)
            else:
                self.ledger.apply_account_event(state, event, fx)
        except Rejected as exc:
            return Outcome(AccountState.loads(before), rejected=exc)
        except Exception as exc:  # a bug must not take the account's money with it: roll back
            log.exception("internal error applying event %s", event.event_id)
            return Outcome(
                AccountState.loads(before),
                rejected=Rejected("internal_error", f"{type(exc).__name__}: {exc}"[:500]),
            )
        state.remember(fingerprint)
        status = self._status(state, event) if fx.status_changed else None
        return Outcome(state, deduction=fx.deduction, alerts=fx.alerts, status=status)

    @staticmethod
    def _status(state: AccountState, event: Event) -> dict[str, Any]:
        return {
            "main_account_id": state.main_account_id,
            "status": state.status,
            "reason": state.status_reason,
            "since": event.event_time,
            "source_event_id": event.event_id,
        }
