-- Settlement lines as the workers close them (regular) or as late events produce them
-- (adjustment). A line is never rewritten: the sum over a period's lines is its total.
CREATE TABLE IF NOT EXISTS settlements
(
    settlement_id       String,
    main_account_id     String,
    period_start        DateTime64(3, 'UTC'),
    period_end          DateTime64(3, 'UTC'),
    granularity         LowCardinality(String),
    line_type           LowCardinality(String),
    profile             LowCardinality(String),
    currency            LowCardinality(String),
    item                LowCardinality(String),
    model               String,
    variant             String,
    quantities          Map(String, String),
    gross_amount        Decimal128(12),
    free_amount         Decimal128(12),
    trial_amount        Decimal128(12),
    pack_amount         Decimal128(12),
    voucher_amount      Decimal128(12),
    cash_amount         Decimal128(12),
    unbilled_amount     Decimal128(12),
    event_count         UInt64,
    price_versions      Array(String),
    deduction_ids       Array(String),
    event_ids           Array(String),
    closed_at           DateTime64(3, 'UTC'),
    ingested_at         DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(period_start)
ORDER BY (main_account_id, settlement_id)
SETTINGS non_replicated_deduplication_window = 1000;
