-- Dead letters keep at most 32 KiB of their payload (dead_letter v2): the original size and its
-- SHA-256 say what was cut. Older rows read size 0, no hash, not truncated.
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS payload_size_bytes UInt64 DEFAULT 0;
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS payload_sha256 String DEFAULT '';
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS payload_truncated Bool DEFAULT false;
