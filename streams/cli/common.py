"""What every ``rating`` subcommand shares: consoles, settings, and errors as one clear line."""

from __future__ import annotations

import functools
import sys

import typer
from rich.console import Console

from streams.config import ConfigError, Settings


def console_width(environ, isatty: bool) -> int | None:
    """A terminal sizes itself (None); a pipe or file takes ``COLUMNS`` when it is a positive
    integer, else 160 columns, so that ``COLUMNS=300 rating dlq list > file`` keeps long ids whole.
    """
    columns = (environ.get("COLUMNS") or "").strip()
    if isatty:
        return None
    return int(columns) if columns.isdigit() and int(columns) > 0 else 160


def _console(stderr: bool) -> Console:
    import os

    stream = sys.stderr if stderr else sys.stdout
    # emoji=False: an id such as ":thumbs_up:" is shown as written, never as an emoji
    return Console(stderr=stderr, width=console_width(os.environ, stream.isatty()), emoji=False)


console = _console(stderr=False)
err = _console(stderr=True)


def amount(value) -> str:
    """A money amount as every command shows it: rounded half-even to 6 places (``present``, the
    presentation rounding of bills) and written out in full, never in exponent form (``1E+2``)."""
    from decimal import Decimal

    from streams.deduction.record import present

    return format(present(value if isinstance(value, Decimal) else Decimal(str(value))), "f")


def exact(value) -> str:
    """A unit price or quantity exactly as stored (no rounding: a per-token price of 0.0000015 must
    not show as 0.000002), without exponent or trailing zeros."""
    from decimal import Decimal

    from streams.deduction.record import money

    return money(value if isinstance(value, Decimal) else Decimal(str(value)))


def _json_default(value):
    import base64
    from datetime import date, datetime
    from decimal import Decimal

    if isinstance(value, Decimal):
        return exact(value)  # as a string, as the input format writes decimals: exact, no float
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode()
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    return str(value)


def json_line(record) -> str:
    import orjson

    return orjson.dumps(record, default=_json_default, option=orjson.OPT_NON_STR_KEYS).decode()


def emit_json_lines(records) -> None:
    """``--json``: one JSON object per line on stdout (JSON Lines, as ``kcat -J``), nothing else, so
    the output pipes into ``jq`` or a file. Decimals are exact strings."""
    for record in records:
        sys.stdout.write(json_line(record) + "\n")
    sys.stdout.flush()


def input_file(path, what: str = "input"):
    """``-`` is standard input (copied to a temporary file, as the readers take a path); any other
    path must be a file. Returns the path to read."""
    from pathlib import Path

    if str(path) == "-":
        import atexit
        import os
        import tempfile

        fd, name = tempfile.mkstemp(prefix="rating-stdin-", suffix=".jsonl")
        with os.fdopen(fd, "wb") as fh:
            fh.write(
                sys.stdin.buffer.read()
                if hasattr(sys.stdin, "buffer")
                else sys.stdin.read().encode()
            )

        def remove_copy() -> None:
            if os.path.exists(name):
                os.unlink(name)

        atexit.register(remove_copy)
        return Path(name)
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"{path} is not a file; pass a JSON Lines file of events (see examples/), or - for "
            "standard input"
        )
    return path


# Characters that must not reach a terminal raw: controls (ESC sequences, carriage returns, NUL),
# format characters (zero-width, bidirectional overrides), line and paragraph separators,
# surrogates, private use and unassigned code points. Shown as \xNN or \uNNNN instead.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def visible(value: object) -> str:
    """``value`` as text in which every control or invisible character is written as an escape."""
    import unicodedata

    text = "" if value is None else str(value)
    if text.isprintable() and text.isascii():
        return text
    out = []
    for ch in text:
        if ch == "\\" or unicodedata.category(ch) not in _HIDDEN_CATEGORIES:
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    return "".join(out)


def shown(value: object) -> str:
    """A value from the data (an id, a model, a reason) made safe to embed in Rich markup: its
    control characters visible, and ``[`` escaped so that ``[/x]`` or ``[bold red]`` is printed as
    written instead of being read as markup (which can crash the print or disguise the id)."""
    from rich.markup import escape

    return escape(visible(value))


class UserError(Exception):
    """Something the user can fix; printed as one line, exit code 2."""


def friendly(fn):
    """Known failures become one clear line with what to do, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from aiokafka.errors import KafkaError
        from clickhouse_connect.driver.exceptions import Error as ClickHouseError

        from streams.kafka_client import ReadStalled, TopicNotFound
        from streams.rating.profiles import ProfileError
        from streams.sink.clickhouse import MigrationsPending, SinkHalted

        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except (UserError, ConfigError, ProfileError) as exc:
            fail(str(exc))
        except (TopicNotFound, ReadStalled) as exc:
            fail(f"{exc}; check the cluster and KAFKA_TOPIC_PREFIX", code=3)
        except MigrationsPending as exc:
            fail(str(exc), code=3)
        except SinkHalted as exc:
            fail(f"sink stopped, nothing committed past the record: {exc}", code=3)
        except FileNotFoundError as exc:
            fail(f"no such file: {exc.filename}")
        except OSError as exc:
            import errno

            if exc.errno != errno.EADDRINUSE:
                raise
            fail(
                f"address already in use ({exc}); if it is METRICS_PORT, set it to a free port, "
                "or 0 for no endpoint"
            )
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
        except (KafkaError, ConnectionError) as exc:
            fail(
                f"cannot reach Kafka at {_bootstrap()}: {exc or type(exc).__name__}; check "
                "KAFKA_BOOTSTRAP_SERVERS "
                "and the KAFKA_SECURITY_* settings",
                code=3,
            )
        except ClickHouseError as exc:
            if chdb_locked(exc):
                fail(chdb_locked_message(settings()), code=3)
            fail(
                "ClickHouse failed: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; "
                "check CLICKHOUSE_URL and CLICKHOUSE_PASSWORD",
                code=3,
            )
        except Exception as exc:  # a bug: still one line, and the way to get the details
            if _debug():
                raise
            fail(
                f"internal error ({type(exc).__name__}: {exc}); run again with LOG_LEVEL=DEBUG "
                "for the traceback",
                code=1,
            )

    return wrapper


def _secrets() -> list[str]:
    try:
        return Settings.from_env().secrets()
    except ConfigError:
        return []


def redact(text: str) -> str:
    for secret in _secrets():
        text = text.replace(secret, "***")
    return text


def fail(message: str, code: int = 2):
    """One line on stderr, secrets redacted, and the exit code (2: usage/config, 3: a server, 1: a
    bug)."""
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(visible(redact(message)))}", highlight=False)
    raise typer.Exit(code) from None


def _bootstrap() -> str:
    import os

    return os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or "(embedded)"


def _debug() -> bool:
    import os

    return os.environ.get("LOG_LEVEL", "").upper() == "DEBUG"


def require_cluster(s: Settings, what: str) -> None:
    if s.embedded_broker:
        raise UserError(
            f"KAFKA_BOOTSTRAP_SERVERS is not set; {what} needs a running Kafka cluster "
            "(`rating run` starts an embedded one)"
        )


def port_in_use_message(host: str, port: int) -> str:
    return (
        f"METRICS_PORT {port} on {host} is already in use (another worker or sink on this host?); "
        "set METRICS_PORT to a free port, or 0 for no endpoint"
    )


def require_free_port(s: Settings) -> None:
    """A busy METRICS_PORT is one clear
    error before anything starts, not an internal error later."""
    import errno
    import socket

    if not s.metrics_port:
        return
    with socket.socket(socket.AF_INET6 if ":" in s.metrics_host else socket.AF_INET) as sock:
        # as the server binds: TIME_WAIT is no clash
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((s.metrics_host, s.metrics_port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(port_in_use_message(s.metrics_host, s.metrics_port)) from None
            raise UserError(
                f"METRICS_HOST {s.metrics_host!r}:{s.metrics_port} cannot be bound: "
                f"{exc.strerror}; "
                "check METRICS_HOST and METRICS_PORT"
            ) from None


def settings() -> Settings:
    return Settings.from_env()


def client_settings() -> Settings:
    """Settings of a command that reads a running pipeline (trace, rerate, account, dlq, topics):
    with no KAFKA_BOOTSTRAP_SERVERS, an embedded `rating run` alive in this folder is used."""
    from streams.cli.runfile import RUN_FILE, attached_settings

    s, record = attached_settings()
    if record is not None:
        err.print(
            f"[dim]using the embedded `rating run` (pid {record['pid']}) of {RUN_FILE}: "
            f"broker {visible(s.kafka_bootstrap_servers)}[/]",
            highlight=False,
        )
    return s


def setup_logging(s: Settings) -> None:
    from streams.observability.logs import configure

    configure(s)


def _profiles(s: Settings):
    from streams.rating.profiles import Profiles

    return Profiles(s.profiles_dir)


def hide_flag_types() -> None:
    """typer shows a ``<bool>`` type beside every on/off flag (``--json <bool>``), as if it took a
    value; a flag takes none, so its type column is left empty. Everything else is typer's own."""
    from typer.core import TyperOption

    if getattr(TyperOption, "_rating_flags_plain", False):
        return
    shown_type = TyperOption.display_type_rich

    def display_type_rich(self, ctx):
        return "" if self.is_flag else shown_type(self, ctx)

    # patching typer's class: mypy rejects assigning to a method and to an attribute it lacks
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]
    TyperOption._rating_flags_plain = True  # type: ignore[attr-defined]


def chdb_locked(exc: BaseException) -> bool:
    """chDB admits one process per database folder; a second one fails to open it."""
    return "Unable to open the chdb engine" in str(exc)


def open_clickhouse(s: Settings):
    """A ClickHouse client for a command, with a locked embedded chDB as one clear error."""
    from clickhouse_connect.driver.exceptions import Error as ClickHouseError

    from streams.sink.clickhouse import connect

    try:
        return connect(s)
    except ClickHouseError as exc:
        if s.embedded_clickhouse and chdb_locked(exc):
            raise UserError(chdb_locked_message(s)) from None
        raise


def chdb_locked_message(s: Settings) -> str:
    from streams.cli.runfile import read_run_file

    running = read_run_file()
    owner = (
        f"`rating run` (pid {running['pid']})"
        if running
        else "another process (a `rating run`, `demo` or sink)"
    )
    return (
        f"the embedded chDB at {s.chdb_path} is open in {owner}; chDB admits one process. Stop it "
        "first, "
        "or run the pipeline with CLICKHOUSE_URL set to a ClickHouse server, which any number of "
        "clients can query"
    )
