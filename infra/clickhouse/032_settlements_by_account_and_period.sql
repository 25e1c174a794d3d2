-- Settlement lines keyed for scale (issue 16), as deductions in 031: ORDER BY (main_account_id,
-- period_start, settlement_id), so a line found through id_lookup (033) is one range of the key and
-- an account's lines are in period order. The line's id stays last (a line inserted twice
-- collapses under FINAL); its period is part of the id, so every copy lands in the same partition
-- (toYYYYMM(period_start), as before) and do_not_merge_across_partitions_select_final is correct.
-- Version: ingested_at, as deductions. Copied, checked, swapped by RENAME; the old table stays as
-- settlements_pre032 (drop it once checked). Run with the sinks stopped.

CREATE TABLE IF NOT EXISTS settlements_new032 AS settlements
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(period_start)
ORDER BY (main_account_id, period_start, settlement_id)
SETTINGS non_replicated_deduplication_window = 1000;

INSERT INTO settlements_new032 SELECT * FROM settlements SETTINGS max_partitions_per_insert_block = 0;

SELECT throwIf((SELECT (count(), sum(gross_amount), sum(event_count)) FROM settlements_new032 FINAL)
               != (SELECT (count(), sum(gross_amount), sum(event_count)) FROM settlements FINAL),
               'the copy of settlements differs from the table: nothing was swapped');

RENAME TABLE settlements TO settlements_pre032, settlements_new032 TO settlements;
