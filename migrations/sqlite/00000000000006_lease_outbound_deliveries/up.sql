-- A delivery is attempted by one node at a time: the node that claims it (a conditional update,
-- see store::deliveries::claim) holds it until leased_until (ms since the Unix epoch; 0 when no
-- node holds it). A node that dies mid-attempt leaves a lease that runs out, and another node's
-- scan then takes the delivery over.
ALTER TABLE outbound_deliveries ADD COLUMN leased_by TEXT;
ALTER TABLE outbound_deliveries ADD COLUMN leased_until BIGINT NOT NULL DEFAULT 0;
