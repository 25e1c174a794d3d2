-- Finance queries over the pipeline's ClickHouse tables. Each query has a name (`-- name:`), a
-- description, and ClickHouse query parameters ({name:Type}). Every one of them runs in
-- tests/integration/test_finance_sql.py against data that went through the pipeline.
-- All read with FINAL: rows delivered twice are counted once (ReplacingMergeTree on the id).
-- SETTINGS do_not_merge_across_partitions_select_final = 1: FINAL merges within each partition
-- only, and a filter on the partition's time prunes the other partitions. Correct because every
-- copy of a row lands in the same partition: each table's partition key is a function of columns
-- that never change for the row's id (migrations 031, 032). Ids are found through id_lookup (033):
-- an id gives the account and time that start the sorting keys.
-- distributed_product_mode = 'local' (no effect on one server): on a cluster (CLICKHOUSE_CLUSTER)
-- an IN or JOIN subquery on another table runs on each shard against its local table, which is
-- correct because every table is sharded by main account (streams/sink/cluster.py).
-- Money columns are Decimal128(12) in the account's currency; round only for display.
-- Time parameters are platform (Asia/Shanghai) time, as the days these queries group by: a
-- parameter given as text ('2026-05-02 00:00:00') is Shanghai midnight, whatever the server's time
-- zone; a client that sends an instant (a datetime with a time zone) gets exactly that instant.
-- deductions.kind is 'usage' (one row per rated usage event) or 'rerate_adjustment' (a delta booked
-- by `rating rerate --apply`): sums include both, event counts only usage rows.

-- name: account_bill_month
-- One account's bill for one month (platform time zone), by item, model and variant.
-- params: account String, month UInt32 (YYYYMM)
SELECT item, model, variant, currency,
       countIf(kind = 'usage') AS events,
       sum(rated_amount)    AS gross,
       sum(free_amount)     AS free,
       sum(trial_amount)    AS trial,
       sum(pack_amount)     AS pack,
       sum(voucher_amount)  AS voucher,
       sum(cash_amount)     AS cash,
       sum(unbilled_amount) AS unbilled
FROM deductions FINAL
WHERE main_account_id = {account:String}
  AND event_time >= toDateTime64(makeDate(intDiv({month:UInt32}, 100), {month:UInt32} % 100, 1), 3, 'Asia/Shanghai')
  AND event_time < toDateTime64(addMonths(makeDate(intDiv({month:UInt32}, 100), {month:UInt32} % 100, 1), 1), 3, 'Asia/Shanghai')
  AND toYYYYMM(event_time, 'Asia/Shanghai') = {month:UInt32}
GROUP BY item, model, variant, currency
ORDER BY item, model, variant
SETTINGS do_not_merge_across_partitions_select_final = 1;

-- name: revenue_per_model_per_day
-- Revenue per model and day: gross rated, and what was paid with money (packs, vouchers, cash).
-- Models billed elsewhere (Ark models used from Coze) are left out.
-- params: from DateTime64(3, 'Asia/Shanghai'), to DateTime64(3, 'Asia/Shanghai')
SELECT toDate(event_time, 'Asia/Shanghai') AS day, currency, item, model,
       countIf(kind = 'usage')                        AS events,
       sum(rated_amount)                              AS gross,
       sum(pack_amount + voucher_amount + cash_amount) AS paid,
       sum(cash_amount)                               AS cash
FROM deductions FINAL
WHERE NOT billed_elsewhere AND event_time >= {from:DateTime64(3, 'Asia/Shanghai')} AND event_time < {to:DateTime64(3, 'Asia/Shanghai')}
GROUP BY day, currency, item, model
ORDER BY day, currency, item, model
SETTINGS do_not_merge_across_partitions_select_final = 1;

-- name: accounts_in_arrears
-- Accounts whose last arrears alert is `arrears_started` (not cleared since): what they owe now
-- (their latest cash balance: after their last charge or their last top-up, whichever came last),
-- since when, and for how many days as of {as_of}; with their current status.
-- "Last" is by the per-account sequence (processing order, shared by deductions, balance records,
-- alerts and status records; rows written before it existed read 0 and fall back to time), since a late
-- top-up can carry an earlier event time, and a charge and a top-up can share a millisecond.
-- params: as_of DateTime64(3, 'Asia/Shanghai')
WITH episodes AS (
    SELECT main_account_id,
           argMax(kind, (sequence, event_time))      AS last_kind,
           maxIf(event_time, kind = 'arrears_started') AS arrears_since
    FROM alerts FINAL
    WHERE kind IN ('arrears_started', 'arrears_cleared')
    GROUP BY main_account_id
),
balances AS (
    SELECT main_account_id, any(currency) AS currency, argMax(balance, (sequence, at)) AS balance
    FROM (
        SELECT main_account_id, currency, balance_after AS balance, sequence, event_time AS at
        FROM deductions FINAL
        WHERE kind = 'usage'
          AND main_account_id IN (SELECT main_account_id FROM episodes WHERE last_kind = 'arrears_started')
        UNION ALL
        SELECT main_account_id, currency, cash_balance AS balance, sequence, as_of AS at
        FROM account_balances FINAL
        WHERE main_account_id IN (SELECT main_account_id FROM episodes WHERE last_kind = 'arrears_started')
    )
    GROUP BY main_account_id
),
status AS (
    SELECT main_account_id, argMax(status, (sequence, since)) AS status
    FROM account_status FINAL
    GROUP BY main_account_id
)
SELECT e.main_account_id AS main_account_id, b.currency AS currency, -b.balance AS owed, e.arrears_since AS arrears_since,
       dateDiff('day', e.arrears_since, {as_of:DateTime64(3, 'Asia/Shanghai')}, 'Asia/Shanghai') AS days_in_arrears, s.status AS status
FROM episodes AS e
INNER JOIN balances AS b ON b.main_account_id = e.main_account_id
LEFT JOIN status AS s ON s.main_account_id = e.main_account_id
WHERE e.last_kind = 'arrears_started'
ORDER BY days_in_arrears DESC, main_account_id
SETTINGS do_not_merge_across_partitions_select_final = 1,
         distributed_product_mode = 'local';

-- name: bucket_usage
-- How usage was paid, per currency: free points, trial quotas, packs, vouchers, cash, unbilled.
-- params: from DateTime64(3, 'Asia/Shanghai'), to DateTime64(3, 'Asia/Shanghai')
SELECT currency,
       sum(rated_amount)    AS gross,
       sum(free_amount)     AS free,
       sum(trial_amount)    AS trial,
       sum(pack_amount)     AS pack,
       sum(voucher_amount)  AS voucher,
       sum(cash_amount)     AS cash,
       sum(unbilled_amount) AS unbilled
FROM deductions FINAL
WHERE event_time >= {from:DateTime64(3, 'Asia/Shanghai')} AND event_time < {to:DateTime64(3, 'Asia/Shanghai')}
GROUP BY currency
ORDER BY currency
SETTINGS do_not_merge_across_partitions_select_final = 1;

-- name: reconciliation
-- Per account, period and item/model/variant: deductions against settlement lines (regular plus
-- adjustments). state = 'ok' when counts and amounts agree; 'open' when the period has no line
-- yet and ended less than {grace_hours} before {as_of}; 'OVERDUE' when it has no line and ended
-- longer ago than that (its partition stopped, or its stream time never passed it: a period that
-- never closes is not left looking open); 'MISMATCH' otherwise. A healthy pipeline returns no
-- MISMATCH and no OVERDUE row; a grace of a few hours covers the allowed lateness and the idle
-- watermark (SETTLEMENT_ALLOWED_LATENESS_S, WORKER_IDLE_ADVANCE_S). Only periods that start at or
-- after {from} (whole periods: their deductions are read from the start of that Shanghai day), so
-- a daily check reads the last days' partitions, not the whole history.
-- params: from DateTime64(3, 'Asia/Shanghai'), as_of DateTime64(3, 'Asia/Shanghai'), grace_hours UInt32
WITH d AS (
    SELECT main_account_id, item, model, variant,
           if(settlement_period = 'day', toUnixTimestamp(toStartOfDay(event_time, 'Asia/Shanghai')),
              toUnixTimestamp(toStartOfHour(event_time))) AS period,
           if(settlement_period = 'day', 86400, 3600) AS period_s,
           countIf(kind = 'usage') AS deductions, sum(rated_amount) AS deducted
    FROM deductions FINAL
    WHERE event_time >= toStartOfDay({from:DateTime64(3, 'Asia/Shanghai')}, 'Asia/Shanghai')
    GROUP BY main_account_id, item, model, variant, period, period_s
    HAVING period >= toUnixTimestamp({from:DateTime64(3, 'Asia/Shanghai')})
),
s AS (
    SELECT main_account_id, item, model, variant, toUnixTimestamp(period_start) AS period,
           sum(event_count) AS settled_events, sum(gross_amount) AS settled, count() AS lines
    FROM settlements FINAL
    WHERE period_start >= {from:DateTime64(3, 'Asia/Shanghai')}
    GROUP BY main_account_id, item, model, variant, period
)
SELECT main_account_id, item, model, variant, period, deductions, settled_events, deducted, settled,
       multiIf(lines = 0 AND period + period_s + {grace_hours:UInt32} * 3600
                   > toUnixTimestamp({as_of:DateTime64(3, 'Asia/Shanghai')}), 'open',
               lines = 0, 'OVERDUE',
               deductions = settled_events AND deducted = settled, 'ok', 'MISMATCH') AS state
FROM d FULL OUTER JOIN s USING (main_account_id, item, model, variant, period)
ORDER BY main_account_id, period, item, model, variant
SETTINGS join_use_nulls = 0, do_not_merge_across_partitions_select_final = 1;

-- name: trace_settlement_line
-- "Why was I charged this?": one settlement line and every deduction behind it, with the usage
-- event's ids and quantities, the price version and rating lines used, and the bucket split.
-- A line's deductions are those naming it (deductions.settlement_id); lines written before
-- settlement v2 list their deductions in the legacy column deduction_ids instead.
-- params: settlement_id String
WITH line AS (SELECT * FROM settlements FINAL
              WHERE (main_account_id, period_start) IN (SELECT main_account_id, key_time FROM id_lookup
                                                        WHERE id = {settlement_id:String})
                AND settlement_id = {settlement_id:String})
SELECT s.settlement_id, s.period_start, s.line_type, d.deduction_id, d.kind, d.event_id, d.trace_id, d.account_id,
       d.event_time, d.item, d.model, d.variant, d.quantities, d.price_version, d.lines_json, d.rated_amount,
       arrayZip(d.split_bucket_kind, d.split_bucket_id, d.split_amount) AS bucket_split, d.unbilled_amount
FROM line AS s
INNER JOIN (SELECT * FROM deductions FINAL
            WHERE main_account_id IN (SELECT main_account_id FROM line)
              AND event_time >= (SELECT min(period_start) FROM line)
              AND event_time < (SELECT max(period_end) FROM line)
              AND (settlement_id = {settlement_id:String}
                   OR has((SELECT any(deduction_ids) FROM line), deduction_id))
           ) AS d ON d.main_account_id = s.main_account_id
ORDER BY d.event_time, d.deduction_id
SETTINGS do_not_merge_across_partitions_select_final = 1,
         distributed_product_mode = 'local';

-- name: trace_request
-- Everything about one request, by trace id or event id: its deductions (usage and re-rating
-- adjustments), the settlement lines that include them, and any dead letter.
-- params: id String
WITH keys AS (SELECT main_account_id, key_time FROM id_lookup WHERE id = {id:String}),
found AS (SELECT deduction_id, kind, event_id, trace_id, rated_amount, price_version, settlement_id
          FROM deductions FINAL
          WHERE (main_account_id, event_time) IN (SELECT main_account_id, key_time FROM keys)
            AND (event_id = {id:String} OR trace_id = {id:String} OR deduction_id = {id:String}))
SELECT * FROM (
    SELECT 'deduction' AS row, deduction_id AS id, kind AS type, event_id, trace_id, toString(rated_amount) AS amount,
           price_version AS detail
    FROM found
    UNION ALL
    SELECT 'settlement', settlement_id, line_type, '', '', toString(gross_amount), toString(period_start)
    FROM settlements FINAL
    WHERE main_account_id IN (SELECT main_account_id FROM keys)
      AND (settlement_id IN (SELECT settlement_id FROM found)
           OR hasAny(deduction_ids, (SELECT groupArray(deduction_id) FROM found)))
    UNION ALL
    SELECT 'dead_letter', dead_letter_id, reason_code, event_id, trace_id, '', reason
    FROM dead_letters FINAL WHERE event_id = {id:String} OR trace_id = {id:String}
)
SETTINGS do_not_merge_across_partitions_select_final = 1,
         distributed_product_mode = 'local';

-- name: rerate_adjustments
-- What re-ratings booked, per run, account and model: the deltas, and how many events they touch.
-- params: (none)
SELECT rerate_id, main_account_id, model, currency, count() AS adjusted_events,
       groupUniqArray(price_version) AS price_versions,
       sum(rated_amount) AS delta, sum(cash_amount) AS cash_delta, sum(voucher_amount) AS voucher_delta
FROM deductions FINAL
WHERE kind = 'rerate_adjustment'
GROUP BY rerate_id, main_account_id, model, currency
ORDER BY rerate_id, main_account_id, model
SETTINGS do_not_merge_across_partitions_select_final = 1;
