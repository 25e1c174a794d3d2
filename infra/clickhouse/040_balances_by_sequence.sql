-- Balances that finance can order (deduction v4, account_balance v1). Deductions carry the
-- account's record sequence, shared with the alert, status and balance records, and every account
-- event that moves the cash (a top-up) writes a balance record. So an account's latest balance is
-- the balance_after or cash_balance with the highest sequence, whatever the event times say
-- (accounts_in_arrears). Deductions written before read sequence 0.
ALTER TABLE deductions ADD COLUMN IF NOT EXISTS sequence UInt64 DEFAULT 0;
ALTER TABLE deductions_avro_in ADD COLUMN IF NOT EXISTS sequence UInt64 DEFAULT 0;

-- One row per balance record; the account event's id makes it unique, so a redelivered record
-- counts once with FINAL.
CREATE TABLE IF NOT EXISTS account_balances
(
    main_account_id  String,
    currency         LowCardinality(String),
    cash_balance     Decimal128(12),
    as_of            DateTime64(3, 'UTC'),
    source_event_id  String,
    sequence         UInt64,
    ingested_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (main_account_id, source_event_id);

-- The view of migration 009 with the new column. The new view is created before the old one is
-- dropped, so an insert made while this runs lands (twice at worst, one row with FINAL), never
-- not at all.
CREATE MATERIALIZED VIEW IF NOT EXISTS deductions_avro_in_mv4 TO deductions AS
WITH
    item IN ('tokens', 'embedding', 'rerank') AS is_tokens,
    toDecimal128(0, 12) AS zero
SELECT
    deduction_id, event_id, trace_id, account_id, main_account_id, event_time, profile, currency, price_version, item,
    ifNull(model, '') AS model,
    ifNull(variant, '') AS variant,
    quantities,
    toUInt64(if(is_tokens AND mapContains(quantities, 'cache_hit'), quantities['cache_hit'], '0')) AS tokens_cache_hit,
    toUInt64(if(is_tokens AND mapContains(quantities, 'input'), quantities['input'], '0')) AS tokens_input,
    toUInt64(if(is_tokens AND mapContains(quantities, 'cache_write'), quantities['cache_write'], '0')) AS tokens_cache_write,
    toUInt64(if(is_tokens AND mapContains(quantities, 'output'), quantities['output'], '0')) AS tokens_output,
    toUInt64(if(is_tokens AND mapContains(quantities, 'reasoning'), quantities['reasoning'], '0')) AS tokens_reasoning,
    if(is_tokens, zero, arraySum(arrayMap(l -> toDecimal128(l.units, 12), lines))) AS units,
    toJSONString(lines) AS lines_json,
    toDecimal128(rated_amount, 12) AS rated_amount,
    arraySum(arrayMap(s -> if(s.bucket_kind = 'free', toDecimal128(s.amount, 12), zero), splits))
        + toDecimal128(throwIf(NOT arrayAll(s -> s.bucket_kind IN ('free', 'trial', 'pack', 'voucher', 'cash'), splits),
                               'deduction split with an unknown bucket kind'), 12) AS free_amount,
    arraySum(arrayMap(s -> if(s.bucket_kind = 'trial', toDecimal128(s.amount, 12), zero), splits)) AS trial_amount,
    arraySum(arrayMap(s -> if(s.bucket_kind = 'pack', toDecimal128(s.amount, 12), zero), splits)) AS pack_amount,
    arraySum(arrayMap(s -> if(s.bucket_kind = 'voucher', toDecimal128(s.amount, 12), zero), splits)) AS voucher_amount,
    arraySum(arrayMap(s -> if(s.bucket_kind = 'cash', toDecimal128(s.amount, 12), zero), splits)) AS cash_amount,
    toDecimal128(unbilled_amount, 12) AS unbilled_amount,
    ifNull(unbilled_reason, '') AS unbilled_reason,
    arrayMap(s -> s.bucket_kind, splits) AS split_bucket_kind,
    arrayMap(s -> s.bucket_id, splits) AS split_bucket_id,
    arrayMap(s -> toDecimal128(s.amount, 12), splits) AS split_amount,
    arrayMap(s -> toDecimal128(s.units, 12), splits) AS split_units,
    arrayMap(s -> s.unit, splits) AS split_unit,
    billed_elsewhere, flags,
    toDecimal128(balance_after, 12) AS balance_after,
    settlement_period, kind,
    ifNull(adjusts_deduction_id, '') AS adjusts_deduction_id,
    ifNull(rerate_id, '') AS rerate_id,
    ifNull(settlement_id, '') AS settlement_id,
    sequence
FROM deductions_avro_in;

DROP VIEW IF EXISTS deductions_avro_in_mv;
