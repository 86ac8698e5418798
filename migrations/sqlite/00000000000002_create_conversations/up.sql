-- An integration binds a provider's page / OA / source to the account that owns it. Webhooks
-- find their account only through this table.
CREATE TABLE integrations (
    id TEXT NOT NULL PRIMARY KEY,
    -- facebook, zalo or generic
    provider TEXT NOT NULL,
    -- The provider's id: Facebook page id, Zalo OA id, or a name for a generic source.
    external_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    -- Verifies inbound webhooks: Facebook app secret, Zalo OA secret key, or whsec_… signing secret.
    secret TEXT NOT NULL,
    -- Zalo's app id, part of its signature.
    app_id TEXT,
    -- Where replies are sent, signed with outbound_secret (Standard Webhooks).
    outbound_url TEXT,
    outbound_secret TEXT NOT NULL,
    disabled_at BIGINT,
    created_at BIGINT NOT NULL,
    UNIQUE (provider, external_id)
);
CREATE INDEX integrations_by_account ON integrations (account_id);

-- Provider message ids (and webhook ids) already ingested: retries store nothing new.
CREATE TABLE webhook_receipts (
    integration_id TEXT NOT NULL,
    receipt_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (integration_id, receipt_id)
);

-- A conversation of an account: with an external contact on an integration (`external`, seen by
-- every user of the account), or between users of the account (`direct`, `group`: seen by its
-- participants only).
CREATE TABLE conversations (
    id TEXT NOT NULL PRIMARY KEY,
    account_id TEXT NOT NULL,
    -- external, direct or group
    kind TEXT NOT NULL,
    integration_id TEXT,
    provider TEXT,
    contact_id TEXT,
    -- direct: the two user ids, sorted, so that a pair of users has one direct conversation.
    direct_key TEXT,
    title TEXT,
    last_message_at BIGINT NOT NULL,
    last_message_preview TEXT,
    -- external: unread by the account. Users' own counts are in participants.
    unread_count BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (integration_id, contact_id),
    UNIQUE (account_id, direct_key)
);
CREATE INDEX conversations_by_activity ON conversations (account_id, last_message_at, id);

CREATE TABLE messages (
    id TEXT NOT NULL PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    -- inbound (from the contact), outbound (from the account), or internal (between users)
    direction TEXT NOT NULL,
    provider_message_id TEXT,
    -- The contact's id, the page's id, or the sending user's id.
    sender_id TEXT NOT NULL,
    text TEXT,
    -- JSON array, as text.
    attachments TEXT,
    -- inbound: received. outbound: pending, forwarded (to the app), sent (the provider echoed
    -- it), delivered, read; or not-forwarded (no outbound URL), failed. internal: sent.
    status TEXT NOT NULL,
    -- The sender's idempotency key, and the sequence number its ack carried.
    client_msg_id TEXT,
    ack_seq BIGINT,
    created_at BIGINT NOT NULL,
    UNIQUE (conversation_id, sender_id, client_msg_id)
);
CREATE INDEX messages_by_conversation ON messages (conversation_id, created_at, id);

-- Replies handed to the application's backend by signed webhook, with their retry state.
CREATE TABLE outbound_deliveries (
    -- Also the webhook-id header, so the receiver can deduplicate.
    id TEXT NOT NULL PRIMARY KEY,
    integration_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    -- pending, delivered or failed
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    last_error TEXT,
    next_attempt_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX outbound_deliveries_by_status ON outbound_deliveries (status, next_attempt_at);
CREATE INDEX outbound_deliveries_by_integration ON outbound_deliveries (integration_id, created_at);
