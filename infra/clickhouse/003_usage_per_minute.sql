-- Requests and tokens per main account, model and minute, as the workers publish them
-- (billing.usage-per-minute). Sum over line_type: adjustment rows carry late requests.
CREATE TABLE IF NOT EXISTS usage_per_minute
(
    usage_minute_id     String,
    main_account_id     String,
    model               String,
    minute_start        DateTime64(3, 'UTC'),
    line_type           LowCardinality(String),
    requests            UInt64,
    tokens              UInt64,
    ingested_at         DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(minute_start)
ORDER BY (main_account_id, usage_minute_id)
SETTINGS non_replicated_deduplication_window = 1000;
