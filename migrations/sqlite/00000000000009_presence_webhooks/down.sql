DROP TABLE presence_state;
ALTER TABLE outbound_deliveries DROP COLUMN kind;
