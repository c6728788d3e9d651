-- Several workers relay the outbox: each takes unsent rows for a short while, so two emitters
-- do not publish the same rows at once (publishing stays at least once: a claim that expires
-- before its rows are marked sent is taken again).
ALTER TABLE outbox ADD COLUMN claimed_by TEXT, ADD COLUMN claimed_until BIGINT;
