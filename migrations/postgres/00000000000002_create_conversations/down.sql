DROP TABLE outbound_deliveries;
DROP TABLE messages;
DROP TABLE conversations;
DROP TABLE webhook_receipts;
DROP TABLE integrations;
