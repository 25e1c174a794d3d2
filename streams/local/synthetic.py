"""Seeded synthetic event streams over mixed profiles, for tests, fault scenarios and benchmarks.

Accounts are opened first; usage and account events follow in non-decreasing event time per
account. The same seed gives the same lines.
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson

START = datetime(2026, 5, 1, 0, 0, tzinfo=UTC)

TOKEN_MODELS = {
    "coze-pro": [
        "Doubao-pro-32k",
        "Doubao-1.5-pro-256k",
        "DeepSeek-V3",
        "DeepSeek-R1",
        "ark/doubao-seed-1.6",
    ],
    "tokenhub": [
        "kimi-k2.5",
        "HY 2.0 Instruct",
        "GLM-5",
        "Deepseek-v3.2",
        "Deepseek-r1-0528",
        "MiniMax-M2.5",
    ],
    "ark": ["doubao-seed-1.6", "deepseek-v3", "deepseek-r1"],
    "jiekou": ["claude-opus-4.5", "claude-sonnet-4.5", "deepseek-r1", "gemini-2.5-pro"],
}
# (item, model, variant, quantity) of the unit-priced calls of each profile
UNIT_ITEMS: dict[str, list[tuple[str, str | None, str | None, str]]] = {
    "coze-pro": [
        ("agent_call", None, None, "1"),
        ("tts", None, None, "120"),
        ("rtc_video", None, "720p", "3"),
        ("asr_file", None, None, "2"),
        ("rtc_audio", None, "voice_call", "5"),
    ],
    "tokenhub": [
        ("image", "HY-Image-V3.0", None, "2"),
        ("video", "YT-Video-2.0", "720p", "1"),
        ("3d", "HY-3D-Express", "text_to_3d", "1"),
    ],
    "ark": [],
    "jiekou": [("media_call", "flux-1-schnell", "image", "1")],
}
CURRENCY = {"coze-pro": "CNY", "tokenhub": "CNY", "ark": "CNY", "jiekou": "USD"}


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def generate(
    seed: int, accounts: int, usage_events: int, prefix: str = "acct", max_gap_s: int = 900
) -> list[bytes]:
    return list(stream_events(seed, accounts, usage_events, prefix, max_gap_s))


def stream_events(
    seed: int,
    accounts: int,
    usage_events: int | None = None,
    prefix: str = "acct",
    max_gap_s: int = 900,
) -> Iterator[bytes]:
    """The lines of ``generate``, one at a time; without ``usage_events``, without end (a soak
    takes as many as its run needs). A prefix of the endless stream is the finite one."""
    rng = random.Random(seed)
    profiles = list(TOKEN_MODELS)
    names = [f"{prefix}-{i:05d}" for i in range(accounts)]
    profile_of = {n: profiles[i % len(profiles)] for i, n in enumerate(names)}
    clock = {n: START for n in names}
    seq = 0

    def next_id(kind: str) -> str:
        nonlocal seq
        seq += 1
        return f"{prefix}-{kind}-{seq:08d}"

    for n in names:
        p = profile_of[n]
        yield _line(
            {
                "kind": "account",
                "event_id": next_id("open"),
                "account_id": n,
                "main_account_id": n,
                "event_time": iso(clock[n]),
                "type": "account_opened",
                "profile": p,
                "currency": CURRENCY[p],
                "post_paid": rng.random() < 0.6,
                "amount": str(rng.choice([0, 1, 5, 20, 100])),
                "balance_threshold": "2",
            }
        )
        if p == "coze-pro" and rng.random() < 0.5:
            yield _line(
                {
                    "kind": "account",
                    "event_id": next_id("pack"),
                    "account_id": n,
                    "main_account_id": n,
                    "event_time": iso(clock[n]),
                    "type": "pack_purchased",
                    "pack_kind": "coze_unified",
                    "pack_id": f"{n}-pack",
                    "amount": str(rng.choice([500, 2000])),
                    "expires_at": iso(START + timedelta(days=60)),
                }
            )
        if p == "jiekou" and rng.random() < 0.5:
            yield _line(
                {
                    "kind": "account",
                    "event_id": next_id("voucher"),
                    "account_id": n,
                    "main_account_id": n,
                    "event_time": iso(clock[n]),
                    "type": "voucher_granted",
                    "voucher_id": f"{n}-v",
                    "amount": "0.5",
                    "expires_at": iso(START + timedelta(days=30)),
                }
            )
    for _ in range(usage_events) if usage_events is not None else itertools.count():
        n = rng.choice(names)
        p = profile_of[n]
        clock[n] += timedelta(seconds=rng.randint(1, max_gap_s))
        t = iso(clock[n])
        if rng.random() < 0.02:
            yield _line(
                {
                    "kind": "account",
                    "event_id": next_id("topup"),
                    "account_id": n,
                    "main_account_id": n,
                    "event_time": t,
                    "type": "top_up",
                    "amount": str(rng.choice([1, 10, 50])),
                }
            )
            continue
        base: dict[str, object] = {
            "kind": "usage",
            "event_id": next_id("u"),
            "trace_id": f"tr-{seq}",
            "account_id": n,
            "main_account_id": n,
            "event_time": t,
        }
        units = UNIT_ITEMS[p]
        if units and rng.random() < 0.3:
            item, model, variant, qty = rng.choice(units)
            base.update(item=item, model=model, variant=variant, quantity=qty)
            if item == "3d":  # a 3D call carries the credits it consumed (HY-3D-Express: 15 to 25)
                base["credits"] = str(rng.randint(15, 25))
        else:
            inp = rng.randint(100, 30_000)
            out_tokens = rng.randint(10, 4_000)
            cached = rng.randint(0, inp // 2) if rng.random() < 0.4 else 0
            reasoning = rng.randint(0, out_tokens) if rng.random() < 0.2 else 0
            base.update(
                item="tokens",
                model=rng.choice(TOKEN_MODELS[p]),
                input_tokens=inp,
                cache_hit_tokens=cached,
                output_tokens=out_tokens,
                reasoning_tokens=reasoning,
            )
        yield _line(base)


def _line(event: dict) -> bytes:
    return orjson.dumps({k: v for k, v in event.items() if v is not None})


def malformed(seed: int, count: int, known_account: str) -> list[bytes]:
    """Lines that must each become a dead letter with a specific reason."""
    rng = random.Random(seed)
    kinds = [
        "not_json",
        "unknown_model",
        "negative",
        "unknown_account",
        "wrong_type",
        "huge_string",
    ]
    out = []
    for i in range(count):
        k = kinds[i % len(kinds)]
        base = {
            "kind": "usage",
            "event_id": f"bad-{seed}-{i}",
            "account_id": known_account,
            "main_account_id": known_account,
            "event_time": iso(START + timedelta(seconds=i)),
            "item": "tokens",
            "model": "kimi-k2.5",
            "input_tokens": 10,
        }
        if k == "not_json":
            out.append(
                bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 40))).replace(b"\n", b" ")
                or b"x"
            )
            continue
        if k == "unknown_model":
            base["model"] = f"no-such-model-{i}"
        elif k == "negative":
            base["input_tokens"] = -rng.randint(1, 1000)
        elif k == "unknown_account":
            base["main_account_id"] = base["account_id"] = f"ghost-{i}"
        elif k == "wrong_type":
            base["input_tokens"] = "many"
        elif k == "huge_string":
            base["model"] = "m" * 5000
        out.append(orjson.dumps(base))
    return out


def heavy_account(
    main: str, requests: int, *, span_s: int = 3600, seed: int = 1, start: datetime = START
) -> list[bytes]:
    """One post-paid TokenHub account opened at ``start`` and ``requests`` token requests spread
    evenly over ``span_s`` seconds after it, with UUID event ids: the busiest customer's hour (or
    day), for the bounded-record tests and the heavy-account bench."""
    rng = random.Random(seed)
    opened = {
        "kind": "account",
        "event_id": f"{main}-open",
        "account_id": main,
        "main_account_id": main,
        "event_time": iso(start),
        "type": "account_opened",
        "profile": "tokenhub",
        "post_paid": True,
        "amount": "100",
    }
    lines = [orjson.dumps(opened)]
    step_ms = span_s * 1000 / max(requests, 1)
    for i in range(requests):
        t = start + timedelta(milliseconds=1 + int(i * step_ms))
        ev = {
            "kind": "usage",
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "trace_id": f"{main}-t{i}",
            "account_id": main,
            "main_account_id": main,
            "event_time": iso(t),
            "item": "tokens",
            "model": "kimi-k2.5",
            "input_tokens": 800 + rng.randrange(400),
            "cache_hit_tokens": 100,
            "output_tokens": 50 + rng.randrange(100),
        }
        lines.append(orjson.dumps(ev))
    return lines
