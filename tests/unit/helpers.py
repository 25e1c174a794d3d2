"""Builders for events in tests (the JSON Lines shape)."""

from itertools import count

_ids = count(1)


def usage(main, item="tokens", t="2026-05-01T10:00:00+08:00", **kw):
    n = next(_ids)
    d = {
        "kind": "usage",
        "event_id": kw.pop("event_id", f"u{n}"),
        "trace_id": f"t{n}",
        "account_id": kw.pop("account_id", main),
        "main_account_id": main,
        "event_time": t,
        "item": item,
    }
    d.update(kw)
    return d


def account(main, type, t="2026-05-01T08:00:00+08:00", **kw):
    n = next(_ids)
    d = {
        "kind": "account",
        "event_id": kw.pop("event_id", f"a{n}"),
        "account_id": kw.pop("account_id", main),
        "main_account_id": main,
        "event_time": t,
        "type": type,
    }
    d.update(kw)
    return d
