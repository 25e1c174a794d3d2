-- Deductions keyed for scale (issue 16). Before: ORDER BY (main_account_id, deduction_id), UTC
-- months. A filter on event_time is not on the sorting key, so under FINAL ClickHouse pruned
-- neither partitions nor granules by time: a month's revenue read every part of every month.
--   ORDER BY (main_account_id, event_time, deduction_id): an account's month or period is one
--     range of the key; the deterministic id stays last, so a deduction inserted twice (same id,
--     and so the same account and event time) still collapses to one row under FINAL.
--   PARTITION BY toYYYYMM(event_time, 'Asia/Shanghai'): the finance month (platform time), so a
--     month's bill reads one partition. Every copy of a deduction lands in the same partition (its
--     event time never changes for its id), which is what makes the queries' setting
--     do_not_merge_across_partitions_select_final = 1 correct.
--   ReplacingMergeTree(ingested_at): the version column; of two copies of a row the one ingested
--     last is kept (copies are equal by construction; a corrected row written again with the same
--     id replaces the old one).
-- Existing rows are copied, the copy is checked (rows and money under FINAL), then the tables are
-- swapped by RENAME (chDB and any server). The old table stays as deductions_pre031 (drop it once
-- checked). Views name their tables, so they read the new one, and the sink's materialized view
-- (`TO deductions`) writes into it: it is not recreated here, whatever later migrations make of it
-- (a test inserts through it after this migration). Run with the sinks stopped (`rating migrate`
-- before they start, as the init Job and the compose init service do).

CREATE TABLE IF NOT EXISTS deductions_new031 AS deductions
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(event_time, 'Asia/Shanghai')
ORDER BY (main_account_id, event_time, deduction_id)
SETTINGS non_replicated_deduplication_window = 1000;

INSERT INTO deductions_new031 SELECT * FROM deductions SETTINGS max_partitions_per_insert_block = 0;

SELECT throwIf((SELECT (count(), sum(rated_amount), sum(cash_amount)) FROM deductions_new031 FINAL)
               != (SELECT (count(), sum(rated_amount), sum(cash_amount)) FROM deductions FINAL),
               'the copy of deductions differs from the table: nothing was swapped');

RENAME TABLE deductions TO deductions_pre031, deductions_new031 TO deductions;
