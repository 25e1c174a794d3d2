"""Connection settings shared by every Kafka client (aiokafka producer, consumer, admin)."""

from __future__ import annotations

import ssl
from typing import Any

from streams.config import Settings


def client_kwargs(settings: Settings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = ssl.create_default_context(cafile=settings.kafka_ssl_cafile or None)
    if settings.kafka_security_protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = settings.kafka_sasl_mechanism or "SCRAM-SHA-512"
        kwargs["sasl_plain_username"] = settings.kafka_sasl_username
        kwargs["sasl_plain_password"] = settings.kafka_sasl_password
    return kwargs


def producer_kwargs(settings: Settings) -> dict[str, Any]:
    """Producers of events and outputs. KAFKA_PRODUCER_MAX_BATCH_SIZE is not applied here: it
    exists for faust's table changelogs on the local broker only (see streams/local/tansu.py)."""
    kwargs = client_kwargs(settings)
    kwargs["acks"] = "all"
    kwargs["linger_ms"] = 5
    return kwargs
