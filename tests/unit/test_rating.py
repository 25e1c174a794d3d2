from decimal import Decimal
from typing import Any

import pytest

from streams.ingest.events import Rejected, parse_usage
from streams.rating.profiles import Profiles
from streams.rating.rate import rate

P = Profiles()


def rated(profile, at="2026-05-01T10:00:00+08:00", **kw):
    raw = {"event_id": "e", "account_id": "a", "main_account_id": "a", "event_time": at}
    raw.update(kw)
    return rate(P[profile], parse_usage(raw))


# --------------------------------------------------------------- the worked examples of issue 4


def test_kimi_with_cache_hits():
    r = rated(
        "tokenhub",
        item="tokens",
        model="kimi-k2.5",
        input_tokens=200_000,
        cache_hit_tokens=50_000,
        output_tokens=3_000,
    )
    assert [(ln.component, ln.amount) for ln in r.lines] == [
        ("cache_hit", Decimal("0.035")),
        ("input", Decimal("0.6")),
        ("output", Decimal("0.063")),
    ]
    assert r.amount == Decimal("0.698")


def test_hy_instruct_second_tier():
    r = rated(
        "tokenhub", item="tokens", model="HY 2.0 Instruct", input_tokens=40_000, output_tokens=1_000
    )
    assert [ln.amount for ln in r.lines] == [Decimal("0.1802"), Decimal("0.01113")]
    assert r.amount == Decimal("0.19133")


def test_coze_doubao_256k_in_points():
    r = rated(
        "coze-pro",
        item="tokens",
        model="Doubao-1.5-pro-256k",
        input_tokens=10_000,
        output_tokens=2_000,
    )
    assert r.amount == Decimal("0.068")
    assert P["coze-pro"].to_price_unit(r.amount) == 68


# --------------------------------------------------------------- one table-driven case per item
# kind

CASES: list[tuple[str, dict[str, Any], str]] = [
    ("coze-pro", dict(item="agent_call", quantity="3"), "0.006"),
    ("coze-pro", dict(item="tts", quantity="100"), "0.05"),
    ("coze-pro", dict(item="asr_streaming", quantity="2"), "0.15"),
    ("coze-pro", dict(item="asr_file", quantity="10"), "0.39"),
    ("coze-pro", dict(item="rtc_audio", variant="mini_program", quantity="10"), "0.09"),
    ("coze-pro", dict(item="rtc_audio", variant="voice_call", quantity="10"), "0.07"),
    ("coze-pro", dict(item="rtc_audio", variant="conversational_ai", quantity="1.5"), "0.0135"),
    ("coze-pro", dict(item="rtc_video", variant="4k", quantity="2"), "0.504"),
    ("coze-pro", dict(item="rtc_video", variant="360p", quantity="60"), "0.84"),
    # (12.5-10) GB x 2 h x 1.5 points
    (
        "coze-pro",
        dict(item="kb_storage", quantity="12.5", hours="2"),
        "0.0075",
    ),
    ("coze-pro", dict(item="kb_storage", quantity="9", hours="24"), "0"),  # under the free 10 GB
    (
        "coze-pro",
        dict(item="tokens", model="DeepSeek-R1", input_tokens=1000, output_tokens=1000),
        "0.02",
    ),
    (
        "coze-pro",
        dict(item="tokens", model="ark/doubao-seed-1.6", input_tokens=1000, output_tokens=1000),
        "0",
    ),
    ("tokenhub", dict(item="image", model="HY-Image-V3.0", quantity="4"), "0.8"),
    ("tokenhub", dict(item="image", model="HY-Image-Lite", quantity="3", status="failed"), "0"),
    # 1.5 credits x 1.2
    (
        "tokenhub",
        dict(item="video", model="HY-Video-1.5", quantity="1"),
        "1.8",
    ),
    ("tokenhub", dict(item="video", model="YT-Video-2.0", variant="480p", quantity="1"), "2.4"),
    (
        "tokenhub",
        dict(item="video", model="YT-Video-HumanActor", variant="720p", quantity="10"),
        "12",
    ),
    (
        "tokenhub",
        dict(item="video", model="YT-Video-2.0", variant="1080p", quantity="1", status="failed"),
        "0",
    ),
    # 15 x 0.12
    (
        "tokenhub",
        dict(item="3d", model="HY-3D-Express", variant="text_to_3d", quantity="1", credits="15"),
        "1.8",
    ),
    (
        "tokenhub",
        dict(
            item="tokens",
            model="Deepseek-v3.2",
            input_tokens=1000,
            cache_hit_tokens=400,
            output_tokens=10,
        ),
        "0.00203",
    ),
    (
        "tokenhub",
        dict(
            item="tokens",
            model="GLM-5",
            input_tokens=200_000,
            cache_hit_tokens=100_000,
            output_tokens=1000,
        ),
        "0.772",
    ),
    (
        "jiekou",
        dict(item="tokens", model="claude-opus-4.5", input_tokens=1000, cache_write_tokens=1000),
        "0.00625",
    ),
    (
        "jiekou",
        dict(
            item="tokens",
            model="deepseek-r1",
            input_tokens=0,
            output_tokens=1000,
            reasoning_tokens=600,
        ),
        "0.00219",
    ),
    (
        "jiekou",
        dict(item="embedding", model="text-embedding-3-small", input_tokens=1_000_000),
        "0.02",
    ),
    ("jiekou", dict(item="rerank", model="bge-reranker-v2-m3", input_tokens=500_000), "0.005"),
    ("jiekou", dict(item="media_call", model="kling-v2", variant="video", quantity="2"), "0.56"),
    (
        "ark",
        dict(item="tokens", model="doubao-seed-1.6", input_tokens=100_000, output_tokens=1000),
        "0.136",
    ),
]


@pytest.mark.parametrize(
    "profile,kw,expected", CASES, ids=[f"{c[0]}-{c[1]['item']}-{i}" for i, c in enumerate(CASES)]
)
def test_item_kinds(profile, kw, expected):
    r = rated(profile, **kw)
    assert r.amount == Decimal(expected)
    assert r.amount == sum((ln.amount for ln in r.lines), Decimal(0))


def test_ark_model_in_coze_is_billed_elsewhere():
    r = rated("coze-pro", item="tokens", model="ark/anything", input_tokens=10, output_tokens=10)
    assert r.billed_elsewhere and r.amount == 0 and r.lines == ()


def test_cache_hit_without_price_is_billed_as_input():
    with_cache = rated(
        "tokenhub", item="tokens", model="Hunyuan-role", input_tokens=1000, cache_hit_tokens=1000
    )
    plain = rated("tokenhub", item="tokens", model="Hunyuan-role", input_tokens=1000)
    assert with_cache.amount == plain.amount == Decimal("0.0024")


def test_tier_boundary():
    at = rated("tokenhub", item="tokens", model="HY 2.0 Instruct", input_tokens=32_000)
    above = rated("tokenhub", item="tokens", model="HY 2.0 Instruct", input_tokens=32_001)
    assert at.lines[0].unit_price == Decimal("3.18") / 1_000_000
    assert above.lines[0].unit_price == Decimal("4.505") / 1_000_000


# --------------------------------------------------------------- specific rejections

REJECTIONS = [
    (dict(item="tokens", model="nope", input_tokens=1), "unknown_model"),
    (dict(item="image", model="kimi-k2.5", quantity="1"), "unknown_item"),
    (dict(item="tokens", model="HY 2.0 Think", input_tokens=128_001), "above_top_tier"),
    (dict(item="video", model="YT-Video-2.0", variant="4k", quantity="1"), "unknown_variant"),
    (dict(item="image", model="HY-Image-V3.0", quantity="1.5"), "invalid_quantity"),
    (
        dict(item="tokens", model="kimi-k2.5", input_tokens=10, cache_hit_tokens=11),
        "quantities_do_not_add_up",
    ),
    (
        dict(item="tokens", model="kimi-k2.5", output_tokens=1, reasoning_tokens=2),
        "quantities_do_not_add_up",
    ),
    (dict(item="image", model="HY-Image-V3.0"), "missing_quantity"),
    (dict(item="image", model="HY-Image-V3.0", quantity="-1"), "negative_quantity"),
    (dict(item="tokens", model="kimi-k2.5", input_tokens=-1), "negative_quantity"),
    (dict(item="spaceships", quantity="1"), "unknown_item"),
    (
        dict(item="tokens", model="kimi-k2.5", input_tokens=10, at="2020-01-01T00:00:00Z"),
        "no_price_in_force",
    ),
]


@pytest.mark.parametrize("kw,code", REJECTIONS, ids=[c for _, c in REJECTIONS])
def test_rejections_name_the_problem(kw, code):
    with pytest.raises(Rejected) as info:
        rated("tokenhub", **kw)
    assert info.value.code == code
    assert info.value.message


def test_above_top_tier_message_names_model_and_bounds():
    with pytest.raises(Rejected) as info:
        rated("tokenhub", item="tokens", model="HY 2.0 Think", input_tokens=200_000)
    assert "HY 2.0 Think" in info.value.message and "(32000, 128000]" in info.value.message
