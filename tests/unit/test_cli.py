"""The CLI as a user runs it: subprocess, exit codes, output."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo.jsonl"


def rating(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "streams.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_simulate_is_deterministic_byte_for_byte(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        r = rating("simulate", str(DEMO), "--out", str(out))
        assert r.returncode == 0, r.stderr
    for name in ("deductions.jsonl", "alerts.jsonl", "dead_letters.jsonl", "account_status.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert len((a / "deductions.jsonl").read_text().splitlines()) == 25
    assert "consumed 42 = rated 25 + applied 10 + rejected 6 + duplicates 1" in r.stdout


def test_quote_prints_the_breakdown():
    r = rating(
        "quote",
        "-p",
        "coze-pro",
        "-m",
        "Doubao-1.5-pro-256k",
        "--input",
        "10000",
        "--output",
        "2000",
        "--at",
        "2026-05-01T00:00:00Z",
    )
    assert r.returncode == 0, r.stderr
    assert "0.068000 CNY" in r.stdout and "= 68 points" in r.stdout


def test_errors_are_one_line_without_traceback():
    r = rating(
        "quote",
        "-p",
        "tokenhub",
        "-m",
        "HY 2.0 Think",
        "--input",
        "200000",
        "--at",
        "2026-05-01T00:00:00Z",
    )
    assert r.returncode == 2
    assert "above_top_tier" in r.stderr and "Traceback" not in r.stderr + r.stdout
    r = rating("simulate", "no-such-file.jsonl")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "no-such-file.jsonl" in r.stderr
    r = rating("worker")
    assert r.returncode == 2 and "KAFKA_BOOTSTRAP_SERVERS" in r.stderr


def test_help_everywhere():
    for cmd in (
        "simulate",
        "quote",
        "demo",
        "worker",
        "sink",
        "topics",
        "migrate",
        "replay",
        "run",
        "bench",
        "account",
        "account show",
        "dlq",
        "dlq list",
        "dlq explain",
        "dlq redrive",
    ):
        r = rating(*cmd.split(), "--help")
        assert r.returncode == 0 and "Usage" in r.stdout, cmd


def test_cluster_commands_say_what_is_missing():
    for cmd in (
        "account show x",
        "dlq list",
        "dlq redrive --reason unknown_model",
        "topics",
        "replay examples/demo.jsonl",
    ):
        r = rating(*cmd.split())
        assert (
            r.returncode == 2
            and "KAFKA_BOOTSTRAP_SERVERS" in r.stderr
            and "Traceback" not in r.stderr
        ), cmd


def test_bad_configuration_is_one_line():
    import os

    r = subprocess.run(
        [sys.executable, "-m", "streams.cli.main", "migrate"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "METRICS_PORT": "http"},
        timeout=60,
    )
    assert (
        r.returncode == 2 and "METRICS_PORT" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    )


def test_log_lines_about_an_event_carry_its_ids_and_never_a_secret():
    import io
    import logging

    from streams.config import Settings
    from streams.observability.logs import JsonFormatter, RedactingFormatter

    s = Settings.from_env(
        {"KAFKA_SASL_PASSWORD": "pa55-w0rd", "CLICKHOUSE_URL": "https://u:p%40ss@ch:8443/db"}
    )
    for formatter in (
        JsonFormatter(secrets=s.secrets()),
        RedactingFormatter("%(message)s", secrets=s.secrets()),
    ):
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        logger = logging.getLogger(f"test.{type(formatter).__name__}")
        logger.addHandler(handler)
        logger.propagate = False
        logger.warning(
            "login pa55-w0rd as u:p@ss failed", extra={"event_id": "ev-1", "trace_id": "tr-1"}
        )
        out = stream.getvalue()
        assert "ev-1" in out and "tr-1" in out
        assert "pa55-w0rd" not in out and "p@ss" not in out and "p%40ss" not in out


def test_migrate_applies_each_file_once(tmp_path):
    import os

    env = {**os.environ, "CHDB_PATH": str(tmp_path / "chdb")}

    def run():
        return subprocess.run(
            [sys.executable, "-m", "streams.cli.main", "migrate"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            timeout=120,
        )

    first = run()
    assert first.returncode == 0, first.stderr
    files = sorted(p.name for p in (ROOT / "infra" / "clickhouse").glob("*.sql"))
    assert all(name in first.stdout for name in files)
    second = run()
    assert second.returncode == 0 and "nothing (up to date)" in second.stdout


# ---------------------------------------------------------------- issue 17: the operator's tools
# (CliRunner)

import json  # noqa: E402
import os  # noqa: E402
from decimal import Decimal  # noqa: E402

import pytest  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from streams.cli.main import EXAMPLES, app  # noqa: E402

runner = CliRunner()


def invoke(*args, input=None, env=None):
    result = runner.invoke(app, list(args), input=input, env=env)
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    return result


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# 1. profiles and names
def test_profiles_json_lists_versions_with_effective_dates_items_models_and_bounds():
    r = invoke("profiles", "--json")
    assert r.exit_code == 0, r.output
    rows = json_lines(r.stdout)
    assert [p["profile"] for p in rows] == ["ark", "coze-pro", "jiekou", "tokenhub"]
    th = rows[3]
    assert th["versions"][0] == {
        "version": "2026-04-03",
        "effective_from": "2026-04-03T00:00:00+08:00",
        "rows": th["versions"][0]["rows"],
    }
    assert "tokens" in th["items"] and any(r["model"] == "kimi-k2.5" for r in th["rows"])
    assert (
        th["bounds"]["max_tokens_per_request"] == 4_000_000 and th["bounds"]["max_hours"] == "744"
    )
    assert invoke("profiles", "tokenhub").exit_code == 0


@pytest.mark.parametrize(
    "args,hint",
    [
        (("-p", "tokenhb"), "did you mean 'tokenhub'?"),
        (("-p", "tokenhub", "-m", "kimi-k25", "--input", "10"), "did you mean 'kimi-k2.5'?"),
        (("-p", "tokenhub", "--item", "tokn", "-m", "x"), "did you mean 'tokens'?"),
        (
            ("-p", "coze-pro", "--item", "rtc_video", "--variant", "72p", "-q", "1"),
            "did you mean '720p'?",
        ),
    ],
)
def test_quote_suggests_the_nearest_name_on_a_typo(args, hint):
    r = invoke("quote", *args, "--at", "2026-05-01T00:00:00Z")
    assert r.exit_code == 2 and hint in r.stderr, r.stderr
    assert invoke("profiles", "tokenhb").stderr.count("did you mean 'tokenhub'?") == 1


# 2. JSON Lines, standard input, COLUMNS
def test_simulate_json_reads_standard_input():
    r = invoke(
        "simulate", "-", "--out", "/tmp/rating-cli-test-sim", "--json", input=DEMO.read_text()
    )
    assert r.exit_code == 0, r.output
    rows = json_lines(r.stdout)
    counts = rows[-1]
    assert counts["kind"] == "counts" and (
        counts["consumed"],
        counts["rated"],
        counts["rejected"],
    ) == (42, 25, 6)
    accounts = [x for x in rows if x["kind"] == "account"]
    assert accounts and all(Decimal(x["rated"]) >= 0 and "E" not in x["rated"] for x in accounts)


def test_dlq_list_json_is_one_object_per_letter(monkeypatch):
    from streams.cli import dlq

    letters = [
        dlq.Letter(
            {
                "dead_letter_id": f"d{i}",
                "reason_code": "unknown_model",
                "source_topic": "billing.events",
                "source_partition": 0,
                "source_offset": i,
                "event_id": f"e{i}",
                "main_account_id": "a",
                "reason": "no price",
                "payload": b"\x00\x01",
            },
            i,
        )
        for i in range(3)
    ]

    async def fake_letters(s):
        return letters

    async def fake_redriven(s):
        return {letters[1].marker}

    monkeypatch.setattr(dlq, "read_letters", fake_letters)
    monkeypatch.setattr(dlq, "redriven_markers", fake_redriven)
    r = invoke("dlq", "list", "--json", env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert r.exit_code == 0, r.output
    rows = json_lines(r.stdout)
    assert [x["dead_letter_id"] for x in rows] == ["d0", "d1", "d2"] and [
        x["redriven"] for x in rows
    ] == [False, True, False]
    assert rows[0]["payload"] == "AAE="  # bytes as base64


def test_json_lines_write_decimals_exact_and_without_exponent():
    from streams.cli.common import json_line

    assert json.loads(json_line({"a": Decimal("1E+2"), "b": Decimal("1.5E-9")})) == {
        "a": "100",
        "b": "0.0000000015",
    }


def test_columns_is_respected_when_output_is_not_a_terminal():
    from streams.cli.common import console_width

    assert console_width({"COLUMNS": "300"}, isatty=False) == 300
    assert (
        console_width({}, isatty=False) == 160
        and console_width({"COLUMNS": "x"}, isatty=False) == 160
    )
    assert console_width({"COLUMNS": "300"}, isatty=True) is None  # a terminal sizes itself
    r = subprocess.run(
        [sys.executable, "-m", "streams.cli.main", "profiles", "jiekou"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "60"},
        timeout=60,
    )
    assert r.returncode == 0 and max(len(ln) for ln in r.stdout.splitlines()) <= 60


# 3. the run-file of an embedded `rating run`
def test_run_file_is_found_by_clients_and_ignored_once_its_process_is_gone(tmp_path):
    from streams.cli.runfile import (
        attached_settings,
        read_run_file,
        remove_run_file,
        write_run_file,
    )
    from streams.config import Settings

    path = tmp_path / "run.json"
    run = Settings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:40404",
            "CHDB_PATH": str(tmp_path / "chdb"),
            "KAFKA_PARTITIONS": "6",
        }
    )
    write_run_file(run, path)
    assert read_run_file(path)["pid"] == os.getpid()
    s, record = attached_settings({}, path)
    assert record and s.kafka_bootstrap_servers == "127.0.0.1:40404" and s.kafka_partitions == 6
    assert s.chdb_path == (tmp_path / "chdb").resolve()
    # the environment wins
    s, record = attached_settings({"KAFKA_BOOTSTRAP_SERVERS": "k:9092"}, path)
    assert record is None and s.kafka_bootstrap_servers == "k:9092"
    # never a secret
    assert "PASSWORD" not in path.read_text() and "CLICKHOUSE_URL" not in path.read_text()
    remove_run_file(path)
    assert not path.exists()
    path.write_text(
        json.dumps({"pid": 2**22 + 12345, "settings": {"KAFKA_BOOTSTRAP_SERVERS": "x:1"}})
    )
    assert read_run_file(path) is None and attached_settings({}, path)[1] is None  # a SIGKILLed run


def test_a_locked_chdb_is_one_clear_line_not_a_traceback(monkeypatch, tmp_path):
    from clickhouse_connect.driver.exceptions import ProgrammingError

    import streams.sink.clickhouse as ch

    def locked(settings):
        raise ProgrammingError(
            "Unable to open the chdb engine at '/x': Failed to create connection"
        )

    monkeypatch.setattr(ch, "connect", locked)
    r = invoke("trace", "some-id", env={"CHDB_PATH": str(tmp_path / "chdb")})
    assert r.exit_code == 2 and "admits one process" in r.stderr and "Traceback" not in r.output


# 4. the demo never writes to an external ClickHouse
def test_demo_uses_its_own_chdb_even_with_clickhouse_url_in_the_environment(monkeypatch, tmp_path):
    from streams.cli.demo import demo_env
    from streams.local.pipeline import LocalPipeline

    monkeypatch.setenv("CLICKHOUSE_URL", "http://finance@prod-clickhouse:8123/billing")
    monkeypatch.setenv("CLICKHOUSE_PASSWORD", "s3cret")
    settings = LocalPipeline(tmp_path, env_overrides=demo_env()).start_broker(
        bootstrap="127.0.0.1:1"
    )
    assert settings.embedded_clickhouse and settings.chdb_path == tmp_path / "chdb"
    assert settings.clickhouse_url == "" and settings.clickhouse_password == ""


# 6. money one way, totals per currency
def test_amounts_are_rounded_for_presentation_and_never_in_exponent_form():
    from streams.cli.common import amount, exact

    assert amount(Decimal("1E+2")) == "100.000000" and amount(Decimal("1.5E-9")) == "0.000000"
    # half-even
    assert amount(Decimal("0.0000005")) == "0.000000" and amount(Decimal("0.0000015")) == "0.000002"
    assert exact(Decimal("1.5E-9")) == "0.0000000015" and exact(Decimal("1E+2")) == "100"


def test_demo_totals_are_per_currency():
    from streams.cli.demo import simulated_totals
    from streams.simulate import run_file

    totals = simulated_totals(run_file(DEMO))
    assert set(totals) == {"CNY", "USD"}  # the demo has both: never added together
    assert all(isinstance(v, Decimal) for t in totals.values() for v in t)


def test_outputs_show_no_exponent():
    for args in (
        (
            "quote",
            "-p",
            "tokenhub",
            "-m",
            "kimi-k2.5",
            "--input",
            "1",
            "--at",
            "2026-05-01T00:00:00Z",
        ),
        ("simulate", str(DEMO), "--out", "/tmp/rating-cli-test-sim2"),
        ("profiles",),
    ):
        r = invoke(*args)
        assert r.exit_code == 0 and not re.search(r"\d E[+-]?\d|\dE[+-]\d", r.stdout), r.stdout


# 7. help
def test_every_subcommand_has_an_example_and_no_bool_value():
    commands = [*EXAMPLES]
    assert {"profiles", "dlq list", "account show", "rerate", "trace"} <= set(commands)
    for cmd in [*commands, "dlq", "account"]:
        r = invoke(*cmd.split(), "--help", env={"COLUMNS": "200"})
        assert r.exit_code == 0 and "Usage" in r.stdout, cmd
        assert "<bool>" not in r.stdout, cmd
        if cmd in EXAMPLES:
            assert "Example: " in r.stdout and "rating " in r.stdout.split("Example: ")[1], cmd
    registered = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}
    registered |= {
        f"{g.name} {c.name or c.callback.__name__}"
        for g in app.registered_groups
        for c in g.typer_instance.registered_commands
    }
    assert registered == set(EXAMPLES)  # a new subcommand needs its example


# 8. user errors: a message and an exit code, never a traceback
@pytest.mark.parametrize(
    "args,fragment",
    [
        (("simulate", "no-such.jsonl"), "no-such.jsonl"),
        (("simulate", str(DEMO), "--until", "tomorrow"), "--until"),
        (("quote", "-p", "tokenhub", "-m", "kimi-k2.5", "--at", "yesterday"), "event_time"),
        (
            (
                "rerate",
                "-p",
                "jiekou",
                "--prices",
                "2026-05-cut",
                "--from",
                "2026-05-01T00:00:00+08:00",
                "--to",
                "2026-05-02T00:00:00+08:00",
                "--input",
                str(DEMO),
            ),
            "no price version '2026-05-cut'",
        ),
        (
            (
                "rerate",
                "-p",
                "jiekou",
                "--prices",
                "x",
                "--from",
                "2026-05-02T00:00:00+08:00",
                "--to",
                "2026-05-01T00:00:00+08:00",
            ),
            "--to must be after --from",
        ),
        (("profiles", "nope"), "unknown profile"),
        (("demo", "missing.jsonl"), "missing.jsonl"),
    ],
)
def test_user_errors_are_a_message_and_exit_code(args, fragment):
    r = invoke(*args)
    assert r.exit_code == 2, r.output
    assert fragment in r.stderr and "Traceback" not in r.output
