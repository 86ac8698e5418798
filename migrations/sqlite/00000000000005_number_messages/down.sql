DROP INDEX messages_by_position;
CREATE INDEX messages_by_conversation ON messages (conversation_id, created_at, id);
ALTER TABLE messages DROP COLUMN position;
ALTER TABLE conversations DROP COLUMN last_position;
