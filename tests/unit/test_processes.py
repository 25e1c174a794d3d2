"""Processes (issue 14.10): children end with their parent; bad options and a busy METRICS_PORT are
one clear error."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from typer.testing import CliRunner

from streams.cli.main import app

PARENT = textwrap.dedent("""
    import subprocess, sys, time
    from streams.local.lifecycle import child_preexec, stop_on_signals
    stop_on_signals()
    child = subprocess.Popen(["sleep", "120"], preexec_fn=child_preexec(), start_new_session=True)
    print(child.pid, flush=True)
    try:
        time.sleep(120)
    finally:
        child.terminate()
        child.wait()
""")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_a_child_ends_with_its_parent(sig):
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.send_signal(sig)
    parent.wait(timeout=20)
    if sig != signal.SIGKILL:
        assert parent.returncode == 128 + sig  # SystemExit: the finally block ran
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = _alive(child)
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive, f"child {child} outlived its parent ({sig.name})"


@pytest.mark.parametrize(
    "args",
    [
        ["bench", "--events", "-5"],
        ["bench", "--accounts", "0"],
        ["demo", "--batch", "0"],
        ["run", "--workers", "0"],
        ["run", "--duration", "-1"],
    ],
)
def test_bad_options_are_one_clear_error(args):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    text = result.output
    assert "internal error" not in text and "Traceback" not in text


@pytest.mark.parametrize("command", ["sink", "worker"])
def test_a_busy_metrics_port_is_one_clear_error(monkeypatch, command):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.setenv("METRICS_PORT", str(port))
        monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
        result = CliRunner().invoke(app, [command])
    assert result.exit_code == 2
    assert f"METRICS_PORT {port}" in result.output and "already in use" in result.output
