-- Deliveries are of two kinds: `reply` (an outbound reply; message_id names it) and `presence`
-- (a user.online / user.offline webhook; message_id is empty, integration_id is the account's
-- presence integration, or empty for the globally configured receiver).
ALTER TABLE outbound_deliveries ADD COLUMN kind TEXT NOT NULL DEFAULT 'reply';

-- Each user's presence as last sent to the webhooks: the transition is recorded here, in the
-- transaction that queues its delivery, only if it changes `online` (a conditional update), so
-- it is recorded once however many nodes hear of it. `generation` counts the transitions;
-- `decided` is the order in which the presence decision was made (microseconds, from Redis in
-- a cluster), so that a node hearing of an older decision late does not undo a newer one.
CREATE TABLE presence_state (
    account_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    online BOOLEAN NOT NULL,
    generation BIGINT NOT NULL,
    decided BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, user_id)
);
