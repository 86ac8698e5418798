-- The last sequence number handed out per account. Bumped and read in the same transaction
-- that stores the event, so numbers are gap-free and strictly increasing, and the row lock
-- orders concurrent publishers (also across server processes sharing one database).
CREATE TABLE account_sequences (
    account_id TEXT NOT NULL PRIMARY KEY,
    last_seq BIGINT NOT NULL
);

-- Every published event, in its account's sequence.
CREATE TABLE events (
    account_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    -- When set, only this user's sessions receive the event.
    user_id TEXT,
    event TEXT NOT NULL,
    -- The event's JSON payload, as text (portable across both backends).
    data TEXT NOT NULL,
    -- Milliseconds since the Unix epoch.
    created_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, seq)
);
