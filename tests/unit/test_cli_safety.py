"""Operator safety of the CLI: every value shown is escaped for Rich markup with its control
characters visible (issue 14.9); ``dlq redrive`` sends only letters that would now be accepted
(issue 14.12)."""

from __future__ import annotations

import io
import subprocess
import sys
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from rich.console import Console

from streams.cli.common import shown, visible
from streams.config import Settings

HOSTILE = [
    "[/x]",
    "[bold red]RED[/]",
    "a\x1b[2Jb",
    "n\u200b5",
    "r\u202eev",
    "nul\x00",
    "line\nbreak",
    ":thumbs_up:",
    "x\\[y]",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_shown_values_print_as_written_and_never_raw(value):
    out = io.StringIO()
    Console(file=out, width=200, emoji=False, color_system=None).print(f"id {shown(value)} end")
    text = out.getvalue()
    assert text.rstrip("\n") == f"id {visible(value)} end"
    assert not any(ch in text.rstrip("\n") for ch in "\x1b\x00\u200b\u202e\n")


def test_visible_writes_invisible_characters_as_escapes():
    assert (
        visible("a\x1bb") == "a\\x1bb"
        and visible("n\u200b5") == "n\\u200b5"
        and visible("plain") == "plain"
    )


def _hostile_jsonl(tmp_path: Path) -> Path:
    acct = "[/x]"
    lines = [
        {
            "kind": "account",
            "event_id": "[bold]a-1",
            "account_id": acct,
            "main_account_id": acct,
            "event_time": "2026-05-01T08:00:00+08:00",
            "type": "account_opened",
            "profile": "tokenhub",
            "amount": "10",
            "post_paid": True,
        },
        {
            "kind": "usage",
            "event_id": "[/u-1]",
            "account_id": acct,
            "main_account_id": acct,
            "event_time": "2026-05-01T09:00:00+08:00",
            "item": "tokens",
            "model": "kimi-k2.5",
            "input_tokens": 1000,
        },
        {
            "kind": "usage",
            "event_id": "u-2",
            "account_id": acct,
            "main_account_id": acct,
            "event_time": "2026-05-01T09:00:00+08:00",
            "item": "tokens",
            "model": "[/m]\x1b[31m",
            "input_tokens": 1000,
        },
    ]
    path = tmp_path / "[x] [b].jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(ln) for ln in lines) + b"\n")
    return path


def test_simulate_with_markup_in_ids_does_not_crash(tmp_path):
    events = _hostile_jsonl(tmp_path)
    rating = Path(sys.executable).with_name("rating")
    done = subprocess.run(
        [str(rating), "simulate", str(events), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr
    assert "[/x]" in done.stdout and "[x] [b].jsonl" in done.stdout


def test_trace_render_shows_hostile_values_as_written(capsys):
    from streams.cli import trace

    d = {
        "deduction_id": "[bold red]RED[/]",
        "kind": "usage",
        "event_id": "e\x1b[2J",
        "trace_id": "[/x]",
        "account_id": "a",
        "main_account_id": "[/x]",
        "event_time": datetime(2026, 5, 1),
        "currency": "CNY",
        "price_version": "p@1",
        "item": "tokens",
        "model": "[/model]",
        "variant": None,
        "quantities": {"input": "1"},
        "lines_json": '[{"component":"input","units":"1","unit_price":"1","amount":"1"}]',
        "rated_amount": Decimal(1),
        "split_bucket_kind": ["cash"],
        "split_bucket_id": ["[/c]"],
        "split_amount": [Decimal(1)],
        "unbilled_amount": Decimal(0),
        "unbilled_reason": "",
        "settlement_id": "",
        "adjusts_deduction_id": "",
        "rerate_id": "",
    }
    trace.render(
        {
            "query": "[/x]",
            "found_as": "deduction / event / trace",
            "settlement_lines": [],
            "deductions": [d],
            "dead_letters": [{"dead_letter_id": "[/d]", "reason_code": "x", "reason": "[/r]"}],
        }
    )
    out = capsys.readouterr().out
    for text in ("[bold red]RED[/]", "[/model]", "[/c]", "[/d]", "[/r]", "e\\x1b[2J"):
        assert text in out
    assert "\x1b[2J" not in out


def test_account_render_escapes_ids(capsys):
    from streams.cli.account import render
    from streams.ingest.events import parse_json_event
    from streams.ledger.ledger import Ledger
    from streams.rating.profiles import Profiles

    state = Ledger(Profiles()).open_account(
        parse_json_event(
            {
                "kind": "account",
                "event_id": "o",
                "account_id": "[/x]",
                "main_account_id": "[/x]",
                "event_time": "2026-05-01T08:00:00+08:00",
                "type": "account_opened",
                "profile": "tokenhub",
            }
        )
    )
    state.sub_accounts.add("[bold]sub")
    render(state)
    out = capsys.readouterr().out
    assert "account [/x]" in out and "[bold]sub" in out


# ---------------------------------------------------------------- dlq redrive: only what would pass
# now


def _letter(offset: int, reason: str, obj: dict):
    from streams.cli.dlq import Letter
    from streams.ingest.codec import registry
    from streams.ingest.producer import encode_line

    key, payload, _ = encode_line(registry(), orjson.dumps(obj))
    record = {
        "dead_letter_id": f"dl-{offset}",
        "reason_code": reason,
        "reason": "",
        "source_topic": "billing.events",
        "source_partition": 0,
        "source_offset": offset,
        "event_id": obj["event_id"],
        "main_account_id": obj["main_account_id"],
        "trace_id": None,
        "event_time": None,
        "key": key,
        "payload": payload,
    }
    return Letter(record, offset)


def _usage(event_id: str, main: str, model: str = "kimi-k2.5") -> dict:
    return {
        "kind": "usage",
        "event_id": event_id,
        "account_id": main,
        "main_account_id": main,
        "event_time": "2026-05-01T09:00:00+08:00",
        "item": "tokens",
        "model": model,
        "input_tokens": 1000,
    }


def test_redrive_check_passes_only_what_would_now_be_accepted():
    from streams.cli.dlq import Verdicts
    from streams.ingest.events import parse_json_event
    from streams.ledger.ledger import Ledger
    from streams.rating.profiles import Profiles

    open_ = {
        "kind": "account",
        "event_id": "o-1",
        "account_id": "open",
        "main_account_id": "open",
        "event_time": "2026-05-01T08:00:00+08:00",
        "type": "account_opened",
        "profile": "tokenhub",
        "amount": "10",
        "post_paid": True,
    }
    opened = Ledger(Profiles()).open_account(parse_json_event(open_))
    check = Verdicts(Settings.from_env({}), {"open": opened})
    late_open = dict(open_, event_id="o-2", account_id="late", main_account_id="late")
    cases = [
        # still never opened
        (
            _letter(1, "unknown_account", _usage("u-1", "ghost")),
            False,
            "unknown_account",
        ),
        (_letter(2, "unknown_account", _usage("u-2", "open")), True, "rates now"),  # opened since
        # cause unchanged
        (
            _letter(3, "unknown_model", _usage("u-3", "open", model="gpt-9")),
            False,
            "unknown_model",
        ),
        (_letter(4, "unknown_account", late_open), True, "applies now"),  # an opening letter ...
        # ... lets its usage pass
        (
            _letter(5, "unknown_account", _usage("u-5", "late")),
            True,
            "rates now",
        ),
    ]
    for letter, ok, fragment in cases:
        passed, verdict = check.check(letter)
        assert (passed, fragment in verdict) == (ok, True), (letter.record["event_id"], verdict)


def _fake_letters(monkeypatch, letters, states):
    from streams.cli import dlq

    async def read_letters(s):
        return letters

    async def nothing(s):
        return set()

    async def load_states(s, accounts):
        return {a: states.get(a) for a in accounts}

    monkeypatch.setattr(dlq, "read_letters", read_letters)
    monkeypatch.setattr(dlq, "redriven_markers", nothing)
    monkeypatch.setattr(dlq, "charged_events", nothing)
    monkeypatch.setattr(dlq, "load_states", load_states)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("COLUMNS", "250")


def test_dlq_list_with_markup_in_ids_does_not_crash(monkeypatch):
    from typer.testing import CliRunner

    from streams.cli.main import app

    letter = _letter(1, "unknown_account", _usage("[/x]", "[bold red]RED[/]"))
    letter.record["reason"] = "main account '[/x]' has not been opened"
    _fake_letters(monkeypatch, [letter], {})
    result = CliRunner().invoke(app, ["dlq", "list"])
    assert result.exit_code == 0, result.output
    assert "[bold red]RED[/]" in result.output and "[/x]" in result.output


def test_redrive_dry_run_lists_each_letter_with_its_verdict_and_sends_nothing(monkeypatch):
    from typer.testing import CliRunner

    from streams.cli import dlq
    from streams.cli.main import app
    from streams.ingest.events import parse_json_event
    from streams.ledger.ledger import Ledger
    from streams.rating.profiles import Profiles

    opened = Ledger(Profiles()).open_account(
        parse_json_event(
            {
                "kind": "account",
                "event_id": "o",
                "account_id": "open",
                "main_account_id": "open",
                "event_time": "2026-05-01T08:00:00+08:00",
                "type": "account_opened",
                "profile": "tokenhub",
                "amount": "10",
                "post_paid": True,
            }
        )
    )
    letters = [
        _letter(1, "unknown_account", _usage("u-ghost", "ghost")),
        _letter(2, "unknown_account", _usage("u-open", "open")),
    ]
    _fake_letters(monkeypatch, letters, {"open": opened})

    async def no_send(s, letters):
        raise AssertionError("a dry run sends nothing")

    monkeypatch.setattr(dlq, "_send", no_send)
    result = CliRunner().invoke(app, ["dlq", "redrive", "--reason", "unknown_account", "--dry-run"])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "1 would be rejected again (not sent), 1 to send" in out
    assert (
        "u-ghost" in out
        and "u-open" in out
        and "rates now at" in out
        and "would still be rejected: unknown_account" in out
    )


def test_redrive_sends_only_what_would_pass(monkeypatch):
    from typer.testing import CliRunner

    from streams.cli import dlq
    from streams.cli.main import app

    letters = [_letter(1, "unknown_account", _usage("u-ghost", "ghost"))]
    _fake_letters(monkeypatch, letters, {})
    sent = []

    async def send(s, chosen):
        sent.extend(chosen)
        return len(chosen)

    monkeypatch.setattr(dlq, "_send", send)
    for _ in range(3):  # unchanged cause: nothing goes back, run after run
        result = CliRunner().invoke(app, ["dlq", "redrive", "--reason", "unknown_account", "--yes"])
        assert result.exit_code == 0, result.output
    assert sent == []
