"""``rating dlq``: list, explain and re-drive dead letters.

A dead letter keeps the original message bytes (one event of a batch is re-encoded alone), so after
the cause is fixed (a model added to the price book, an account opened) it can be sent again.

Re-driving never charges twice:

* a rejected event changed nothing, so rating it once after the fix is its first charge;
* an event that already has a deduction (published on the deductions topic) is not sent, and an
  event dead-lettered twice (a producer retry) is sent once;
* every re-drive is recorded in the compacted ``dead-letters.redriven`` topic under the dead
  letter's id and source position, and a later ``redrive`` skips what is recorded there;
* if the tool dies between sending and recording, the next run finds the deduction (or, if the
  worker has not rated it yet, the worker drops the resent event by its id).

A re-driven event that is rejected again becomes a new dead letter at a new position, which can be
re-driven again after a further fix.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass
from typing import Any

import orjson
import typer
from rich.progress import Progress
from rich.table import Table

from streams.cli.common import (
    UserError,
    _profiles,
    client_settings,
    console,
    err,
    friendly,
    require_cluster,
)
from streams.cli.common import shown as _s
from streams.deduction.record import money
from streams.ingest.codec import DecodeError, registry
from streams.ingest.events import millis_to_iso
from streams.kafka_client import producer_kwargs, read_records, read_topic

dlq_app = typer.Typer(
    help="Dead letters: list, explain, re-drive after a fix.", no_args_is_help=True
)

# reason code -> (what it means, what to do, whether re-sending the same bytes can succeed after a
# fix)
REASONS: dict[str, tuple[str, str, bool]] = {
    "not_avro": (
        "the bytes are not Avro in the Confluent wire format",
        "fix the producer's serializer; re-send corrected events",
        False,
    ),
    "unknown_schema": (
        "the schema id is not in schemas/registry.json",
        "deploy the schema version the producer uses, then re-drive",
        True,
    ),
    "empty_message": ("the message has no value", "fix the producer", False),
    "wrong_schema": (
        "the record is not an input event",
        "send only usage_event, account_event or event_batch",
        False,
    ),
    "empty_batch": ("an event batch with no events", "fix the producer", False),
    "missing_key": (
        "the message has no key",
        "key input messages by main_account_id; re-send",
        False,
    ),
    "key_mismatch": (
        "the key differs from main_account_id",
        "key by main_account_id; re-send",
        False,
    ),
    "invalid_key": (
        "the message key is not valid UTF-8",
        "key by main_account_id in UTF-8; re-send",
        False,
    ),
    "wrong_partition": (
        "the message is not on the partition its key hashes to",
        "produce with the default (murmur2) partitioner; re-send",
        False,
    ),
    "invalid_json": ("a JSON line is not JSON", "fix the file; re-send", False),
    "missing_field": (
        "a required field is missing",
        "fix the producer; re-send corrected events",
        False,
    ),
    "invalid_field": (
        "a field has a value the pipeline cannot use",
        "fix the producer; re-send corrected events",
        False,
    ),
    "invalid_quantity": ("a quantity is not a number", "fix the producer", False),
    "missing_quantity": ("the item needs a quantity the event lacks", "fix the producer", False),
    "negative_quantity": ("a quantity is negative", "fix the producer", False),
    "absurd_quantity": (
        "a quantity is beyond any plausible request (older letters)",
        "check the producer; re-send if it was real",
        False,
    ),
    "quantity_out_of_range": (
        "a quantity is above the input format's or the profile's per-request bound",
        "check the producer; if the request was real, raise the profile's limits, then re-drive",
        True,
    ),
    "decimal_precision_exceeded": (
        "a decimal has more digits after the point than the input format allows (12)",
        "fix the producer; re-send corrected events",
        False,
    ),
    "invalid_id": (
        "an id is outside the id grammar (empty, too long, not NFC, spaces or invisible "
        "characters)",
        "fix the producer; re-send corrected events",
        False,
    ),
    "invalid_currency": (
        "the currency is not an ISO 4217 code",
        "fix the producer; re-send corrected events",
        False,
    ),
    "currency_mismatch": (
        "the event's currency is not the account's; there is no implicit exchange",
        "re-send the event in the account's currency",
        False,
    ),
    "not_supported_by_profile": (
        "the account event type is not one the account's profile defines",
        "do not send it for this platform (or add it to the profile's account_events), then "
        "re-drive",
        True,
    ),
    "unknown_event_type": (
        "the account event type is unknown",
        "upgrade the workers or fix the producer",
        True,
    ),
    "unknown_item": (
        "the billing item is not in the profile's price book",
        "add it to the price book, then re-drive",
        True,
    ),
    "unknown_model": (
        "the model has no price in the profile",
        "add the model to the price book, then re-drive",
        True,
    ),
    "unknown_variant": (
        "the item has no price for that variant",
        "add the variant to the price book, then re-drive",
        True,
    ),
    "no_fine_tuned_price": (
        "fine_tuned is true but the profile has no fine-tuned row for the base model",
        "add a fine_tuned row for the model to the price book, then re-drive",
        True,
    ),
    "credits_missing": (
        "the model is priced by the credits each call consumed and the event carries none",
        "send the call's credits (usage_event v2 field credits); re-send",
        False,
    ),
    "credits_out_of_range": (
        "the event's credits per call are outside the model's range in the profile (or differ "
        "from a fixed credit price)",
        "check the producer; if the price changed, fix the price book, then re-drive",
        True,
    ),
    "credits_not_applicable": (
        "the event carries credits for a row priced in currency",
        "drop credits; re-send",
        False,
    ),
    "above_top_tier": (
        "the request is above the top price tier",
        "add the tier to the price book, then re-drive",
        True,
    ),
    "unknown_profile": (
        "the account names a profile that does not exist",
        "add the profile, then re-drive",
        True,
    ),
    "unknown_account": (
        "the main account was never opened",
        "send its open_account event, then re-drive",
        True,
    ),
    "not_a_main_account": (
        "an account event (or an account_opened) that does not come from the main account itself",
        "send account events with account_id = main_account_id; re-send",
        False,
    ),
    "unknown_sub_account": (
        "the sub-account is not registered under the main account",
        "register it, then re-drive",
        True,
    ),
    "unknown_pack_kind": (
        "the resource pack kind is not in the policy",
        "add the pack kind to the policy, then re-drive",
        True,
    ),
    "no_trial_for_model": (
        "the model has no trial quota in the policy",
        "check the policy, then re-drive",
        True,
    ),
    "no_inference_limit": ("the policy offers no inference limit here", "check the policy", True),
    "internal_error": (
        "the pipeline failed on this event, or a charge broke an invariant (a bug); the account "
        "was "
        "rolled back",
        "report it; re-drive after the fix",
        True,
    ),
    "event_too_old": (
        "the event is older than the dedupe horizon (DEDUPE_HORIZON_S) before its partition's "
        "stream time",
        "book it by hand or by re-rating; the pipeline cannot tell it from a replayed duplicate",
        False,
    ),
    "event_id_conflict": (
        "the event id was already applied with different content (a reused idempotency key)",
        "send the second event under an id of its own",
        False,
    ),
    "event_time_in_future": (
        "the event is dated more than MAX_EVENT_AHEAD_S past the wall clock",
        "fix the producer's clock; re-drive once the time has come",
        True,
    ),
    "limit_exceeded": (
        "the account already holds as many live vouchers, packs or linked sub-accounts as it may",
        "let buckets expire or unlink sub-accounts; raising the limit is a code change "
        "(streams/ledger/ledger.py)",
        True,
    ),
    "before_account_opened": (
        "the event is dated before its account was opened",
        "fix the event time; re-send",
        False,
    ),
}


def explain_code(code: str) -> tuple[str, str, bool]:
    return REASONS.get(
        code,
        (
            "a business rule refused the event (see the reason)",
            "fix the cause, then re-drive",
            True,
        ),
    )


@dataclass
class Letter:
    record: dict[str, Any]
    offset: int  # of the dead letter itself, on the dead-letter topic

    @property
    def marker(self) -> str:
        """One rejection occurrence: the same event rejected again after a re-drive is a new one."""
        r = self.record
        where = f"{r['source_topic']}:{r['source_partition']}:{r['source_offset']}"
        return f"{r['dead_letter_id']}@{where}"


async def read_letters(s) -> list[Letter]:
    letters = []
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task(f"reading {s.topics.dead_letters}", total=None)
        async for m, record in read_records(
            s,
            s.topics.dead_letters,
            "dead_letter",
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        ):
            letters.append(Letter(record, m.offset))
    return letters


async def redriven_markers(s) -> set[str]:
    try:
        return {
            m.key.decode()
            async for m in read_topic(s, s.topics.dead_letters_redriven)
            if m.key and m.value is not None
        }
    except LookupError:
        return set()


async def charged_events(s) -> set[tuple[str, str]]:
    """(main account, event id) of every usage deduction published: those events are charged."""
    out = set()
    try:
        async for _, record in read_records(s, s.topics.deductions, "deduction"):
            if record["kind"] == "usage":
                out.add((record["main_account_id"], record["event_id"]))
    except LookupError:
        pass
    return out


def _select(letters: list[Letter], reasons: list[str], account: str | None) -> list[Letter]:
    out = []
    for letter in letters:
        r = letter.record
        if reasons and r["reason_code"] not in reasons:
            continue
        if account and r["main_account_id"] != account:
            continue
        out.append(letter)
    return out


@dlq_app.command("list")
@friendly
def list_letters(
    reason: list[str] = typer.Option(
        [], "--reason", "-r", help="only this reason code (repeatable)"
    ),
    account: str | None = typer.Option(None, "--account", "-a", help="only this main account"),
    limit: int = typer.Option(50, "--limit", min=1, help="rows to show (the counts cover all)"),
    as_json: bool = typer.Option(
        False, "--json", help="one JSON object per dead letter (JSON Lines), payload in base64"
    ),
):
    """Dead letters with their reason, newest last, and the count per reason."""
    s = client_settings()
    require_cluster(s, "`rating dlq`")
    letters = _select(asyncio.run(read_letters(s)), reason, account)
    redriven = asyncio.run(redriven_markers(s))
    if as_json:
        from streams.cli.common import emit_json_lines

        emit_json_lines(
            {**ln.record, "dead_letter_offset": ln.offset, "redriven": ln.marker in redriven}
            for ln in letters[-limit:]
        )
        return
    table = Table(title=f"{len(letters)} dead letters on {s.topics.dead_letters}")
    for col in (
        "dead_letter_id",
        "reason_code",
        "source",
        "event_id",
        "account",
        "re-driven",
        "reason",
    ):
        table.add_column(col, overflow="fold")
    for letter in letters[-limit:]:
        r = letter.record
        table.add_row(
            _s(r["dead_letter_id"]),
            _s(r["reason_code"]),
            f"p{r['source_partition']}@{r['source_offset']}",
            _s(r["event_id"] or "-"),
            _s(r["main_account_id"] or "-"),
            "yes" if letter.marker in redriven else "",
            _s(r["reason"][:120]),
        )
    console.print(table)
    counts: dict[str, int] = {}
    for letter in letters:
        counts[letter.record["reason_code"]] = counts.get(letter.record["reason_code"], 0) + 1
    console.print(
        "by reason: "
        + (
            ", ".join(f"{_s(k)} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
            or "none"
        )
    )


@dlq_app.command("explain")
@friendly
def explain(
    dead_letter_id: str = typer.Argument(..., help="a dead_letter_id (a unique prefix is enough)"),
):
    """One dead letter: the reason, what to
    do, the original event, and whether it would pass now."""
    s = client_settings()
    require_cluster(s, "`rating dlq`")
    matches = [
        ln
        for ln in asyncio.run(read_letters(s))
        if ln.record["dead_letter_id"].startswith(dead_letter_id)
    ]
    ids = {ln.record["dead_letter_id"] for ln in matches}
    if not matches:
        raise UserError(
            f"no dead letter {dead_letter_id!r} on {s.topics.dead_letters}; `rating dlq list` "
            "shows them"
        )
    if len(ids) > 1:
        raise UserError(f"{dead_letter_id!r} matches {len(ids)} dead letters; give more of the id")
    letter = matches[-1]
    r = letter.record
    meaning, action, retryable = explain_code(r["reason_code"])
    console.print(f"[bold]{_s(r['dead_letter_id'])}[/]  {_s(r['reason_code'])}: {_s(meaning)}")
    console.print(f"  reason     {_s(r['reason'])}")
    console.print(f"  what to do {_s(action)}")
    console.print(
        f"  source     {_s(r['source_topic'])} partition {r['source_partition']} offset "
        f"{r['source_offset']}" + (f" (rejected {len(matches)} times)" if len(matches) > 1 else "")
    )
    when = (
        millis_to_iso(r["event_time"])
        if isinstance(r["event_time"], int)
        else r["event_time"] or "-"
    )
    console.print(
        f"  event      {_s(r['event_id'] or '-')}  account {_s(r['main_account_id'] or '-')}  "
        f"trace {_s(r['trace_id'] or '-')}  time {_s(when)}"
    )
    record = _payload_record(r["payload"])
    if record is None:
        console.print(
            f"  payload    {len(r['payload'])} bytes, not a readable event: "
            f"{base64.b64encode(r['payload'][:96]).decode()}"
        )
        verdict = "cannot be re-driven: the bytes are not an event; fix the producer and re-send"
    else:
        console.print("  payload")
        console.print(
            _s(orjson.dumps(record[1], default=str, option=orjson.OPT_INDENT_2).decode()),
            highlight=False,
        )
        if retryable:
            states = asyncio.run(load_states(s, {letter.record["main_account_id"]} - {None}))
            verdict = Verdicts(s, states).check(letter)[1]
        else:
            verdict = "re-sending the same event cannot succeed; fix the producer"
    console.print(f"  now        {_s(verdict)}")


def _payload_record(payload: bytes) -> tuple[str, dict[str, Any]] | None:
    try:
        name, record = registry().decode(payload, plain_times=True)
    except DecodeError:
        return None
    return (name, record) if name in ("usage_event", "account_event") else None


async def load_states(s, accounts: set[str]) -> dict[str, Any]:
    """The newest changelog record of each account, reading each partition once."""
    from streams.cli.account import changelog_topic
    from streams.ingest.partitioner import partition_for
    from streams.ledger.state import AccountState

    keys = {a.encode(): a for a in accounts}
    partitions = sorted({partition_for(k, s.kafka_partitions) for k in keys})
    latest: dict[str, bytes | None] = {}
    if partitions:
        try:
            async for m in read_topic(s, changelog_topic(s), partitions):
                if m.key in keys:
                    latest[keys[m.key]] = m.value  # None is a tombstone
        except LookupError:  # no changelog yet: no account is open
            pass
    return {a: AccountState.loads(v) if v is not None else None for a, v in latest.items()}


class Verdicts:
    """Would a letter be accepted now? Its event goes through the same engine as the worker, on the
    account's state as the changelog holds it (a copy: nothing is written). Letters are checked in
    order and each accepted one is applied to the copy, so an ``account_opened`` letter followed by
    its usage letters passes as a whole, and a letter whose cause is unchanged does not."""

    def __init__(self, s, states: dict[str, Any]):
        from streams.engine import BillingEngine

        self.registry = registry()
        self.engine = BillingEngine(
            _profiles(s), allowed_lateness_ms=s.settlement_allowed_lateness_s * 1000
        )
        self.states = dict(states)

    def check(self, letter: Letter) -> tuple[bool, str]:
        from streams.ingest.messages import decode_message

        r = letter.record
        # the key a re-drive sends it with
        decoded = decode_message(self.registry, (r["main_account_id"] or "").encode(), r["payload"])
        if len(decoded) != 1 or decoded[0].event is None:
            rejected = decoded[0].rejected if len(decoded) == 1 else None
            why = (
                f"{rejected.code}: {rejected.message}"
                if rejected is not None
                else "the payload is not one event"
            )
            return False, f"would still be rejected: {why}"
        event = decoded[0].event
        outcome = self.engine.apply(self.states.get(event.main_account_id), event)
        if outcome.duplicate:
            return False, "already applied (the worker would drop it as a duplicate)"
        if outcome.rejected is not None:
            return (
                False,
                f"would still be rejected: {outcome.rejected.code}: {outcome.rejected.message}",
            )
        if outcome.state is not None:
            self.states[event.main_account_id] = outcome.state
        what = (
            f"rates now at {money(outcome.deduction.rated_amount)} {outcome.deduction.currency}"
            if outcome.deduction is not None
            else "applies now"
        )
        return True, f"{what}: ready to re-drive"


@dlq_app.command("redrive")
@friendly
def redrive(
    reason: list[str] = typer.Option(
        [], "--reason", "-r", help="re-drive dead letters with this reason code (repeatable)"
    ),
    dead_letter: list[str] = typer.Option(
        [], "--id", help="re-drive this dead letter (repeatable)"
    ),
    account: str | None = typer.Option(None, "--account", "-a", help="only this main account"),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="list the letters and what would happen to each; send nothing"
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="send without checking: also letters whose reason re-sending cannot fix "
        "(e.g. invalid_field) and letters that would be rejected again",
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation"),
):
    """Send dead letters back to the events topic after the cause is fixed: only those that would
    now be accepted (checked with the engine on the accounts' current state). Safe to repeat."""
    s = client_settings()
    require_cluster(s, "`rating dlq`")
    if not reason and not dead_letter:
        raise UserError(
            "say what to re-drive: --reason CODE (e.g. unknown_model) or --id DEAD_LETTER_ID"
        )
    letters = _select(asyncio.run(read_letters(s)), reason, account)
    if dead_letter:
        letters = [
            ln
            for ln in letters
            if any(ln.record["dead_letter_id"].startswith(i) for i in dead_letter)
        ]
    done = asyncio.run(redriven_markers(s))
    charged = asyncio.run(charged_events(s))
    fresh, seen = [], set()
    for letter in letters:
        r = letter.record
        if letter.marker in done or (r["main_account_id"], r["event_id"]) in charged:
            continue
        if r["event_id"] and (r["main_account_id"], r["event_id"]) in seen:
            continue  # the same event dead-lettered twice (a producer retry): send it once
        seen.add((r["main_account_id"], r["event_id"]))
        fresh.append(letter)
    permanent, sendable, unsendable = [], [], []
    still: list[Letter] = []
    verdict: dict[int, str] = {}
    for letter in fresh:
        if not force and not explain_code(letter.record["reason_code"])[2]:
            permanent.append(letter)
            verdict[letter.offset] = (
                "skipped: re-sending the same event cannot fix this reason (--force sends it)"
            )
        elif (
            _payload_record(letter.record["payload"]) is None
            or not letter.record["main_account_id"]
        ):
            unsendable.append(letter)
            verdict[letter.offset] = "cannot be re-driven: the bytes are not an event"
        else:
            sendable.append(letter)
    if sendable and not force:
        states = asyncio.run(load_states(s, {ln.record["main_account_id"] for ln in sendable}))
        check = Verdicts(s, states)
        ready: list[Letter] = []
        for letter in sendable:
            ok, verdict[letter.offset] = check.check(letter)
            (ready if ok else still).append(letter)
        sendable = ready
    for letter in sendable:
        verdict.setdefault(letter.offset, "sent without checking (--force)")
    console.print(
        f"{len(letters)} selected: {len(letters) - len(fresh)} already re-driven or charged, "
        f"{len(permanent)} with a reason re-sending cannot fix (--force sends them anyway), "
        f"{len(unsendable)} not an event (cannot be re-driven), {len(still)} would be rejected "
        "again (not sent), "
        f"{len(sendable)} to send"
    )
    if dry_run:
        table = Table(title="dry run: nothing is sent")
        for col in ("dead_letter_id", "reason_code", "event_id", "account", "verdict"):
            table.add_column(col, overflow="fold")
        for letter in fresh:
            r = letter.record
            table.add_row(
                _s(r["dead_letter_id"]),
                _s(r["reason_code"]),
                _s(r["event_id"] or "-"),
                _s(r["main_account_id"] or "-"),
                _s(verdict.get(letter.offset, "")),
            )
        console.print(table)
        return
    if not sendable:
        return
    if not yes and not typer.confirm(f"send {len(sendable)} events to {s.topics.events}?"):
        raise typer.Abort()
    sent = asyncio.run(_send(s, sendable))
    console.print(
        f"re-drove {sent} events to {s.topics.events}; recorded in {s.topics.dead_letters_redriven}"
    )


async def _send(s, letters: list[Letter]) -> int:
    from aiokafka import AIOKafkaProducer

    from streams.kafka_admin import create_topics

    await create_topics(s)
    producer = AIOKafkaProducer(**producer_kwargs(s))
    await producer.start()
    try:
        with Progress(console=err) as progress:
            task = progress.add_task("re-drive", total=len(letters))
            for letter in letters:
                r = letter.record
                key = r["main_account_id"].encode()
                await (await producer.send(s.topics.events, key=key, value=r["payload"]))
                marker = orjson.dumps(
                    {
                        "redriven_at": int(time.time() * 1000),
                        "event_id": r["event_id"],
                        "dead_letter_offset": letter.offset,
                    }
                )
                await (
                    await producer.send(
                        s.topics.dead_letters_redriven, key=letter.marker.encode(), value=marker
                    )
                )
                progress.advance(task)
    finally:
        await producer.stop()
    return len(letters)
