"""Settlement lines: hourly (daily for video/3D), closed by partition stream time plus lateness,
late deductions become adjustment lines, and the lines add up to the deductions."""

from collections import defaultdict
from decimal import Decimal

import orjson

from streams.engine import BillingEngine
from streams.local.synthetic import generate
from streams.rating.profiles import Profiles
from streams.simulate import simulate
from tests.unit.helpers import account, usage

ENGINE = BillingEngine(Profiles(), allowed_lateness_ms=10 * 60_000)


def run(*events, partitions=1):
    return simulate(
        [(i, orjson.dumps(e)) for i, e in enumerate(events, 1)], ENGINE, partitions=partitions
    )


def open_j():
    return account("j", "account_opened", profile="jiekou", amount="100", t="2026-05-01T00:00:00Z")


def test_hour_closes_after_end_plus_lateness_and_sums_its_deductions():
    r = run(
        open_j(),
        usage(
            "j", "tokens", model="claude-sonnet-4.5", input_tokens=1000, t="2026-05-01T10:05:00Z"
        ),
        usage(
            "j", "tokens", model="claude-sonnet-4.5", input_tokens=2000, t="2026-05-01T10:55:00Z"
        ),
        # 10:00 still open
        usage(
            "j", "tokens", model="claude-sonnet-4.5", input_tokens=1000, t="2026-05-01T11:09:59Z"
        ),
        # closes 10:00
        usage(
            "j", "tokens", model="claude-sonnet-4.5", input_tokens=1000, t="2026-05-01T11:10:00Z"
        ),
    )
    regular = [s for s in r.settlements if s["line_type"] == "regular"]
    first = regular[0]
    assert (first["period_start"], first["period_end"], first["closed_at"]) == (
        1777629600000,
        1777633200000,
        1777633800000,
    )
    assert (
        first["event_count"] == 2
        and first["gross_amount"] == "0.009"
        and first["cash_amount"] == "0.009"
    )
    assert first["quantities"] == {"input": "3000"}
    # the line lists no ids; its deductions name it
    assert "event_ids" not in first and "deduction_ids" not in first
    assert [d["settlement_id"] == first["settlement_id"] for d in r.deductions] == [
        True,
        True,
        False,
        False,
    ]
    # the 11:00 hour is closed by the end-of-input advance only if the clock passed 12:10: it did
    # not
    assert len(regular) == 1


def test_late_event_after_close_is_an_adjustment_line():
    r = run(
        open_j(),
        usage(
            "j", "tokens", model="claude-sonnet-4.5", input_tokens=1000, t="2026-05-01T10:05:00Z"
        ),
        usage(
            "j", "tokens", model="claude-sonnet-4.5", input_tokens=1000, t="2026-05-01T12:00:00Z"
        ),
        # late
        usage(
            "j", "tokens", model="claude-sonnet-4.5", input_tokens=3000, t="2026-05-01T10:30:00Z"
        ),
    )
    lines = [(s["period_start"], s["line_type"], s["gross_amount"]) for s in r.settlements]
    assert (1777629600000, "regular", "0.003") in lines
    assert (1777629600000, "adjustment", "0.009") in lines
    total = sum(
        Decimal(s["gross_amount"]) for s in r.settlements if s["period_start"] == 1777629600000
    )
    assert total == Decimal("0.012")


def test_video_settles_daily_in_the_platform_time_zone():
    r = run(
        account(
            "t",
            "account_opened",
            profile="tokenhub",
            post_paid=True,
            amount="100",
            t="2026-05-01T00:00:00+08:00",
        ),
        usage("t", "video", model="HY-Video-1.5", quantity="40", t="2026-05-01T01:00:00+08:00"),
        usage("t", "video", model="HY-Video-1.5", quantity="1", t="2026-05-01T23:00:00+08:00"),
        usage("t", "tokens", model="kimi-k2.5", input_tokens=10, t="2026-05-02T00:10:00+08:00"),
    )
    (day,) = [s for s in r.settlements if s["item"] == "video"]
    assert day["granularity"] == "day" and day["event_count"] == 2
    assert day["period_start"] == 1777564800000  # 2026-05-01T00:00+08:00
    assert day["period_end"] - day["period_start"] == 86_400_000
    assert (
        Decimal(day["trial_amount"]) + Decimal(day["cash_amount"])
        == Decimal(day["gross_amount"])
        == Decimal("73.8")
    )


def test_lines_add_up_to_the_deductions_on_a_mixed_stream():
    lines = generate(seed=5, accounts=30, usage_events=1500)
    r = simulate(list(enumerate(lines, 1)), ENGINE, partitions=4)
    assert r.settlements
    by_account = defaultdict(Decimal)
    for d in r.deductions:
        by_account[d["main_account_id"]] += Decimal(d["rated_amount"])
    settled = defaultdict(Decimal)
    open_amount = defaultdict(Decimal)
    for s in r.settlements:
        settled[s["main_account_id"]] += Decimal(s["gross_amount"])
    for key, state in r.states.items():
        for acc in state.periods.values():
            open_amount[key] += acc.gross
    for key, total in by_account.items():
        assert settled[key] + open_amount[key] == total, key
    ids = [s["settlement_id"] for s in r.settlements]
    assert len(ids) == len(set(ids))
    # every deduction in a line is in exactly one line, and the counts agree
    in_lines = [d for d in r.deductions if d["settlement_id"] in set(ids)]
    assert sum(s["event_count"] for s in r.settlements) == len(in_lines)


def test_same_lines_whatever_the_partition_count_when_accounts_are_alone():
    events = [
        open_j(),
        usage(
            "j", "tokens", model="claude-sonnet-4.5", input_tokens=1000, t="2026-05-01T10:05:00Z"
        ),
        usage(
            "j", "tokens", model="claude-sonnet-4.5", input_tokens=1000, t="2026-05-01T13:00:00Z"
        ),
    ]
    assert run(*events, partitions=1).settlements == run(*events, partitions=8).settlements


def test_arrears_reminder_and_release_follow_partition_stream_time():
    # two accounts on one partition: the idle one in arrears still reaches its deadlines because
    # the other account's events move the partition clock
    r = run(
        account(
            "t",
            "account_opened",
            profile="tokenhub",
            post_paid=True,
            amount="0.01",
            t="2026-05-01T00:00:00Z",
        ),
        account("j", "account_opened", profile="jiekou", amount="100", t="2026-05-01T00:00:00Z"),
        # arrears from here
        usage(
            "t", "tokens", model="Deepseek-r1-0528", input_tokens=10_000, t="2026-05-01T10:00:00Z"
        ),
        usage(
            "j", "tokens", model="claude-sonnet-4.5", input_tokens=1000, t="2026-05-16T05:59:59Z"
        ),
        # 4 h before the end
        usage(
            "j", "tokens", model="claude-sonnet-4.5", input_tokens=1000, t="2026-05-16T06:00:00Z"
        ),
        # 15 days
        usage(
            "j", "tokens", model="claude-sonnet-4.5", input_tokens=1000, t="2026-05-16T10:00:00Z"
        ),
        partitions=1,
    )
    t_alerts = [(a["kind"], a["event_time"]) for a in r.alerts if a["main_account_id"] == "t"]
    assert t_alerts == [
        ("arrears_started", 1777629600000),
        ("grace_ending", 1778911200000),
        ("resources_released", 1778925600000),
    ]
    assert [
        (s["status"], s["reason"], s["since"]) for s in r.statuses if s["main_account_id"] == "t"
    ] == [
        ("active", None, 1777593600000),
        ("suspended", "arrears", 1777629600000),
        ("released", "arrears_grace_expired", 1778925600000),
    ]


def test_top_up_before_release_resumes_and_alerts_once_each():
    events = [
        account(
            "t",
            "account_opened",
            profile="tokenhub",
            post_paid=True,
            amount="0.01",
            t="2026-05-01T00:00:00Z",
        ),
        usage(
            "t", "tokens", model="Deepseek-r1-0528", input_tokens=10_000, t="2026-05-01T10:00:00Z"
        ),
        usage(
            "t", "tokens", model="Deepseek-r1-0528", input_tokens=10_000, t="2026-05-02T10:00:00Z"
        ),
        account("t", "top_up", amount="10", t="2026-05-03T10:00:00Z"),
        usage(
            "t", "tokens", model="Deepseek-r1-0528", input_tokens=10_000, t="2026-05-20T10:00:00Z"
        ),
    ]
    r = run(*events)
    assert [a["kind"] for a in r.alerts] == ["arrears_started", "arrears_cleared"]
    assert [s["status"] for s in r.statuses] == ["active", "suspended", "active"]
    # replaying the whole stream again changes nothing and emits nothing new
    again = run(*events, *events)
    assert [a["alert_id"] for a in again.alerts] == [a["alert_id"] for a in r.alerts]


def test_requests_and_tokens_per_minute_are_published_per_model():
    r = run(
        open_j(),
        usage(
            "j",
            "tokens",
            model="claude-sonnet-4.5",
            input_tokens=1000,
            output_tokens=10,
            t="2026-05-01T10:00:01Z",
        ),
        usage(
            "j", "tokens", model="claude-sonnet-4.5", input_tokens=2000, t="2026-05-01T10:00:59Z"
        ),
        usage("j", "tokens", model="claude-opus-4.5", input_tokens=5, t="2026-05-01T10:00:30Z"),
        # not a token call
        usage(
            "j",
            "media_call",
            model="kling-v2",
            variant="video",
            quantity="1",
            t="2026-05-01T10:00:31Z",
        ),
        # closes 10:00 (+10 min)
        usage("j", "tokens", model="claude-sonnet-4.5", input_tokens=1, t="2026-05-01T10:11:00Z"),
    )
    got = {
        (m["model"], m["minute_start"], m["line_type"]): (m["requests"], m["tokens"])
        for m in r.usage_minutes
    }
    assert got == {
        ("claude-opus-4.5", 1777629600000, "regular"): (1, 5),
        ("claude-sonnet-4.5", 1777629600000, "regular"): (2, 3010),
    }
