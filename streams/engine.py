"""The pure billing core: one event + the account's state -> new state + output records.

Both the faust worker (live) and ``rating simulate`` (offline) call ``BillingEngine.apply`` in the
same per-account order, which is what makes their outputs identical. No Kafka, faust or ClickHouse
import may appear under this module or the packages it uses (a test checks).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Context, getcontext, setcontext
from functools import wraps
from typing import Any

from streams.deduction.record import MONEY_CONTEXT, Deduction, money
from streams.dedupe import (
    DEFAULT_HORIZON_MS,
    Entry,
    EntryStore,
    MemoryEntries,
    content_fingerprint,
    id_key,
)
from streams.ingest.events import AccountEvent, Event, Rejected, UsageEvent, millis_to_iso
from streams.ledger.alerts import number_records
from streams.ledger.invariants import check_buckets, check_charge
from streams.ledger.ledger import Effects, Ledger
from streams.ledger.state import AccountState
from streams.rating.profiles import Profiles
from streams.settlement import usage_minutes
from streams.settlement.periods import close_due, settle

DEFAULT_ALLOWED_LATENESS_MS = 5 * 60_000
DEFAULT_MAX_AHEAD_MS = 600_000  # an event dated further past the wall clock is rejected

log = logging.getLogger(__name__)


def clock_source(clock_ms: int) -> str:
    """The ``source_event_id`` of a status change made by stream time. The space keeps it apart
    from every event id (ids hold no space), so it cannot meet a real event's status row."""
    return f"clock {clock_ms}"


_THREAD = threading.local()


def _money_context() -> Context:
    """This thread's copy of MONEY_CONTEXT (a context is per thread; its flags are never read)."""
    ctx = getattr(_THREAD, "money_context", None)
    if ctx is None:
        ctx = _THREAD.money_context = MONEY_CONTEXT.copy()
    return ctx


def in_money_context(method: Callable) -> Callable:
    """Every Decimal operation of the core runs in MONEY_CONTEXT (60 digits): no implicit
    rounding. The caller's context is put back after; a nested call finds it already set. (Not
    ``localcontext``: it copies the context on every call, a twentieth of the core's time.)"""

    @wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        saved, ctx = getcontext(), _money_context()
        if saved is ctx:
            return method(*args, **kwargs)
        setcontext(ctx)
        try:
            return method(*args, **kwargs)
        finally:
            setcontext(saved)

    return wrapper


@dataclass
class Outcome:
    state: AccountState | None  # the account's state after the event (unchanged on rejection)
    deduction: Deduction | None = None
    alerts: list[dict[str, Any]] = field(default_factory=list)
    status: dict[str, Any] | None = None  # account status record, when it changed
    balance: dict[str, Any] | None = None  # the cash balance, when an account event moved it
    settlements: list[dict[str, Any]] = field(default_factory=list)
    usage_minutes: list[dict[str, Any]] = field(default_factory=list)
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
    def __init__(
        self,
        profiles: Profiles,
        allowed_lateness_ms: int = DEFAULT_ALLOWED_LATENESS_MS,
        horizon_ms: int = DEFAULT_HORIZON_MS,
        max_ahead_ms: int = DEFAULT_MAX_AHEAD_MS,
    ):
        self.profiles = profiles
        self.ledger = Ledger(profiles, horizon_ms)
        self.lateness = allowed_lateness_ms
        self.horizon_ms = horizon_ms
        self.max_ahead_ms = max_ahead_ms
        self.entries = MemoryEntries(horizon_ms)  # used when the caller brings no store of its own

    @in_money_context
    def advance(self, state: AccountState, clock: int) -> Outcome:
        """Move the account to stream time ``clock`` (its partition's clock): close settlement
        periods whose end plus the allowed lateness has passed, fire due deadlines."""
        if clock <= state.settled_until:
            return Outcome(state)
        fx = Effects()
        self.ledger.advance_time(state, self.profiles[state.profile], clock, fx)
        settlements = close_due(state.periods, clock, state.main_account_id, self.lateness)
        minutes = usage_minutes.close_due(
            state.minutes, clock, state.main_account_id, self.lateness
        )
        self.ledger.close_kb_hours(state, clock, self.lateness)
        state.settled_until = clock
        status = None
        if fx.status_changed:
            when = fx.status_time if fx.status_time is not None else clock
            status = self._status_record(state, when, clock_source(fx.status_time or clock))
        number_records(state, fx.alerts, status)
        return Outcome(
            state, alerts=fx.alerts, status=status, settlements=settlements, usage_minutes=minutes
        )

    def next_due(self, state: AccountState) -> int | None:
        """The earliest clock at which ``advance`` would do something for this account."""
        times = [acc.period_end + self.lateness for acc in state.periods.values()]
        minute = usage_minutes.next_due(state.minutes, self.lateness)
        if minute is not None:
            times.append(minute)
        deadline = self.ledger.next_deadline(state, self.profiles[state.profile])
        if deadline is not None:
            times.append(deadline)
        return min(times) if times else None

    def reload(self, profiles: Profiles) -> None:
        """Swap in newly loaded price books. Each event is still rated with the version in force
        at its event time, so a new version changes only events from its effective time on."""
        self.profiles = profiles
        self.ledger = Ledger(profiles, self.horizon_ms)

    @in_money_context
    def step(
        self,
        state: AccountState | None,
        event: Event,
        *,
        clock_ms: int,
        entries: EntryStore | None = None,
        wall_ms: int | None = None,
    ) -> tuple[list[Outcome], int]:
        """One event of a partition whose stream time is ``clock_ms``: advance the account to
        ``max(clock_ms, event time)``, then apply the event. Returns the outcomes to publish (the
        advance's, then the event's) and the partition's stream time after the event.

        Only an accepted event moves stream time: a rejected or duplicate event leaves the account
        as it was, the advance included, and the clock where it was. So a hostile event (dated
        2099, for an account never opened) cannot release another account's resources or close its
        periods. ``wall_ms`` is the wall clock, for the ``MAX_EVENT_AHEAD_S`` check (None: no check,
        as in tests that replay history)."""
        if wall_ms is not None and event.event_time > wall_ms + self.max_ahead_ms:
            return [
                Outcome(
                    state,
                    rejected=Rejected(
                        "event_time_in_future",
                        f"event time {millis_to_iso(event.event_time)} is more than "
                        f"{self.max_ahead_ms // 1000} s past the wall clock "
                        f"{millis_to_iso(wall_ms)}",
                    ),
                )
            ], clock_ms
        clock = max(clock_ms, event.event_time)
        store = self.entries if entries is None else entries
        checked = self._check(state, event, clock, store)
        if isinstance(checked, Outcome):
            return [checked], clock_ms
        if state is None:
            outcome = self._apply_new(None, event)
            self._record(outcome, event, store, checked)
            return [outcome], (clock if outcome.rejected is None else clock_ms)
        before = state.clone()
        advanced = self.advance(state, clock)
        outcome = self._apply_new(state, event, before=before)
        if outcome.rejected is not None:
            return [outcome], clock_ms  # outcome.state is the account before the advance
        self._record(outcome, event, store, checked)
        return [advanced, outcome], clock

    @in_money_context
    def apply(
        self,
        state: AccountState | None,
        event: Event,
        *,
        clock_ms: int | None = None,
        entries: EntryStore | None = None,
    ) -> Outcome:
        """Apply one event at partition stream time ``clock_ms`` (default: the account's), without
        advancing the account first (``step`` does both).

        ``entries`` is the dedupe store (see streams/dedupe.py); without one the engine keeps its
        own in memory, which is what a single offline run needs."""
        store = self.entries if entries is None else entries
        clock = (
            clock_ms
            if clock_ms is not None
            else (state.settled_until if state is not None else event.event_time)
        )
        checked = self._check(state, event, clock, store)
        if isinstance(checked, Outcome):
            return checked
        outcome = self._apply_new(state, event)
        self._record(outcome, event, store, checked)
        return outcome

    def _check(
        self, state: AccountState | None, event: Event, clock: int, store: EntryStore
    ) -> Outcome | tuple[bytes, bytes]:
        """What needs no ledger: the horizon, duplicates and id conflicts. Returns the outcome when
        the event goes no further, else its dedupe key and content fingerprint."""
        if event.event_time < clock - self.horizon_ms:
            return Outcome(
                state,
                rejected=Rejected(
                    "event_too_old",
                    f"event time {millis_to_iso(event.event_time)} is more than the dedupe horizon "
                    f"({self.horizon_ms // 3_600_000} h) before stream time {millis_to_iso(clock)}",
                ),
            )
        content = content_fingerprint(event)
        key = id_key(event.main_account_id, event.event_id)
        known = store.get(key)
        if known is not None and state is not None and known.sequence <= state.applied_events:
            if known.content != content:
                return Outcome(
                    state,
                    rejected=Rejected(
                        "event_id_conflict",
                        f"event id {event.event_id!r} was already applied with different content",
                    ),
                )
            return Outcome(state, duplicate=True)
        if state is not None and state.seen_before_upgrade(event.event_id, clock):
            return Outcome(state, duplicate=True)
        return key, content

    @staticmethod
    def _record(
        outcome: Outcome, event: Event, store: EntryStore, checked: tuple[bytes, bytes]
    ) -> None:
        if outcome.rejected is None and outcome.state is not None:
            outcome.state.applied_events += 1
            key, content = checked
            store.put(key, Entry(event.event_time, outcome.state.applied_events, content))

    def _apply_new(
        self, state: AccountState | None, event: Event, before: AccountState | None = None
    ) -> Outcome:
        """The ledger's part. ``before`` is the state to roll back to on rejection (default: as
        the state is now)."""
        if state is None:
            if isinstance(event, AccountEvent) and event.type == "account_opened":
                try:
                    new = self.ledger.open_account(event)
                except Rejected as exc:
                    return Outcome(None, rejected=exc)
                status = self._status(new, event)
                number_records(new, [], status)
                return Outcome(new, status=status)
            return Outcome(
                None,
                rejected=Rejected(
                    "unknown_account", f"main account {event.main_account_id!r} has not been opened"
                ),
            )
        if state.main_account_id != event.main_account_id:
            return Outcome(
                before if before is not None else state,
                rejected=Rejected(
                    "wrong_account",
                    "event main_account_id does not match the state it was routed to",
                ),
            )
        if event.event_time < state.opened_at:
            return Outcome(
                before if before is not None else state,
                rejected=Rejected(
                    "before_account_opened",
                    f"event time {millis_to_iso(event.event_time)} is before the account was "
                    f"opened ({millis_to_iso(state.opened_at)})",
                ),
            )
        if before is None:
            before = state.clone()
        fx = Effects()
        cash_before = state.cash
        try:
            if isinstance(event, UsageEvent):
                self.ledger.apply_usage(state, event, fx)
                if fx.deduction is not None:
                    check_charge(state, fx.deduction, cash_before)
            else:
                self.ledger.apply_account_event(state, event, fx)
                check_buckets(state)
        except Rejected as exc:
            return Outcome(before, rejected=exc)
        except Exception as exc:  # a bug must not take the account's money with it: roll back
            log.exception(
                "internal error applying event %s",
                event.event_id,
                extra={
                    "event_id": event.event_id,
                    "trace_id": getattr(event, "trace_id", ""),
                    "main_account_id": event.main_account_id,
                },
            )
            return Outcome(
                before,
                rejected=Rejected("internal_error", f"{type(exc).__name__}: {exc}"[:500]),
            )
        changed = self._status(state, event) if fx.status_changed else None
        balance = None
        if state.cash != cash_before and not isinstance(event, UsageEvent):
            balance = self._balance_record(state, event)  # charges: the deduction carries it
        number_records(state, fx.alerts, changed, fx.deduction, balance)
        settlements: list[dict[str, Any]] = []
        minutes: list[dict[str, Any]] = []
        if fx.deduction is not None:
            tz = self.profiles[state.profile].timezone
            line, settlements = settle(
                state.periods,
                state.settled_until,
                state.main_account_id,
                fx.deduction,
                tz,
                self.lateness,
            )
            fx.deduction.settlement_id = line
            minutes = usage_minutes.count(
                state.minutes,
                state.settled_until,
                state.main_account_id,
                fx.deduction,
                self.lateness,
            )
        return Outcome(
            state,
            deduction=fx.deduction,
            alerts=fx.alerts,
            status=changed,
            settlements=settlements,
            usage_minutes=minutes,
            balance=balance,
        )

    @classmethod
    def _status(cls, state: AccountState, event: Event) -> dict[str, Any]:
        return cls._status_record(state, event.event_time, event.event_id)

    @staticmethod
    def _status_record(state: AccountState, when_ms: int, source: str) -> dict[str, Any]:
        """A status takes effect at its trigger's time, but never before the status it replaces
        (a late top-up dated 09:30 resumes an account suspended at 10:00 at 10:00)."""
        since = max(when_ms, state.status_since)
        state.status_since = since
        return {
            "main_account_id": state.main_account_id,
            "status": state.status,
            "reason": state.status_reason,
            "since": since,
            "source_event_id": source,
            "sequence": 0,  # set by number_records
        }

    @staticmethod
    def _balance_record(state: AccountState, event: Event) -> dict[str, Any]:
        return {
            "main_account_id": state.main_account_id,
            "currency": state.currency,
            "cash_balance": money(state.cash),
            "as_of": event.event_time,
            "source_event_id": event.event_id,
            "sequence": 0,  # set by number_records
        }
