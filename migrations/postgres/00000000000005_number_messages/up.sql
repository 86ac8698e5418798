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

-- Every message from now on is given its number when stored. Nodes of the previous version,
-- still running during a rolling deploy, store messages without one: this trigger gives them
-- the next (a later version may drop it).
ALTER TABLE messages ALTER COLUMN position DROP DEFAULT;
CREATE FUNCTION number_unnumbered_message() RETURNS trigger AS $$
BEGIN
    UPDATE conversations SET last_position = last_position + 1
        WHERE id = NEW.conversation_id
        RETURNING last_position INTO NEW.position;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER messages_numbered BEFORE INSERT ON messages
    FOR EACH ROW WHEN (NEW.position IS NULL) EXECUTE FUNCTION number_unnumbered_message();

DROP INDEX messages_by_conversation;
CREATE UNIQUE INDEX messages_by_position ON messages (conversation_id, position);
