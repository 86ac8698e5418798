-- Decided by a node without a cluster: such a node's start takes the user offline (none of its
-- sessions survived), and only such a node's — a cluster's users are the cluster's to take
-- offline.
ALTER TABLE presence_state ADD COLUMN alone BOOLEAN NOT NULL DEFAULT FALSE;
