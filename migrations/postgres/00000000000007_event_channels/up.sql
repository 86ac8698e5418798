-- An event published to a channel (a name inside its account, such as `order:1042`): delivered
-- live only to the sessions subscribed to it, and replayed only to those that follow it.
ALTER TABLE events ADD COLUMN channel TEXT;
-- A replay of one channel's history reads this; others read the account's sequence as before.
CREATE INDEX events_channel ON events (account_id, channel, seq);
