"""Issue 18 items 9-11: an alert fires once per episode; the late-free-points window counts
calendar days up to stream time; status and alert records carry a per-account sequence and never
take effect before the state they replace."""

from __future__ import annotations

import json
from pathlib import Path

from streams.engine import BillingEngine
from streams.ingest.codec import registry
from streams.ingest.events import parse_json_event
from streams.ledger.state import AccountState
from streams.sink.clickhouse import alert_values, status_values
from tests.unit.engine_driver import PROFILES, Account, D, ms, splits
from tests.unit.helpers import account, usage

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "account_state.v1.json"


def coze(amount="10"):
    a = Account()
    a.send(account("c", "account_opened", profile="coze-pro", amount=amount))
    return a


def kinds(alerts, kind):
    return [x for x in alerts if x["kind"] == kind]


# ---------------------------------------------------------------- 9. once per episode


def test_free_quota_exhausted_fires_once_per_day_even_for_late_events():
    a = coze()
    # the day's 500 points
    a.send(usage("c", "agent_call", quantity="250", t="2026-05-01T10:00:00+08:00"))
    a.send(usage("c", "agent_call", quantity="250", t="2026-05-02T10:00:00+08:00"))
    first = kinds(a.alerts, "free_quota_exhausted")
    assert [x["episode"] for x in first] == ["2026-05-01", "2026-05-02"]
    for i in range(3):  # late events of 05-01: its points are used up, the alert went out already
        out = a.send(
            usage(
                "c", "agent_call", quantity="1", event_id=f"late-{i}", t="2026-05-01T11:00:00+08:00"
            )
        )
        assert splits(out.deduction.to_record()) == [("cash", "cash", D("0.002"))]
        assert not out.alerts
    assert kinds(a.alerts, "free_quota_exhausted") == first  # the real trigger (10:00) is kept


def test_threshold_and_arrears_alerts_fire_once_per_episode():
    a = Account()
    a.send(
        account(
            "j",
            "account_opened",
            profile="jiekou",
            post_paid=True,
            amount="1",
            balance_threshold="0.5",
        )
    )
    for i in range(4):  # claude-sonnet-4.5: 0.3 CNY per 100k input tokens
        a.send(
            usage(
                "j",
                "tokens",
                model="claude-sonnet-4.5",
                input_tokens=100_000,
                event_id=f"u{i}",
                t=f"2026-05-01T10:0{i}:00+08:00",
            )
        )
    # below from u1 on (0.4 < 0.5), never recovered
    assert len(kinds(a.alerts, "balance_below_threshold")) == 1
    assert len(kinds(a.alerts, "arrears_started")) == 1  # at or below 0 from u3 on
    a.send(account("j", "top_up", amount="5", t="2026-05-01T11:00:00+08:00"))
    a.send(
        usage(
            "j",
            "tokens",
            model="claude-sonnet-4.5",
            input_tokens=100_000,
            event_id="u9",
            t="2026-05-01T12:00:00+08:00",
        )
    )
    assert (
        len(kinds(a.alerts, "arrears_cleared")) == 1
        and len(kinds(a.alerts, "balance_below_threshold")) == 1
    )


# ---------------------------------------------------------------- 10. calendar days


def test_late_free_points_window_is_calendar_days_of_stream_time_with_sparse_usage():
    # usage on 05-01 and 05-21 only; stream time 05-21: the window is 05-19..05-21
    a = coze()
    a.send(usage("c", "agent_call", quantity="1", event_id="d1", t="2026-05-01T10:00:00+08:00"))
    a.send(usage("c", "agent_call", quantity="1", event_id="d21", t="2026-05-21T10:00:00+08:00"))
    late = {
        n: a.send(
            usage(
                "c",
                "agent_call",
                quantity="1",
                event_id=f"late-{n}",
                t=f"2026-05-{21 - n:02d}T10:00:00+08:00",
            )
        ).deduction.to_record()
        for n in (2, 3, 4, 20)
    }
    assert splits(late[2]) == [("free", "daily:2026-05-19", D("0.002"))]
    for n in (3, 4, 20):  # 3, 4 and 20 calendar days late: no free points, whatever days had usage
        assert splits(late[n]) == [("cash", "cash", D("0.002"))], n
    assert a.state.free_horizon == "2026-05-19" and set(a.state.free_used) == {
        "2026-05-19",
        "2026-05-21",
    }


def test_window_follows_the_partition_clock_not_the_account_own_events():
    # another account moved the partition's clock to 05-21; this account last used 05-17
    engine = BillingEngine(PROFILES)
    state = None
    for raw in (
        account("c", "account_opened", profile="coze-pro", amount="10"),
        usage("c", "agent_call", quantity="1", event_id="d17", t="2026-05-17T10:00:00+08:00"),
    ):
        outs, _ = engine.step(state, parse_json_event(raw), clock_ms=0)
        state = outs[-1].state
    outs, _ = engine.step(
        state,
        parse_json_event(
            usage("c", "agent_call", quantity="1", event_id="d18", t="2026-05-18T10:00:00+08:00")
        ),
        clock_ms=ms("2026-05-21T10:00:00+08:00"),
    )
    assert splits(outs[-1].deduction.to_record()) == [
        ("cash", "cash", D("0.002"))
    ]  # 3 calendar days before stream time


# ---------------------------------------------------------------- 11. sequence and effective time


def late_top_up():
    a = Account()
    a.send(
        account(
            "t",
            "account_opened",
            profile="jiekou",
            post_paid=True,
            amount="0.01",
            t="2026-05-01T00:00:00+08:00",
        )
    )
    a.send(
        usage(
            "t",
            "tokens",
            model="claude-sonnet-4.5",
            input_tokens=10_000,
            t="2026-05-03T10:00:00+08:00",
        )
    )
    # dated before, arrives after
    a.send(account("t", "top_up", amount="49", t="2026-05-03T09:30:00+08:00"))
    return a


def test_late_top_up_clears_arrears_and_resumes_no_earlier_than_they_started():
    a = late_top_up()
    ten = ms("2026-05-03T10:00:00+08:00")
    started, cleared = kinds(a.alerts, "arrears_started")[0], kinds(a.alerts, "arrears_cleared")[0]
    assert started["event_time"] == ten and cleared["event_time"] == ten  # not 09:30
    assert cleared["sequence"] > started["sequence"]
    assert [(s["status"], s["since"]) for s in a.statuses] == [
        ("active", ms("2026-05-01T00:00:00+08:00")),
        ("suspended", ten),
        ("active", ten),
    ]
    assert a.state.status == "active" and a.state.cash == D("48.98")


def test_sequences_are_strictly_increasing_across_alerts_and_statuses_per_account():
    a = late_top_up()
    a.advance("2026-07-01T00:00:00+08:00")
    records = sorted(a.alerts + a.statuses, key=lambda r: r["sequence"])
    seqs = [r["sequence"] for r in records]
    assert seqs == sorted(set(seqs)) and seqs[0] >= 1  # unique: a total order per account
    # the last written is the latest
    assert a.statuses[-1] is max(a.statuses, key=lambda r: r["sequence"])


def test_an_account_restarting_numbering_after_replay_gives_the_same_sequences():
    assert [r["sequence"] for r in late_top_up().alerts] == [
        r["sequence"] for r in late_top_up().alerts
    ]


def test_old_state_loads_with_defaults_and_new_records_number_after_old_ones():
    state = AccountState.from_dict(json.loads(FIXTURE.read_text()))
    assert (
        state.record_sequence,
        state.status_since,
        state.arrears_changed_at,
        state.free_exhausted_days,
    ) == (0, 0, 0, [])
    again = AccountState.loads(state.dumps())
    assert again.to_dict() == state.to_dict()


def test_v1_alert_and_status_records_land_with_sequence_zero():
    reg = registry()
    v1_alert = next(sid for sid, sv in reg.by_id.items() if sv.name == "alert" and sv.version == 1)
    v1_status = next(
        sid for sid, sv in reg.by_id.items() if sv.name == "account_status" and sv.version == 1
    )
    a = {
        "alert_id": "x",
        "kind": "arrears_started",
        "main_account_id": "m",
        "account_id": "m",
        "event_time": 1,
        "episode": "arrears:1",
        "model": None,
        "message": "m",
        "details": {},
        "source_event_ids": [],
        "trace_id": "",
    }
    s = {
        "main_account_id": "m",
        "status": "active",
        "reason": None,
        "since": 1,
        "source_event_id": "e",
    }
    _, alert = reg.decode(reg.encode("alert", a, schema_id=v1_alert))
    _, status = reg.decode(reg.encode("account_status", s, schema_id=v1_status))
    assert alert_values(alert)["sequence"] == 0 and status_values(status)["sequence"] == 0
    assert reg.latest["alert"].version == 2 and reg.latest["account_status"].version == 2
