-- Core tables. Applied by `rating migrate` and by the sink at start; every statement is idempotent.
-- Engines: ReplacingMergeTree keyed by each record's deterministic id, so a row delivered or
-- inserted twice is counted once by queries that read with FINAL (all documented queries do).
-- The sink also sends an insert_deduplication_token per batch so a retried insert is dropped at
-- once (non_replicated_deduplication_window). Money is Decimal128(12): exact, and wide enough for
-- per-token prices (e.g. 0.21 CNY per 1M tokens = 0.00000021 per token).

CREATE TABLE IF NOT EXISTS deductions
(
    deduction_id        String,
    event_id            String,
    trace_id            String,
    account_id          String,
    main_account_id     String,
    event_time          DateTime64(3, 'UTC'),
    profile             LowCardinality(String),
    currency            LowCardinality(String),
    price_version       LowCardinality(String),
    item                LowCardinality(String),
    model               String,
    variant             String,
    quantities          Map(String, String),
    tokens_cache_hit    UInt64,
    tokens_input        UInt64,
    tokens_cache_write  UInt64,
    tokens_output       UInt64,
    tokens_reasoning    UInt64,
    units               Decimal128(12),
    lines_json          String,
    rated_amount        Decimal128(12),
    free_amount         Decimal128(12),
    trial_amount        Decimal128(12),
    pack_amount         Decimal128(12),
    voucher_amount      Decimal128(12),
    cash_amount         Decimal128(12),
    unbilled_amount     Decimal128(12),
    unbilled_reason     String,
    split_bucket_kind   Array(String),
    split_bucket_id     Array(String),
    split_amount        Array(Decimal128(12)),
    split_units         Array(Decimal128(12)),
    split_unit          Array(String),
    billed_elsewhere    Bool,
    flags               Array(String),
    balance_after       Decimal128(12),
    settlement_period   LowCardinality(String),
    ingested_at         DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (main_account_id, deduction_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS dead_letters
(
    dead_letter_id      String,
    reason_code         LowCardinality(String),
    reason              String,
    source_topic        String,
    source_partition    Int32,
    source_offset       Int64,
    event_id            String,
    main_account_id     String,
    trace_id            String,
    event_time          Nullable(DateTime64(3, 'UTC')),
    payload_base64      String,
    ingested_at         DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY dead_letter_id
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS alerts
(
    alert_id            String,
    kind                LowCardinality(String),
    main_account_id     String,
    account_id          String,
    event_time          DateTime64(3, 'UTC'),
    episode             String,
    model               String,
    message             String,
    details             Map(String, String),
    source_event_ids    Array(String),
    trace_id            String,
    ingested_at         DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (main_account_id, alert_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS account_status
(
    main_account_id     String,
    status              LowCardinality(String),
    reason              String,
    since               DateTime64(3, 'UTC'),
    source_event_id     String,
    ingested_at         DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (main_account_id, since, source_event_id)
SETTINGS non_replicated_deduplication_window = 1000;

-- Hourly aggregate of the deductions (daily for credit-priced video and 3D), exact and
-- duplicate-free because it reads the deductions with FINAL.
CREATE VIEW IF NOT EXISTS settlement_hourly_v AS
SELECT
    main_account_id,
    if(settlement_period = 'day', toStartOfDay(event_time, 'Asia/Shanghai'), toStartOfHour(event_time)) AS period_start,
    settlement_period,
    profile,
    currency,
    item,
    model,
    count()                 AS event_count,
    sum(rated_amount)       AS gross_amount,
    sum(free_amount)        AS free_amount,
    sum(trial_amount)       AS trial_amount,
    sum(pack_amount)        AS pack_amount,
    sum(voucher_amount)     AS voucher_amount,
    sum(cash_amount)        AS cash_amount,
    sum(unbilled_amount)    AS unbilled_amount,
    sum(tokens_cache_hit + tokens_input + tokens_cache_write) AS input_tokens,
    sum(tokens_output + tokens_reasoning) AS output_tokens,
    sum(units)              AS units,
    groupUniqArray(price_version) AS price_versions,
    groupArray(event_id)    AS event_ids
FROM deductions FINAL
GROUP BY main_account_id, period_start, settlement_period, profile, currency, item, model;

-- Requests and tokens per account, base model and minute: tells rate limiting (RPM/TPM) from low
-- balance when users report 403s.
CREATE VIEW IF NOT EXISTS usage_per_minute_v AS
SELECT
    main_account_id,
    model,
    toStartOfMinute(event_time) AS minute,
    count() AS requests,
    sum(tokens_cache_hit + tokens_input + tokens_cache_write + tokens_output + tokens_reasoning) AS tokens
FROM deductions FINAL
WHERE item IN ('tokens', 'embedding', 'rerank')
GROUP BY main_account_id, model, minute;
