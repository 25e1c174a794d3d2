-- From an id to where its rows are (issue 16): every deduction, event, trace and adjusted
-- deduction id, and every settlement line id, with the main account and the time that start the
-- sorting keys of deductions (031) and settlements (032). A trace reads a few granules of this
-- table, then only its account's range at that time in the big ones, instead of a full scan under
-- FINAL (bloom-filter skip indexes on the ids did not help: FINAL expands the granules they keep
-- back to nearly all of them). Filled by materialized views on every insert into deductions and
-- settlements (the sink's, a re-rating's, a direct one), and from the rows already there. Read
-- without FINAL: a duplicate entry only repeats a key. Rows are never replaced, so no version.

CREATE TABLE IF NOT EXISTS id_lookup
(
    id               String,
    main_account_id  String,
    key_time         DateTime64(3, 'UTC'),
    source           LowCardinality(String)
)
ENGINE = ReplacingMergeTree
ORDER BY (id, main_account_id, key_time, source)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS id_lookup_deductions_mv TO id_lookup AS
SELECT arrayJoin(arrayDistinct(arrayFilter(x -> x != '', [deduction_id, event_id, trace_id, adjusts_deduction_id]))) AS id,
       main_account_id, event_time AS key_time, 'deduction' AS source
FROM deductions;

CREATE MATERIALIZED VIEW IF NOT EXISTS id_lookup_settlements_mv TO id_lookup AS
SELECT settlement_id AS id, main_account_id, period_start AS key_time, 'settlement' AS source
FROM settlements;

INSERT INTO id_lookup (id, main_account_id, key_time, source)
SELECT arrayJoin(arrayDistinct(arrayFilter(x -> x != '', [deduction_id, event_id, trace_id, adjusts_deduction_id]))) AS id,
       main_account_id, event_time AS key_time, 'deduction' AS source
FROM deductions;

INSERT INTO id_lookup (id, main_account_id, key_time, source)
SELECT settlement_id AS id, main_account_id, period_start AS key_time, 'settlement' AS source
FROM settlements;
