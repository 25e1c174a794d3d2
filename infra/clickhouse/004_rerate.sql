-- Re-rating (`rating rerate`): deductions carry their kind, and adjustments point at what they
-- correct. Older rows read as kind = 'usage'. Diff reports land in rerate_diffs for finance, one
-- set of rows per `rating rerate --clickhouse` run (created_at tells the runs apart).
ALTER TABLE deductions ADD COLUMN IF NOT EXISTS kind LowCardinality(String) DEFAULT 'usage';
ALTER TABLE deductions ADD COLUMN IF NOT EXISTS adjusts_deduction_id String DEFAULT '';
ALTER TABLE deductions ADD COLUMN IF NOT EXISTS rerate_id String DEFAULT '';

CREATE TABLE IF NOT EXISTS rerate_diffs
(
    rerate_id        String,
    profile          LowCardinality(String),
    price_version    String,
    period_from      DateTime64(3, 'UTC'),
    period_to        DateTime64(3, 'UTC'),
    main_account_id  String,
    model            String,
    item             LowCardinality(String),
    currency         LowCardinality(String),
    events           UInt64,
    quantities       Map(String, Decimal128(12)),
    old_amount       Decimal128(12),
    new_amount       Decimal128(12),
    delta            Decimal128(12),
    old_split        Map(String, Decimal128(12)),
    new_split        Map(String, Decimal128(12)),
    created_at       DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (rerate_id, created_at, main_account_id, item, model);
