"""What every ``rating`` subcommand shares: consoles, settings, and errors as one clear line."""

from __future__ import annotations

import functools
import sys

import typer
from rich.console import Console

from streams.config import ConfigError, Settings

# emoji=False: an id such as ":thumbs_up:" is shown as written, never as an emoji
console = Console(width=None if sys.stdout.isatty() else 160, emoji=False)
err = Console(stderr=True, emoji=False)

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
        from streams.rating.profiles import ProfileError

        from aiokafka.errors import KafkaError
        from clickhouse_connect.driver.exceptions import Error as ClickHouseError

        from streams.kafka_client import ReadStalled, TopicNotFound
        from streams.sink.clickhouse import SinkHalted

        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except (UserError, ConfigError, ProfileError) as exc:
            fail(str(exc))
        except (TopicNotFound, ReadStalled) as exc:
            fail(f"{exc}; check the cluster and KAFKA_TOPIC_PREFIX", code=3)
        except SinkHalted as exc:
            fail(f"sink stopped, nothing committed past the record: {exc}", code=3)
        except FileNotFoundError as exc:
            fail(f"no such file: {exc.filename}")
        except OSError as exc:
            import errno

            if exc.errno != errno.EADDRINUSE:
                raise
            fail(f"address already in use ({exc}); if it is METRICS_PORT, set it to a free port, or 0 for no endpoint")
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
        except (KafkaError, ConnectionError) as exc:
            fail(f"cannot reach Kafka at {_bootstrap()}: {exc or type(exc).__name__}; check KAFKA_BOOTSTRAP_SERVERS "
                 "and the KAFKA_SECURITY_* settings", code=3)
        except ClickHouseError as exc:
            fail(f"ClickHouse failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; "
                 "check CLICKHOUSE_URL and CLICKHOUSE_PASSWORD", code=3)
        except Exception as exc:  # a bug: still one line, and the way to get the details
            if _debug():
                raise
            fail(f"internal error ({type(exc).__name__}: {exc}); run again with LOG_LEVEL=DEBUG for the traceback", code=1)

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
    """One line on stderr, secrets redacted, and the exit code (2: usage/config, 3: a server, 1: a bug)."""
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
        raise UserError(f"KAFKA_BOOTSTRAP_SERVERS is not set; {what} needs a running Kafka cluster "
                        "(`rating run` starts an embedded one)")


def port_in_use_message(host: str, port: int) -> str:
    return (f"METRICS_PORT {port} on {host} is already in use (another worker or sink on this host?); "
            "set METRICS_PORT to a free port, or 0 for no endpoint")


def require_free_port(s: Settings) -> None:
    """A busy METRICS_PORT is one clear error before anything starts, not an internal error later."""
    import errno
    import socket

    if not s.metrics_port:
        return
    with socket.socket(socket.AF_INET6 if ":" in s.metrics_host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no clash
        try:
            sock.bind((s.metrics_host, s.metrics_port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(port_in_use_message(s.metrics_host, s.metrics_port)) from None
            raise UserError(f"METRICS_HOST {s.metrics_host!r}:{s.metrics_port} cannot be bound: {exc.strerror}; "
                            "check METRICS_HOST and METRICS_PORT") from None


def settings() -> Settings:
    return Settings.from_env()


def setup_logging(s: Settings) -> None:
    from streams.observability.logs import configure

    configure(s)


def _profiles(s: Settings):
    from streams.rating.profiles import Profiles

    return Profiles(s.profiles_dir)


