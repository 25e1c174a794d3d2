-- Status and alert records carry a per-account sequence in processing order (alert v2,
-- account_status v2). A late event can take effect at a time earlier than the record it follows,
-- so the latest status or arrears alert is the one with the highest sequence, not the latest
-- time. Rows written before v2 read 0; queries order by (sequence, time), so among old rows the
-- time still decides and every new row comes after every old one.
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS sequence UInt64 DEFAULT 0;
ALTER TABLE account_status ADD COLUMN IF NOT EXISTS sequence UInt64 DEFAULT 0;
