"""A price-book typo is refused at load with ``file:line key: problem`` (issue 14.7), offline and
on a worker's hot reload, never an internal error."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from streams.rating.profiles import PROFILES_DIR, ProfileError, Profiles

ROW = "{item: tokens, model: Deepseek-v3.2, per_tokens: 1000000, input: 2, output: 3}"


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "profiles"
    shutil.copytree(PROFILES_DIR, root)
    return root


def _line_of(path: Path, needle: str) -> int:
    return next(
        i for i, line in enumerate(path.read_text().splitlines(), start=1) if needle in line
    )


@pytest.mark.parametrize(
    "typo, problem",
    [
        (".nan", "finite"),
        (".NaN", "finite"),
        (".inf", "finite"),
        ("-.inf", "finite"),
        ("4e400", "out of range"),
        ("4.0e+400", "out of range"),
        ("1e-999999", "digits after the point"),
        ("0.0000000000001", "digits after the point"),
        ("1.2.3", "valid decimal"),
    ],
)
def test_an_invalid_number_is_refused_with_file_line_and_key(tmp_path, typo, problem):
    root = _copy(tmp_path)
    book = root / "tokenhub" / "price_book.yaml"
    book.write_text(book.read_text().replace(ROW, ROW.replace("input: 2", f"input: {typo}")))
    line = _line_of(book, "Deepseek-v3.2")
    with pytest.raises(ProfileError) as err:
        Profiles(root)
    message = str(err.value)
    assert message.startswith(f"{book}:{line} versions[0].rows[")
    assert "].input: " in message and problem in message


def test_a_policy_number_is_checked_too(tmp_path):
    root = _copy(tmp_path)
    policy = root / "ark" / "policy.yaml"
    policy.write_text(policy.read_text().replace("margin_fraction: 0.01", "margin_fraction: .nan"))
    with pytest.raises(
        ProfileError,
        match=(
            rf"{policy}:{_line_of(policy, 'margin_fraction')} safe_trial.margin_fraction: "
            rf".*finite"
        ),
    ):
        Profiles(root)


def test_non_utf8_bytes_are_refused_with_their_line(tmp_path):
    root = _copy(tmp_path)
    book = root / "jiekou" / "price_book.yaml"
    data = book.read_bytes().splitlines(keepends=True)
    data.insert(3, b"# caf\xe9 au lait\n")
    book.write_bytes(b"".join(data))
    with pytest.raises(ProfileError, match=rf"{book}:4: not UTF-8: byte 0xe9"):
        Profiles(root)


def test_offline_shows_the_refusal_not_an_internal_error(tmp_path):
    root = _copy(tmp_path)
    book = root / "tokenhub" / "price_book.yaml"
    book.write_text(book.read_text().replace(ROW, ROW.replace("input: 2", "input: .inf")))
    events = tmp_path / "e.jsonl"
    events.write_text("")
    rating = Path(sys.executable).with_name("rating")
    done = subprocess.run(
        [str(rating), "simulate", str(events), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env={"PROFILES_DIR": str(root), "PATH": "/usr/bin:/bin", "COLUMNS": "300"},
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "internal error" not in done.stderr
    assert f"price_book.yaml:{_line_of(book, 'Deepseek-v3.2')} versions[0].rows[" in done.stderr


def test_the_shipped_profiles_are_within_the_bounds():
    assert Profiles().names() == ["ark", "coze-pro", "jiekou", "tokenhub"]
