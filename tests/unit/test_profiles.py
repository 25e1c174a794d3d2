import shutil
from decimal import Decimal
from pathlib import Path

import pytest

from streams.ingest.events import parse_usage
from streams.rating.profiles import PROFILES_DIR, ProfileError, Profiles, load_profile
from streams.rating.rate import rate


def copy_profile(tmp_path: Path, name: str) -> Path:
    dest = tmp_path / name
    shutil.copytree(PROFILES_DIR / name, dest)
    return dest


def test_shipped_profiles_load():
    assert Profiles().names() == ["ark", "coze-pro", "jiekou", "tokenhub"]


def test_yaml_numbers_are_exact_decimals():
    row = Profiles()["tokenhub"].versions[0].rows[("tokens", "HY 2.0 Think")][None]
    assert row.tiers[0].input == Decimal("3.975") and isinstance(row.tiers[0].input, Decimal)


def test_error_names_file_line_and_key(tmp_path):
    folder = copy_profile(tmp_path, "tokenhub")
    path = folder / "price_book.yaml"
    text = path.read_text().replace("output: 3}", "output: -3}")
    path.write_text(text)
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "output: -3" in ln)
    with pytest.raises(ProfileError) as info:
        load_profile(folder)
    message = str(info.value)
    assert f"price_book.yaml:{line}" in message
    assert "versions[0].rows[" in message and ".output" in message
    assert "greater than or equal to 0" in message


def test_unknown_key_is_an_error(tmp_path):
    folder = copy_profile(tmp_path, "coze-pro")
    path = folder / "policy.yaml"
    path.write_text(path.read_text().replace("  grace_days: 15", "  grace_dayz: 15"))
    with pytest.raises(
        ProfileError, match=r"policy.yaml:\d+ arrears.grace_dayz: Extra inputs are not permitted"
    ):
        load_profile(folder)


def test_not_yaml(tmp_path):
    folder = copy_profile(tmp_path, "jiekou")
    (folder / "price_book.yaml").write_text("profile: [unclosed\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(folder)


def test_trial_for_unpriced_model_is_an_error(tmp_path):
    folder = copy_profile(tmp_path, "tokenhub")
    path = folder / "policy.yaml"
    path.write_text(path.read_text().replace("models: [GLM-5]", "models: [GLM-6]"))
    with pytest.raises(ProfileError, match="GLM-6.*has no price row"):
        load_profile(folder)


def test_event_is_rated_with_the_version_in_force_at_its_event_time(tmp_path):
    folder = copy_profile(tmp_path, "tokenhub")
    path = folder / "price_book.yaml"
    path.write_text(
        path.read_text()
        + '  - version: "2026-06-01"\n'
        + '    effective_from: "2026-06-01T00:00:00+08:00"\n'
        + "    rows:\n"
        + "      - {item: tokens, model: kimi-k2.5, per_tokens: 1000000, input: 5, output: 25,\n"
        + "         cache_hit: 1}\n"
    )
    profile = load_profile(folder)

    def price(at):
        e = parse_usage(
            {
                "event_id": "e",
                "account_id": "a",
                "main_account_id": "a",
                "event_time": at,
                "item": "tokens",
                "model": "kimi-k2.5",
                "input_tokens": 1_000_000,
            }
        )
        return rate(profile, e)

    before, after = price("2026-05-31T23:59:59+08:00"), price("2026-06-01T00:00:00+08:00")
    assert (before.amount, before.price_version) == (Decimal(4), "tokenhub@2026-04-03")
    assert (after.amount, after.price_version) == (Decimal(5), "tokenhub@2026-06-01")
    # rows the new version does not restate are inherited
    other = parse_usage(
        {
            "event_id": "e",
            "account_id": "a",
            "main_account_id": "a",
            "event_time": "2026-07-01T00:00:00Z",
            "item": "image",
            "model": "HY-Image-V3.0",
            "quantity": "1",
        }
    )
    assert rate(profile, other).amount == Decimal("0.2")


def test_engine_reload_rates_later_events_with_the_new_version(tmp_path):
    from streams.engine import BillingEngine
    from streams.ingest.events import parse_json_event
    from tests.unit.helpers import account, usage

    root = tmp_path / "profiles"
    folder = root / "tokenhub"
    shutil.copytree(PROFILES_DIR / "tokenhub", folder)
    engine = BillingEngine(Profiles(root))
    state = engine.apply(
        None,
        parse_json_event(
            account("r", "account_opened", profile="tokenhub", post_paid=True, amount="100")
        ),
    ).state

    def charge(at):
        e = parse_json_event(
            usage("r", "tokens", model="Deepseek-r1-0528", input_tokens=1_000_000, t=at)
        )
        out = engine.apply(state, e)
        return Decimal(out.deduction.to_record()["rated_amount"]), out.deduction.to_record()[
            "price_version"
        ]

    assert charge("2026-06-02T00:00:00+08:00") == (Decimal(4), "tokenhub@2026-04-03")
    path = folder / "price_book.yaml"
    path.write_text(
        path.read_text()
        + '  - version: "2026-06-05"\n    effective_from: "2026-06-05T00:00:00+08:00"\n'
        "    rows:\n      - {item: tokens, model: Deepseek-r1-0528, per_tokens: 1000000, input: "
        "3, output: 12, cache_hit: 1}\n"
    )
    engine.reload(Profiles(root))
    # before its effective time
    assert charge("2026-06-04T23:00:00+08:00") == (
        Decimal(4),
        "tokenhub@2026-04-03",
    )
    assert charge("2026-06-05T00:00:00+08:00") == (Decimal(3), "tokenhub@2026-06-05")
