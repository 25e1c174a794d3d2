"""``rating trace ID``: from a settlement line, deduction, event or trace id to the whole chain, as
ClickHouse holds it: usage event(s) -> price version and row -> bucket split -> deduction ->
settlement line(s). docs/finance.sql has the same chain as SQL (trace_settlement_line,
trace_request).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import typer
from rich.tree import Tree

from streams.cli.common import UserError, _profiles, amount, client_settings, console
from streams.cli.common import shown as _s

DEDUCTION_FIELDS = (
    "deduction_id",
    "kind",
    "event_id",
    "trace_id",
    "account_id",
    "main_account_id",
    "event_time",
    "profile",
    "currency",
    "price_version",
    "item",
    "model",
    "variant",
    "quantities",
    "lines_json",
    "rated_amount",
    "split_bucket_kind",
    "split_bucket_id",
    "split_amount",
    "split_units",
    "split_unit",
    "unbilled_amount",
    "unbilled_reason",
    "adjusts_deduction_id",
    "rerate_id",
    "settlement_period",
    "settlement_id",
)
SETTLEMENT_FIELDS = (
    "settlement_id",
    "main_account_id",
    "period_start",
    "period_end",
    "granularity",
    "line_type",
    "item",
    "model",
    "variant",
    "currency",
    "gross_amount",
    "free_amount",
    "trial_amount",
    "pack_amount",
    "voucher_amount",
    "cash_amount",
    "unbilled_amount",
    "event_count",
    "deduction_ids",
    "event_ids",
)


# Each table read goes through id_lookup (migration 033): an id gives the account and time that
# start the sorting keys, so only that range of the table is read, not the whole of it under FINAL.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FINAL_SETTINGS = (
    "SETTINGS do_not_merge_across_partitions_select_final = 1, "
    "distributed_product_mode = 'local'"  # a cluster: id_lookup is sharded by account as well
)
KEYS = (
    "(main_account_id, {time}) IN (SELECT main_account_id, key_time FROM id_lookup "
    "WHERE id = {{id:String}})"
)


def _epoch_ms(at: datetime) -> int:
    """An instant read from a DateTime64(3, 'UTC') column (naive means UTC)."""
    return ((at if at.tzinfo else at.replace(tzinfo=UTC)) - EPOCH) // timedelta(milliseconds=1)


def _rows(client, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    return list(client.query(sql, parameters=params).named_results())


def _line_deductions(client, ident: str, lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A settlement line's deductions: those naming it, or listed by a line written before
    settlement v2. The account and the line's period start the deductions' key: only that range
    is read."""
    return _rows(
        client,
        f"SELECT {', '.join(DEDUCTION_FIELDS)} FROM deductions FINAL "
        "WHERE main_account_id = {account:String} "
        "AND event_time >= fromUnixTimestamp64Milli({start:Int64}, 'UTC') "
        "AND event_time < fromUnixTimestamp64Milli({end:Int64}, 'UTC') "
        "AND (settlement_id = {id:String} "
        "OR has({ids:Array(String)}, deduction_id)) ORDER BY event_time, deduction_id "
        f"{FINAL_SETTINGS}",
        {
            "id": ident,
            "ids": [d for line in lines for d in line["deduction_ids"]],
            "account": lines[0]["main_account_id"],
            "start": min(_epoch_ms(line["period_start"]) for line in lines),
            "end": max(_epoch_ms(line["period_end"]) for line in lines),
        },
    )


def find_chain(client, ident: str) -> dict[str, Any]:
    """The settlement lines and deductions an id reaches: a settlement line reaches exactly its
    deductions; a deduction, event or trace id reaches its deductions and the lines that hold them.
    """
    lines = _rows(
        client,
        f"SELECT {', '.join(SETTLEMENT_FIELDS)} FROM settlements FINAL "
        f"WHERE {KEYS.format(time='period_start')} AND settlement_id = {{id:String}} "
        f"{FINAL_SETTINGS}",
        {"id": ident},
    )
    if lines:
        return {
            "query": ident,
            "found_as": "settlement line",
            "settlement_lines": lines,
            "deductions": _line_deductions(client, ident, lines),
        }
    deductions = _rows(
        client,
        f"SELECT {', '.join(DEDUCTION_FIELDS)} FROM deductions FINAL "
        f"WHERE {KEYS.format(time='event_time')} AND (deduction_id = {{id:String}} "
        "OR event_id = {id:String} OR trace_id = {id:String} "
        "OR adjusts_deduction_id = {id:String}) "
        f"ORDER BY event_time, kind DESC, deduction_id {FINAL_SETTINGS}",
        {"id": ident},
    )
    if not deductions:
        dead = _rows(
            client,
            "SELECT dead_letter_id, reason_code, reason, event_id FROM dead_letters FINAL "
            "WHERE event_id = {id:String} OR trace_id = {id:String} OR dead_letter_id = "
            "{id:String}",
            {"id": ident},
        )
        if dead:
            return {
                "query": ident,
                "found_as": "dead letter",
                "settlement_lines": [],
                "deductions": [],
                "dead_letters": dead,
            }
        raise UserError(
            f"{ident!r} is not a settlement line, deduction, event or trace id in ClickHouse"
        )
    lines = _rows(
        client,
        f"SELECT {', '.join(SETTLEMENT_FIELDS)} FROM settlements FINAL "
        "WHERE main_account_id IN {accounts:Array(String)} AND (settlement_id IN "
        "{lines:Array(String)} "
        "OR hasAny(deduction_ids, {ids:Array(String)})) ORDER BY period_start, line_type "
        f"{FINAL_SETTINGS}",
        {
            "ids": [d["deduction_id"] for d in deductions],
            "accounts": sorted({d["main_account_id"] for d in deductions}),
            "lines": sorted({d["settlement_id"] for d in deductions if d["settlement_id"]}),
        },
    )
    return {
        "query": ident,
        "found_as": "deduction / event / trace",
        "settlement_lines": lines,
        "deductions": deductions,
    }


def price_row(
    profiles, price_version: str, item: str, model: str, variant: str
) -> dict[str, Any] | None:
    name, _, version = price_version.partition("@")
    profile = profiles.get(name)
    resolved = profile.version_named(version) if profile is not None else None
    if resolved is None:
        return None
    rows = resolved.rows.get((item, model or None)) or {}
    row = rows.get(variant or None) or (rows.get(None) if len(rows) == 1 else None)
    return row.model_dump(exclude_none=True, mode="json") if row is not None else None


def trace_command(
    ident: str = typer.Argument(..., help="settlement_id, deduction_id, event_id or trace_id"),
    as_json: bool = typer.Option(False, "--json", help="print the chain as one JSON line"),
):
    """Why was I charged this? Print the
    chain from usage events to settlement lines, with every id."""
    from streams.cli.common import open_clickhouse

    s = client_settings()
    client = open_clickhouse(s)  # read-only: a finance user without DDL rights can trace
    chain = find_chain(client, ident)
    profiles = _profiles(s)
    for d in chain["deductions"]:
        d["price_row"] = price_row(
            profiles, d["price_version"], d["item"], d["model"], d["variant"]
        )
    if as_json:  # one line: the whole chain (decimals as exact strings, times ISO-8601)
        from streams.cli.common import emit_json_lines

        emit_json_lines([chain])
        return
    render(chain)


def render(chain: dict[str, Any]) -> None:
    tree = Tree(f"[bold]{_s(chain['query'])}[/] ({chain['found_as']})")
    for dl in chain.get("dead_letters", []):
        tree.add(
            f"dead letter {_s(dl['dead_letter_id'])}: {_s(dl['reason_code'])}: {_s(dl['reason'])} "
            "(never charged)"
        )
    by_id = {d["deduction_id"]: d for d in chain["deductions"]}
    shown: set[str] = set()
    for line in chain["settlement_lines"]:
        node = tree.add(
            f"settlement line {_s(line['settlement_id'])} \\[{_s(line['line_type'])}] "
            f"{_s(line['main_account_id'])} "
            f"{line['period_start']:%Y-%m-%d %H:%M} UTC per {_s(line['granularity'])}: "
            f"{_s(line['item'])} {_s(line['model'])} "
            f"gross {amount(line['gross_amount'])} {_s(line['currency'])} (cash "
            f"{amount(line['cash_amount'])}), "
            f"{line['event_count']} events   [dim]ClickHouse settlements[/]"
        )
        legacy = set(line["deduction_ids"])
        for did, d in by_id.items():
            if d["settlement_id"] == line["settlement_id"] or did in legacy:
                _deduction(node, d)
                shown.add(did)
    rest = [d for d in chain["deductions"] if d["deduction_id"] not in shown]
    if rest:
        node = (
            tree.add("not yet in a settlement line (the period is open)")
            if chain["settlement_lines"]
            else tree
        )
        for d in rest:
            _deduction(node, d)
    console.print(tree)


def _deduction(parent: Tree, d: dict[str, Any]) -> None:
    label = "adjustment" if d["kind"] == "rerate_adjustment" else "deduction"
    node = parent.add(
        f"{label} {_s(d['deduction_id'])}: {amount(d['rated_amount'])} {_s(d['currency'])} "
        f"at {_s(d['price_version'])}   [dim]ClickHouse deductions[/]"
    )
    if d["kind"] == "rerate_adjustment":
        node.add(
            f"corrects deduction {_s(d['adjusts_deduction_id'])} (re-rating {_s(d['rerate_id'])})"
        )
    node.add(
        f"usage event {_s(d['event_id'])} (trace {_s(d['trace_id'])}), account "
        f"{_s(d['account_id'])}, "
        f"{d['event_time']:%Y-%m-%d %H:%M:%S} UTC, "
        + f"{_s(d['item'])} {_s(d['model'])} {_s(d['variant'])}".rstrip()
        + f", quantities {_s(dict(d['quantities']))}"
    )
    if d.get("price_row"):
        node.add(f"price row: {_s(orjson.dumps(d['price_row']).decode())}")
    elif d["price_version"].endswith("@elsewhere"):
        node.add(
            "billed elsewhere: the model's own platform charges it; this profile records it at 0"
        )
    for line in orjson.loads(d["lines_json"] or "[]"):
        node.add(
            f"rating line {_s(line['component'])}: {_s(line['units'])} x {_s(line['unit_price'])} "
            f"= {_s(line['amount'])}"
        )
    split = ", ".join(
        f"{_s(k)} {_s(i)} {amount(a)}"
        for k, i, a in zip(
            d["split_bucket_kind"], d["split_bucket_id"], d["split_amount"], strict=True
        )
    )
    node.add(
        f"paid by: {split or 'nothing'}"
        + (
            f"; unbilled {amount(d['unbilled_amount'])} ({_s(d['unbilled_reason'])})"
            if d["unbilled_amount"]
            else ""
        )
    )
