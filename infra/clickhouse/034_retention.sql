-- Retention (issue 16), only where data is kept for operations rather than as a record of money:
--   usage_per_minute: 90 days after the row landed (it tells rate limiting from low balance when
--     users report 403s; usage_per_minute_v recomputes any minute from the deductions);
--   dead_letters: 400 days after they landed (past a year of audit; an event older than the
--     35-day dedupe horizon cannot be redriven anyway: event_too_old).
-- Deductions, settlements, alerts, account_status, events_archive and rerate_diffs have no TTL:
-- money records and the archive re-rating reads are kept. To change a retention:
-- ALTER TABLE ... MODIFY TTL (README, "ClickHouse"). Both count from ingested_at, when the row
-- landed, not from the event's time: a replay or a backfill of older events (a re-rating, a test
-- of May's data in December) would otherwise be deleted as it lands.
ALTER TABLE usage_per_minute MODIFY TTL toDateTime(ingested_at) + INTERVAL 90 DAY;
ALTER TABLE dead_letters MODIFY TTL toDateTime(ingested_at) + INTERVAL 400 DAY;
