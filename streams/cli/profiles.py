"""``rating profiles``: what each profile prices (items, models, variants), its price versions with
their effective dates, and its per-request bounds; and the nearest names on a typo."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

import typer
from rich.table import Table

from streams.cli.common import UserError, _profiles, console, emit_json_lines, exact, settings
from streams.cli.common import shown as _s
from streams.ingest.events import millis_to_iso


def nearest(word: str | None, choices: Iterable[str], what: str) -> str:
    """`` (did you mean 'kimi-k2.5'?)`` for a typo, or a short list of what exists."""
    names = sorted({c for c in choices if c})
    close = difflib.get_close_matches(word or "", names, n=3, cutoff=0.6)
    if close:
        return f" (did you mean {' or '.join(repr(c) for c in close)}?)"
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return f"; {what}: {shown} (`rating profiles` lists them)" if names else ""


def profile_or_error(profiles, name: str):
    p = profiles.get(name)
    if p is None:
        raise UserError(f"unknown profile {name!r}{nearest(name, profiles.names(), 'profiles')}")
    return p


def check_names(profile, item: str, model: str | None, variant: str | None, at_ms: int) -> None:
    """A typo in an item, model or variant named with the nearest names instead of a bare code."""
    version = profile.version_at(at_ms) or profile.versions[-1]
    keys = version.rows
    items = {i for i, _ in keys}
    if item not in items:
        raise UserError(
            f"profile {profile.name} has no item {item!r}{nearest(item, items, 'items')}"
        )
    models = {m for i, m in keys if i == item and m}
    if model and models and model not in models and not profile.billed_elsewhere(model):
        raise UserError(
            f"profile {profile.name} has no {item} model "
            f"{model!r}{nearest(model, models, 'models')}"
        )
    variants = {v for v in keys.get((item, model or None), {}) if v}
    if variant and variants and variant not in variants:
        raise UserError(
            f"{profile.name} {item}{' ' + model if model else ''} has no variant "
            f"{variant!r}{nearest(variant, variants, 'variants')}"
        )


def describe(profile) -> dict[str, Any]:
    """One profile as data: currency, versions (effective dates, row counts), rows of the newest
    version, and the per-request bounds of its policy."""
    newest = profile.versions[-1]
    rows = []
    for (item, model), by_variant in sorted(
        newest.rows.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")
    ):
        for variant, row in sorted(by_variant.items(), key=lambda kv: kv[0] or ""):
            rows.append(
                {
                    "item": item,
                    "model": model,
                    "variant": variant,
                    "unit": row.unit or (f"{row.per_tokens} tokens" if row.per_tokens else None),
                    "example": row.example,
                }
            )
    limits = profile.policy.limits
    written = {
        v.version: v.effective_from.isoformat() for v in profile.book.versions
    }  # with the book's offset
    return {
        "profile": profile.name,
        "currency": profile.currency,
        "price_unit": profile.price_unit_name,
        "timezone": profile.timezone,
        "versions": [
            {
                "version": v.version,
                "effective_from": written.get(v.version) or millis_to_iso(v.effective_ms),
                "rows": sum(map(len, v.rows.values())),
            }
            for v in profile.versions
        ],
        "items": sorted({r["item"] for r in rows}),
        "rows": rows,
        "bounds": {
            "max_tokens_per_request": limits.max_tokens_per_request,
            "max_quantity": limits.max_quantity,
            "max_quantity_by_item": dict(limits.max_quantity_by_item),
            "max_hours": limits.max_hours,
        },
    }


def profiles_command(
    name: str | None = typer.Argument(None, help="one profile (default: all)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per profile (JSON Lines)"),
):
    """Profiles: currency, price versions with their effective dates, items, models, variants,
    bounds."""
    profiles = _profiles(settings())
    chosen = [profile_or_error(profiles, name)] if name else [profiles[n] for n in profiles.names()]
    described = [describe(p) for p in chosen]
    if as_json:
        emit_json_lines(described)
        return
    for d in described:
        render(d)


def render(d: dict[str, Any]) -> None:
    console.print(
        f"[bold]{_s(d['profile'])}[/]  currency {_s(d['currency'])}, prices in "
        f"{_s(d['price_unit'])}, "
        f"days in {_s(d['timezone'])}"
    )
    versions = ", ".join(
        f"{_s(v['version'])} from {_s(v['effective_from'])}" for v in d["versions"]
    )
    console.print(f"  price versions: {versions}")
    b = d["bounds"]
    per_item = "".join(
        f", {_s(k)} {exact(v)}" for k, v in sorted(b["max_quantity_by_item"].items())
    )
    console.print(
        f"  bounds per request: {b['max_tokens_per_request']} tokens, quantity "
        f"{exact(b['max_quantity'])}"
        f"{per_item}, kb_storage hours {exact(b['max_hours'])}"
    )
    table = Table(title=f"{_s(d['profile'])}: rows of {_s(d['versions'][-1]['version'])}")
    for col in ("item", "model", "variant", "unit", "example"):
        table.add_column(col, overflow="fold")
    for r in d["rows"]:
        table.add_row(
            _s(r["item"]),
            _s(r["model"] or "-"),
            _s(r["variant"] or "-"),
            _s(r["unit"] or "-"),
            "yes" if r["example"] else "",
        )
    console.print(table)
