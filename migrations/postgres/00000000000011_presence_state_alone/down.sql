ALTER TABLE presence_state DROP COLUMN alone;
