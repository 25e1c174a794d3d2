-- Re-rating adjustments (deductions.kind = 'rerate_adjustment') change amounts, not events or
-- requests: the views count usage rows only and sum every row.
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
    groupUniqArray(price_version) AS price_versions,
    groupArrayIf(event_id, kind = 'usage') AS event_ids
FROM deductions FINAL
GROUP BY main_account_id, period_start, settlement_period, profile, currency, item, model;

CREATE OR REPLACE VIEW usage_per_minute_v AS
SELECT
    main_account_id,
    model,
    toStartOfMinute(event_time) AS minute,
    count() AS requests,
    sum(tokens_cache_hit + tokens_input + tokens_cache_write + tokens_output + tokens_reasoning) AS tokens
FROM deductions FINAL
WHERE item IN ('tokens', 'embedding', 'rerank') AND kind = 'usage'
GROUP BY main_account_id, model, minute;
