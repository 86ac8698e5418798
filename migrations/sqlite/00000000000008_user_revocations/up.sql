-- A user revoked through the control API: their tokens issued at or before `revoked_at` (seconds
-- since the Unix epoch, the unit of a token's `iat`) are refused, on every node and after a
-- restart. `recorded_at` (milliseconds) is when the row was written: each node reads the rows
-- recorded since it last looked.
CREATE TABLE user_revocations (
    account_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    revoked_at BIGINT NOT NULL,
    recorded_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, user_id)
);
CREATE INDEX user_revocations_recorded ON user_revocations (recorded_at);
