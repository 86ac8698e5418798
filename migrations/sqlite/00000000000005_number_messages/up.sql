-- Messages numbered in their conversation, 1, 2, 3… in the order they were stored: listings,
-- cursors, the latest message and unread counts follow this number. Times cannot order them:
-- messages stored in the same millisecond tie, and a provider's time may be older than a message
-- stored before it. The conversation's row holds the last number given out; it is bumped in the
-- account's write transaction that stores the message, so the numbers are gap-free and follow
-- the commit order, also between server processes sharing the database.
ALTER TABLE conversations ADD COLUMN last_position BIGINT NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN position BIGINT NOT NULL DEFAULT 0;

-- Messages already stored keep the order they were listed in: (created_at, id).
UPDATE messages SET position = numbered.position
FROM (
    SELECT id, ROW_NUMBER() OVER (PARTITION BY conversation_id ORDER BY created_at, id) AS position
    FROM messages
) AS numbered
WHERE messages.id = numbered.id;
UPDATE conversations SET last_position = (
    SELECT COALESCE(MAX(position), 0) FROM messages WHERE messages.conversation_id = conversations.id
);

-- (SQLite cannot drop a column's default; every message is given its number explicitly.)

DROP INDEX messages_by_conversation;
CREATE UNIQUE INDEX messages_by_position ON messages (conversation_id, position);
