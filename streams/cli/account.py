"""``rating account show ID``: an account exactly as the pipeline holds it.

The worker's ``accounts`` table is backed by a compacted changelog topic, one record per main
account. Reading the newest record of the account's partition shows the state any worker would
restore, without asking a running worker (and without one running at all).
"""

from __future__ import annotations

import asyncio

import typer
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from streams.cli.common import (
    UserError,
    amount,
    client_settings,
    console,
    err,
    friendly,
    require_cluster,
)
from streams.cli.common import shown as _s
from streams.deduction.record import money
from streams.ingest.events import millis_to_iso
from streams.ingest.partitioner import partition_for
from streams.kafka_client import read_topic
from streams.ledger.state import AccountState

account_app = typer.Typer(help="Accounts as the pipeline holds them.", no_args_is_help=True)


def changelog_topic(s) -> str:
    return f"{s.worker_app_id}-accounts-changelog"


async def load_state(s, main_account_id: str) -> AccountState | None:
    key = main_account_id.encode()
    partition = partition_for(key, s.kafka_partitions)
    latest: bytes | None = None
    with Progress(
        TextColumn("reading {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task(f"{changelog_topic(s)}[{partition}]", total=None)
        async for m in read_topic(
            s,
            changelog_topic(s),
            [partition],
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        ):
            if m.key == key:
                latest = m.value  # None is a tombstone
    return AccountState.loads(latest) if latest is not None else None


@account_app.command("show")
@friendly
def show(
    main_account_id: str = typer.Argument(..., help="main account id (the events' key)"),
    as_json: bool = typer.Option(False, "--json", help="print the stored state as one JSON line"),
):
    """Balances, buckets, trials, controls and status of one main account, from the worker's
    changelog."""
    s = client_settings()
    require_cluster(s, "`rating account show`")
    state = asyncio.run(load_state(s, main_account_id))
    if state is None:
        raise UserError(
            f"account {main_account_id!r} is not in the pipeline's state ({changelog_topic(s)}); "
            "was it opened with an open_account event?"
        )
    if as_json:
        from streams.cli.common import emit_json_lines

        emit_json_lines([state.to_dict()])
        return
    render(state)


def _when(ms: int | None) -> str:
    return millis_to_iso(ms) if ms else "-"


def render(state: AccountState) -> None:
    head = Table(title=f"account {_s(state.main_account_id)}", show_header=False)
    head.add_column("field")
    head.add_column("value")
    status = state.status + (f" ({state.status_reason})" if state.status_reason else "")
    if state.arrears_since:
        status += f", in arrears since {_when(state.arrears_since)}"
    rows = [
        ("profile", state.profile),
        ("currency", state.currency),
        ("status", status),
        ("cash balance", amount(state.cash)),
        ("post-paid", "yes" if state.post_paid else "no"),
        (
            "balance threshold",
            amount(state.balance_threshold) if state.balance_threshold is not None else "-",
        ),
        ("safe trial mode", "on" if state.safe_trial_mode else "off"),
        ("opened", _when(state.opened_at)),
        ("stream time", _when(state.stream_time)),
        ("sub-accounts", ", ".join(sorted(state.sub_accounts)) or "-"),
        (
            "last applied offsets",
            ", ".join(f"p{p}@{o}" for p, o in sorted(state.offsets.items())) or "-",
        ),
    ]
    for k, v in rows:
        head.add_row(k, _s(v))
    console.print(head)

    buckets = Table(title="buckets")
    for col in ("kind", "id", "remaining", "granted", "expires"):
        buckets.add_column(col, justify="right" if col in ("remaining", "granted") else "left")
    for b in [*state.vouchers, *state.packs]:
        buckets.add_row(
            _s(b.kind), _s(b.id), amount(b.remaining), amount(b.granted), _when(b.expires_at)
        )
    for day, used in sorted(state.free_used.items()):
        buckets.add_row("free (daily)", day, "-", f"used {money(used)}", "end of day")
    for model, t in sorted(state.trials.items()):
        buckets.add_row(
            f"trial ({_s(t.unit)})",
            _s(model),
            money(t.remaining),
            money(t.granted),
            _when(t.expires_at),
        )
    console.print(buckets)

    controls = Table(title="controls")
    controls.add_column("control")
    controls.add_column("value")
    for model, limit in sorted(state.limits.items()):
        controls.add_row(
            f"inference limit {_s(model)}",
            f"{limit.used_tokens}/{limit.limit_tokens} tokens"
            + (" (reached)" if limit.reached else ""),
        )
    controls.add_row("stopped models", _s(", ".join(sorted(state.stopped_models)) or "-"))
    controls.add_row(
        "paused by safe trial mode", _s(", ".join(sorted(state.safe_paused_models)) or "-")
    )
    controls.add_row("activated models", _s(", ".join(sorted(state.activated_models)) or "-"))
    controls.add_row("open settlement periods", str(len(state.periods)))
    console.print(controls)
