"""Every README example runs as written and does what it says.

* each ```console block: every ``$ `` line runs in a scratch folder holding a copy of examples/,
  with ``rating`` being this checkout's CLI; it must exit 0 and print each line shown under it;
* the input-format example (marked with an ``example:`` comment) is simulated: every line accepted.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def console_examples() -> list[tuple[str, list[str]]]:
    out = []
    for block in re.findall(r"```console\n(.*?)```", README, flags=re.S):
        for chunk in re.split(r"^\$ ", block, flags=re.M)[1:]:
            command, *expected = chunk.rstrip("\n").split("\n")
            out.append((command, [e.strip() for e in expected if e.strip()]))
    return out


def test_the_readme_has_runnable_examples():
    commands = [c for c, _ in console_examples()]
    assert len(commands) >= 5
    assert any(c.startswith("rating rerate") for c in commands) and any(
        c.startswith("rating quote") for c in commands
    )


@pytest.mark.parametrize(
    "command,expected", console_examples(), ids=lambda v: v[:60] if isinstance(v, str) else ""
)
def test_console_example_runs_as_written(command, expected, tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    script = (
        f'set -o pipefail\nrating() {{ "{sys.executable}" -m streams.cli.main "$@"; }}\n{command}\n'
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "250"}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    r = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=180
    )
    assert r.returncode == 0, f"{command}\n{r.stderr}"
    assert "Traceback" not in r.stderr
    for line in expected:
        assert line in r.stdout, f"{command}: {line!r} not in\n{r.stdout}"


def test_the_input_format_example_is_accepted_line_by_line(tmp_path):
    marker = README.index("<!-- example: every line is accepted")
    block = re.search(r"```json\n(.*?)```", README[marker:], flags=re.S).group(1)
    lines = [ln for ln in block.splitlines() if ln.strip()]
    assert len(lines) >= 13
    (tmp_path / "input.jsonl").write_text(block)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.cli.main",
            "simulate",
            str(tmp_path / "input.jsonl"),
            "--out",
            str(tmp_path / "out"),
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    import json

    counts = json.loads(r.stdout.splitlines()[-1])
    assert counts["kind"] == "counts" and counts["consumed"] == len(lines)
    assert counts.get("rejected", 0) == 0 and counts.get("duplicate", 0) == 0, (
        tmp_path / "out" / "dead_letters.jsonl"
    ).read_text()
    assert counts.get("rated", 0) == sum('"kind":"usage"' in ln for ln in lines)
