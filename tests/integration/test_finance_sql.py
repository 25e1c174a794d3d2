"""Every query of docs/finance.sql runs against chDB on data that went through the pipeline (one
partition, a month of usage, arrears with reminder and release, a top-up that resumes, a late
event), and returns the figures computed independently from `rating simulate` on the same lines."""

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import orjson
import pytest

from streams.engine import BillingEngine
from streams.local.synthetic import generate
from streams.rating.profiles import Profiles
from streams.simulate import simulate
from streams.sink.queries import load_queries

pytestmark = pytest.mark.integration
Q = load_queries()
SH = ZoneInfo("Asia/Shanghai")
D = Decimal


def ms(text):
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()) * 1000


def line(**kw):
    return orjson.dumps(kw)


def scenario(tag):
    lines = generate(seed=31, accounts=8, usage_events=800, prefix=tag, max_gap_s=50_000)
    arrears, topup, late = f"{tag}-arrears", f"{tag}-topup", f"{tag}-late"
    manual = [
        line(
            kind="account",
            event_id=f"{arrears}-open",
            account_id=arrears,
            main_account_id=arrears,
            event_time="2026-05-01T00:00:00Z",
            type="account_opened",
            profile="tokenhub",
            post_paid=True,
            amount="0.01",
        ),
        line(
            kind="usage",
            event_id=f"{arrears}-u1",
            account_id=arrears,
            main_account_id=arrears,
            event_time="2026-05-02T10:00:00Z",
            item="tokens",
            model="Deepseek-r1-0528",
            input_tokens=10_000,
        ),
        line(
            kind="account",
            event_id=f"{topup}-open",
            account_id=topup,
            main_account_id=topup,
            event_time="2026-05-01T00:00:00Z",
            type="account_opened",
            profile="jiekou",
            post_paid=True,
            amount="0.01",
        ),
        line(
            kind="usage",
            event_id=f"{topup}-u1",
            account_id=topup,
            main_account_id=topup,
            event_time="2026-05-03T10:00:00Z",
            item="tokens",
            model="claude-sonnet-4.5",
            input_tokens=10_000,
        ),
        line(
            kind="account",
            event_id=f"{topup}-t1",
            account_id=topup,
            main_account_id=topup,
            event_time="2026-05-05T10:00:00Z",
            type="top_up",
            amount="5",
        ),
        line(
            kind="account",
            event_id=f"{late}-open",
            account_id=late,
            main_account_id=late,
            event_time="2026-05-01T00:00:00Z",
            type="account_opened",
            profile="jiekou",
            amount="10",
        ),
        line(
            kind="usage",
            event_id=f"{late}-u1",
            account_id=late,
            main_account_id=late,
            event_time="2026-05-04T10:10:00Z",
            item="tokens",
            model="claude-sonnet-4.5",
            input_tokens=1000,
        ),
    ]
    # issue 18 item 11: a top-up dated 09:30 that arrives just after the 10:00 charge put the
    # account in arrears: the clearing and the resumed status take effect at 10:00, after what they
    # replace
    latetop = f"{tag}-latetop"
    manual += [
        line(
            kind="account",
            event_id=f"{latetop}-open",
            account_id=latetop,
            main_account_id=latetop,
            event_time="2026-05-01T00:00:00Z",
            type="account_opened",
            profile="jiekou",
            post_paid=True,
            amount="0.01",
        ),
        line(
            kind="usage",
            event_id=f"{latetop}-u1",
            account_id=latetop,
            main_account_id=latetop,
            event_time="2026-05-06T10:00:00Z",
            item="tokens",
            model="claude-sonnet-4.5",
            input_tokens=10_000,
        ),
    ]
    # a partial top-up dated before the charge that put the account in arrears, arriving after it:
    # what the account owes is its balance after the top-up (later in processing order), not the
    # balance after the charge (later in event time)
    partial = f"{tag}-partial"
    manual += [
        line(
            kind="account",
            event_id=f"{partial}-open",
            account_id=partial,
            main_account_id=partial,
            event_time="2026-05-01T00:00:00Z",
            type="account_opened",
            profile="tokenhub",
            post_paid=True,
            amount="0.01",
        ),
        line(
            kind="usage",
            event_id=f"{partial}-u1",
            account_id=partial,
            main_account_id=partial,
            event_time="2026-05-02T10:00:00Z",
            item="tokens",
            model="Deepseek-r1-0528",
            input_tokens=10_000,
        ),
    ]
    merged = sorted(lines + manual, key=lambda raw: orjson.loads(raw)["event_time"])
    charged = next(
        i for i, raw in enumerate(merged) if orjson.loads(raw)["event_id"] == f"{partial}-u1"
    )
    merged.insert(
        charged + 1,
        line(
            kind="account",
            event_id=f"{partial}-t1",
            account_id=partial,
            main_account_id=partial,
            event_time="2026-05-02T09:00:00Z",
            type="top_up",
            amount="0.01",
        ),
    )
    charge = next(
        i for i, raw in enumerate(merged) if orjson.loads(raw)["event_id"] == f"{latetop}-u1"
    )
    merged.insert(
        charge + 1,
        line(
            kind="account",
            event_id=f"{latetop}-t1",
            account_id=latetop,
            main_account_id=latetop,
            event_time="2026-05-06T09:30:00Z",
            type="top_up",
            amount="49",
        ),
    )
    # arrives days after its hour closed: an adjustment line
    merged.append(
        line(
            kind="usage",
            event_id=f"{late}-u2",
            account_id=late,
            main_account_id=late,
            event_time="2026-05-04T10:20:00Z",
            item="tokens",
            model="claude-sonnet-4.5",
            input_tokens=2000,
        )
    )
    return merged


def test_finance_queries_return_the_simulated_figures(one_partition_harness):
    h = one_partition_harness
    lines = scenario(h.tag)
    sim = simulate(
        list(enumerate(lines, 1)),
        BillingEngine(Profiles(), allowed_lateness_ms=300_000),
        partitions=1,
    )
    window = {"from": datetime(2026, 4, 1, tzinfo=UTC), "to": datetime(2026, 8, 1, tzinfo=UTC)}
    # revenue and bucket usage are global queries over a table other tests share: compare the
    # difference this test's data makes
    revenue_before = {
        (r["day"], r["currency"], r["item"], r["model"]): r["paid"]
        for r in h.ch.query(Q["revenue_per_model_per_day"], parameters=window).named_results()
    }
    buckets_before = {
        r["currency"]: r for r in h.ch.query(Q["bucket_usage"], parameters=window).named_results()
    }
    h.start_worker()
    import asyncio

    asyncio.run(h.produce(lines))
    acc = f"{h.tag}-%"
    landed = h.land(
        lambda: (
            h.count("deductions", acc) >= len(sim.deductions)
            and h.count("settlements", acc) >= len(sim.settlements)
            and h.count("alerts", acc) >= len(sim.alerts)
        ),
        timeout=90,
    )
    assert landed, (
        f"deductions {h.count('deductions', acc)}/{len(sim.deductions)}, settlements "
        f"{h.count('settlements', acc)}/"
        f"{len(sim.settlements)}, alerts {h.count('alerts', acc)}/{len(sim.alerts)}; worker log "
        f"{h.pipeline.workers[0].log_path}"
    )
    assert h.count("deductions", acc) == len(sim.deductions)
    assert h.count("settlements", acc) == len(sim.settlements)

    def rows(name, **params):
        return h.ch.query(Q[name], parameters=params).named_results()

    mine = sim.deductions

    # --- an account's bill for a month by model and item
    account = max(
        {d["main_account_id"] for d in mine},
        key=lambda a: sum(1 for d in mine if d["main_account_id"] == a),
    )
    want = defaultdict(lambda: defaultdict(D))
    for d in mine:
        # display only; money stays Decimal
        local = datetime.fromtimestamp(d["event_time"] / 1000, SH)
        if d["main_account_id"] == account and local.strftime("%Y%m") == "202605":
            g = want[(d["item"], d["model"] or "", d["variant"] or "")]
            g["events"] += 1
            g["gross"] += D(d["rated_amount"])
            g["cash"] += sum(
                (D(s["amount"]) for s in d["splits"] if s["bucket_kind"] == "cash"), D(0)
            )
    got = {
        (r["item"], r["model"], r["variant"]): r
        for r in rows("account_bill_month", account=account, month=202605)
    }
    assert set(got) == set(want)
    for k, g in want.items():
        assert (got[k]["events"], got[k]["gross"], got[k]["cash"]) == (
            g["events"],
            g["gross"],
            g["cash"],
        ), k

    # --- revenue per model per day
    want = defaultdict(D)
    for d in mine:
        if not d["billed_elsewhere"] and d["main_account_id"].startswith(h.tag):
            day = datetime.fromtimestamp(d["event_time"] / 1000, SH).date()
            paid = sum(
                (
                    D(s["amount"])
                    for s in d["splits"]
                    if s["bucket_kind"] in ("pack", "voucher", "cash")
                ),
                D(0),
            )
            want[(day, d["currency"], d["item"], d["model"] or "")] += paid
    got = {}
    for r in rows("revenue_per_model_per_day", **window):
        k = (r["day"], r["currency"], r["item"], r["model"])
        delta = r["paid"] - revenue_before.get(k, D(0))
        if delta or k in want:
            got[k] = delta
    assert got == dict(want)

    # --- accounts in arrears: the one never cleared is there (reminded, then released); the
    # topped-up one is not
    as_of = datetime(2026, 6, 1, tzinfo=UTC)
    arrears = {
        r["main_account_id"]: r
        for r in rows("accounts_in_arrears", as_of=as_of)
        if r["main_account_id"].startswith(h.tag)
    }
    assert f"{h.tag}-arrears" in arrears and f"{h.tag}-topup" not in arrears
    row = arrears[f"{h.tag}-arrears"]
    assert row["owed"] == D("0.03") and row["days_in_arrears"] == 30 and row["status"] == "released"
    partial = f"{h.tag}-partial"
    assert arrears[partial]["owed"] == -sim.states[partial].cash == D("0.02")
    sim_in_arrears = set()
    # the latest arrears alert of an account is the one with the highest sequence (processing order)
    for a in sorted(
        (a for a in sim.alerts if a["kind"] in ("arrears_started", "arrears_cleared")),
        key=lambda a: a["sequence"],
    ):
        (sim_in_arrears.add if a["kind"] == "arrears_started" else sim_in_arrears.discard)(
            a["main_account_id"]
        )
    assert set(arrears) == sim_in_arrears
    latetop = f"{h.tag}-latetop"
    assert latetop not in arrears
    started, cleared = (
        r
        for r in h.ch.query(
            "SELECT kind, event_time, sequence FROM alerts FINAL WHERE main_account_id = "
            f"'{latetop}' "
            "AND kind IN ('arrears_started', 'arrears_cleared') ORDER BY sequence"
        ).result_rows
    )
    assert [started[0], cleared[0]] == ["arrears_started", "arrears_cleared"] and cleared[
        1
    ] >= started[1]
    statuses = h.ch.query(
        "SELECT status, since, sequence FROM account_status FINAL WHERE main_account_id = "
        f"'{latetop}' "
        "ORDER BY sequence"
    ).result_rows
    assert [r[0] for r in statuses] == ["active", "suspended", "active"]
    # never dated before the status replaced
    assert [r[1] for r in statuses] == sorted(r[1] for r in statuses)

    # --- each alert exactly once, the same as simulated
    live_alerts = {
        r[0]: r[1]
        for r in h.ch.query(
            f"SELECT alert_id, kind FROM alerts FINAL WHERE main_account_id LIKE '{acc}'"
        ).result_rows
    }
    assert live_alerts == {a["alert_id"]: a["kind"] for a in sim.alerts}
    kinds = [a["kind"] for a in sim.alerts if a["main_account_id"] == f"{h.tag}-arrears"]
    assert kinds == ["arrears_started", "grace_ending", "resources_released"]
    assert [a["kind"] for a in sim.alerts if a["main_account_id"] == f"{h.tag}-topup"] == [
        "arrears_started",
        "arrears_cleared",
    ]

    # --- bucket usage
    want = defaultdict(lambda: defaultdict(D))
    for d in mine:
        w = want[d["currency"]]
        w["gross"] += D(d["rated_amount"])
        w["unbilled"] += D(d["unbilled_amount"])
        for s in d["splits"]:
            w[s["bucket_kind"]] += D(s["amount"])
    got = {r["currency"]: r for r in rows("bucket_usage", **window)}
    for currency, w in want.items():
        before = buckets_before.get(currency, {})
        for col in ("gross", "free", "trial", "pack", "voucher", "cash", "unbilled"):
            assert got[currency][col] - before.get(col, D(0)) == w[col], (currency, col)

    # --- reconciliation: no mismatch; the late event is an adjustment; open periods are the
    # simulator's
    last_event = datetime.fromtimestamp(max(d["event_time"] for d in mine) / 1000, UTC)

    def reconciliation(as_of, since=datetime(2000, 1, 1, tzinfo=UTC)):
        return [
            r
            for r in rows("reconciliation", **{"from": since}, as_of=as_of, grace_hours=26)
            if r["main_account_id"].startswith(h.tag)
        ]

    rec = reconciliation(last_event)
    assert [r for r in rec if r["state"] in ("MISMATCH", "OVERDUE")] == []
    open_periods = sum(len(s.periods) for s in sim.states.values())
    assert sum(1 for r in rec if r["state"] == "open") == open_periods
    assert sum(1 for r in rec if r["state"] == "ok") > 20
    # the stream stopped there: a week on, the periods it left open are overdue, not open
    later = reconciliation(last_event + timedelta(days=7))
    assert sum(1 for r in later if r["state"] == "OVERDUE") == open_periods
    assert [r for r in later if r["state"] == "open"] == []
    # from a time on: exactly the periods that start then or later, each as the full check has it
    # (mid-day, so the day periods that began before are left out whole, not half counted)
    since = last_event.astimezone(SH).replace(hour=12, minute=0, second=0, microsecond=0)
    since -= timedelta(days=3)
    recent = reconciliation(last_event, since)
    cut = int(since.timestamp())
    assert recent == [r for r in rec if r["period"] >= cut]
    assert 0 < len(recent) < len(rec)
    adjustments = h.ch.query(
        "SELECT d.event_id FROM settlements AS s FINAL INNER JOIN (SELECT * FROM deductions "
        "FINAL) AS d "
        "ON d.settlement_id = s.settlement_id AND d.main_account_id = s.main_account_id "
        f"WHERE s.line_type = 'adjustment' AND s.main_account_id LIKE '{acc}'"
    ).result_rows
    assert (f"{h.tag}-late-u2",) in adjustments


def test_time_parameters_given_as_text_are_platform_time(ch):
    """Days are Shanghai days in these queries, so a window typed as text is Shanghai time too,
    whatever the server's zone: 2026-09-01 16:30 UTC is 00:30 on 2 September in Shanghai."""
    account = f"tz-{datetime.now(UTC).timestamp():.0f}"
    rows = ", ".join(
        f"('{account}-{n}', '{account}-{n}', '{account}', '{account}', '{at}', 'XTS', {n}, {n})"
        for n, at in ((1, "2026-09-01 15:30:00"), (2, "2026-09-01 16:30:00"))
    )
    ch.command(
        "INSERT INTO deductions (deduction_id, event_id, main_account_id, account_id, event_time, "
        f"currency, rated_amount, cash_amount) VALUES {rows}"
    )
    as_text = {"from": "2026-09-02 00:00:00", "to": "2026-09-03 00:00:00"}
    as_instants = {
        "from": datetime(2026, 9, 2, tzinfo=ZoneInfo("Asia/Shanghai")),
        "to": datetime(2026, 9, 3, tzinfo=ZoneInfo("Asia/Shanghai")),
    }
    for params in (as_text, as_instants):
        for server_zone in ("UTC", "Asia/Shanghai", "America/New_York"):
            got = {
                r["currency"]: r["gross"]
                for r in ch.query(
                    Q["bucket_usage"],
                    parameters=params,
                    settings={"session_timezone": server_zone},
                ).named_results()
            }
            assert got.get("XTS") == Decimal(2), (params, server_zone)  # the 16:30 UTC row only
