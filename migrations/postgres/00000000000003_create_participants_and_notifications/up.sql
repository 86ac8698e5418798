-- The users of a direct or group conversation, each with their own unread count.
CREATE TABLE participants (
    conversation_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    unread_count BIGINT NOT NULL,
    -- The last message this user has read (its time orders it).
    last_read_message_id TEXT,
    joined_at BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX participants_by_user ON participants (user_id, conversation_id);

-- Notifications the application's backend creates for a user.
CREATE TABLE notifications (
    id TEXT NOT NULL PRIMARY KEY,
    account_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    type TEXT NOT NULL,
    title TEXT NOT NULL,
    message TEXT,
    -- JSON, as text.
    data TEXT NOT NULL,
    read_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX notifications_by_user ON notifications (account_id, user_id, created_at, id);
