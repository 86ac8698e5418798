-- One live session closed through the control API, for the node that holds it: every node reads
-- the rows recorded since it last looked (each second) and closes the session if it is its own.
-- Rows are deleted after an hour: a session id is never reused, and a closed session stays closed.
CREATE TABLE session_revocations (
    session_id TEXT NOT NULL PRIMARY KEY,
    account_id TEXT NOT NULL,
    recorded_at BIGINT NOT NULL
);
CREATE INDEX session_revocations_recorded ON session_revocations (recorded_at);
