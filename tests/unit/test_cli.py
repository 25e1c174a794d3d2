"""The CLI as a user runs it: subprocess, exit codes, output."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo.jsonl"


def rating(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "streams.cli.main", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


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
    r = rating("quote", "-p", "coze-pro", "-m", "Doubao-1.5-pro-256k", "--input", "10000", "--output", "2000", "--at", "2026-05-01T00:00:00Z")
    assert r.returncode == 0, r.stderr
    assert "0.068000 CNY" in r.stdout and "= 68 points" in r.stdout


def test_errors_are_one_line_without_traceback():
    r = rating("quote", "-p", "tokenhub", "-m", "HY 2.0 Think", "--input", "200000", "--at", "2026-05-01T00:00:00Z")
    assert r.returncode == 2
    assert "above_top_tier" in r.stderr and "Traceback" not in r.stderr + r.stdout
    r = rating("simulate", "no-such-file.jsonl")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "no-such-file.jsonl" in r.stderr
    r = rating("worker")
    assert r.returncode == 2 and "KAFKA_BOOTSTRAP_SERVERS" in r.stderr


def test_help_everywhere():
    for cmd in ("simulate", "quote", "demo", "worker", "sink", "topics", "migrate", "replay", "run", "bench",
                "account", "account show", "dlq", "dlq list", "dlq explain", "dlq redrive"):
        r = rating(*cmd.split(), "--help")
        assert r.returncode == 0 and "Usage" in r.stdout, cmd


def test_cluster_commands_say_what_is_missing():
    for cmd in ("account show x", "dlq list", "dlq redrive --reason unknown_model", "topics", "replay examples/demo.jsonl"):
        r = rating(*cmd.split())
        assert r.returncode == 2 and "KAFKA_BOOTSTRAP_SERVERS" in r.stderr and "Traceback" not in r.stderr, cmd


def test_bad_configuration_is_one_line():
    import os

    r = subprocess.run([sys.executable, "-m", "streams.cli.main", "migrate"], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "METRICS_PORT": "http"}, timeout=60)
    assert r.returncode == 2 and "METRICS_PORT" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_log_lines_about_an_event_carry_its_ids_and_never_a_secret():
    import io
    import logging

    from streams.config import Settings
    from streams.observability.logs import JsonFormatter, RedactingFormatter

    s = Settings.from_env({"KAFKA_SASL_PASSWORD": "pa55-w0rd", "CLICKHOUSE_URL": "https://u:p%40ss@ch:8443/db"})
    for formatter in (JsonFormatter(secrets=s.secrets()), RedactingFormatter("%(message)s", secrets=s.secrets())):
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        logger = logging.getLogger(f"test.{type(formatter).__name__}")
        logger.addHandler(handler)
        logger.propagate = False
        logger.warning("login pa55-w0rd as u:p@ss failed", extra={"event_id": "ev-1", "trace_id": "tr-1"})
        out = stream.getvalue()
        assert "ev-1" in out and "tr-1" in out
        assert "pa55-w0rd" not in out and "p@ss" not in out and "p%40ss" not in out


def test_migrate_applies_each_file_once(tmp_path):
    import os

    env = {**os.environ, "CHDB_PATH": str(tmp_path / "chdb")}
    run = lambda: subprocess.run([sys.executable, "-m", "streams.cli.main", "migrate"], capture_output=True, text=True,  # noqa: E731
                                 cwd=ROOT, env=env, timeout=120)
    first = run()
    assert first.returncode == 0, first.stderr
    files = sorted(p.name for p in (ROOT / "infra" / "clickhouse").glob("*.sql"))
    assert all(name in first.stdout for name in files)
    second = run()
    assert second.returncode == 0 and "nothing (up to date)" in second.stdout
