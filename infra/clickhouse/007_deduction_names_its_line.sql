-- Settlement lines no longer list their events (settlement v2): a busy account's line grew past
-- any broker's message limit. Each deduction names its line instead (deduction v3), and a line's
-- events are the deductions with its settlement_id. Lines written before keep their id lists in
-- the legacy columns deduction_ids / event_ids; newer lines leave them empty.
ALTER TABLE deductions ADD COLUMN IF NOT EXISTS settlement_id String DEFAULT '';
ALTER TABLE deductions ADD INDEX IF NOT EXISTS deductions_settlement_id settlement_id TYPE bloom_filter GRANULARITY 4;

-- The hourly view recomputed from deductions: sums and counts, no per-event array.
CREATE OR REPLACE VIEW settlement_hourly_v AS
SELECT
    main_account_id,
    if(settlement_period = 'day', toStartOfDay(event_time, 'Asia/Shanghai'), toStartOfHour(event_time)) AS period_start,
    settlement_period,
    profile,
    currency,
    item,
    model,
    countIf(kind = 'usage') AS event_count,
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
    groupUniqArray(price_version) AS price_versions
FROM deductions FINAL
GROUP BY main_account_id, period_start, settlement_period, profile, currency, item, model;
