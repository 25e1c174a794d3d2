"""Structured logs: one JSON object per line, with secrets redacted from every message."""

from __future__ import annotations

import logging

import orjson


class RedactingFormatter(logging.Formatter):
    """The text format, with the same redaction as the JSON one."""

    def __init__(self, fmt: str, secrets: list[str] | None = None):
        super().__init__(fmt)
        self.secrets = [s for s in (secrets or []) if s]

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for secret in self.secrets:
            text = text.replace(secret, "***")
        ids = " ".join(
            f"{k}={getattr(record, k)}" for k in ("event_id", "trace_id") if getattr(record, k, "")
        )
        return f"{text} [{ids}]" if ids else text


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def handler_for(settings) -> logging.Handler:
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter(secrets=settings.secrets()))
    else:
        handler.setFormatter(RedactingFormatter(TEXT_FORMAT, secrets=settings.secrets()))
    return handler


def configure(settings) -> None:
    """Root logging for a long-running process: text or JSON, secrets redacted either way."""
    logging.basicConfig(level=settings.log_level, handlers=[handler_for(settings)], force=True)
    if settings.log_level != "DEBUG":  # group-membership chatter is noise to an operator
        logging.getLogger("aiokafka").setLevel(logging.WARNING)


def dict_config(settings) -> dict:
    """The same, as the ``logging_config`` faust's worker applies when it (re)configures logging."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"default": {"()": handler_for, "settings": settings}},
        "root": {"level": settings.log_level, "handlers": ["default"]},
    }


class JsonFormatter(logging.Formatter):
    def __init__(self, secrets: list[str] | None = None):
        super().__init__()
        self.secrets = [s for s in (secrets or []) if s]

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": self.redact(record.getMessage()),
        }
        for key in ("event_id", "trace_id", "main_account_id"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exception"] = self.redact(self.formatException(record.exc_info))
        return orjson.dumps(out).decode()
