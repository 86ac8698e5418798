ALTER TABLE outbound_deliveries DROP COLUMN leased_until;
ALTER TABLE outbound_deliveries DROP COLUMN leased_by;
