-- The input messages themselves, as the sink read them from the events topic: re-rating and audit
-- beyond the topic's retention. One row per Kafka message (an EventBatch stays one row), the
-- bytes unchanged, so a replay decodes them exactly as the workers did. Clock ticks are left out.
CREATE TABLE IF NOT EXISTS events_archive
(
    source_topic      LowCardinality(String),
    source_partition  UInt32,
    source_offset     UInt64,
    main_account_id   String,
    payload           String,
    message_time      DateTime64(3, 'UTC'),
    archived_at       DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(message_time)
ORDER BY (source_topic, source_partition, source_offset)
SETTINGS non_replicated_deduplication_window = 1000;
