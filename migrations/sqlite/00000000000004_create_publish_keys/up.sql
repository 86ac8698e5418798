-- Idempotency keys of the publish API: a retried publish with the same key gets the first
-- publish's sequence number instead of storing a second event. Kept for a window, then pruned.
CREATE TABLE publish_keys (
    account_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    seq BIGINT NOT NULL,
    -- Milliseconds since the Unix epoch.
    created_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, idempotency_key)
);
CREATE INDEX publish_keys_created_at ON publish_keys (created_at);
