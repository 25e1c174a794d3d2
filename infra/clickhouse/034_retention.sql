-- Retention (issue 16), only where data is kept for operations rather than as a record of money:
--   usage_per_minute: 90 days after the minute (it tells rate limiting from low balance when users
--     report 403s; usage_per_minute_v recomputes any minute from the deductions);
--   dead_letters: 400 days after they landed (past a year of audit; an event older than the
--     35-day dedupe horizon cannot be redriven anyway: event_too_old).
-- Deductions, settlements, alerts, account_status, events_archive and rerate_diffs have no TTL:
-- money records and the archive re-rating reads are kept. To change a retention:
-- ALTER TABLE ... MODIFY TTL (README, "ClickHouse").
ALTER TABLE usage_per_minute MODIFY TTL toDateTime(minute_start) + INTERVAL 90 DAY;
ALTER TABLE dead_letters MODIFY TTL toDateTime(ingested_at) + INTERVAL 400 DAY;
