DROP INDEX events_channel;
ALTER TABLE events DROP COLUMN channel;
