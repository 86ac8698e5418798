DROP TABLE events;
DROP TABLE account_sequences;
