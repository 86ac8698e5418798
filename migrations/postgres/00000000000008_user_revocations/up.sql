-- A user revoked through the control API: their tokens issued before `revoked_at` (seconds since
-- the Unix epoch, the unit of a token's `iat`) are refused, on every node and after a restart.
CREATE TABLE user_revocations (
    account_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    revoked_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, user_id)
);
