//! Diesel's view of the tables that `migrations/` creates (the same for both backends).

diesel::table! {
    account_sequences (account_id) {
        account_id -> Text,
        last_seq -> BigInt,
    }
}

diesel::table! {
    events (account_id, seq) {
        account_id -> Text,
        seq -> BigInt,
        user_id -> Nullable<Text>,
        event -> Text,
        data -> Text,
        created_at -> BigInt,
        channel -> Nullable<Text>,
    }
}

diesel::table! {
    session_revocations (session_id) {
        session_id -> Text,
        account_id -> Text,
        recorded_at -> BigInt,
    }
}

diesel::table! {
    user_revocations (account_id, user_id) {
        account_id -> Text,
        user_id -> Text,
        revoked_at -> BigInt,
        recorded_at -> BigInt,
    }
}

diesel::table! {
    integrations (id) {
        id -> Text,
        provider -> Text,
        external_id -> Text,
        account_id -> Text,
        secret -> Text,
        app_id -> Nullable<Text>,
        outbound_url -> Nullable<Text>,
        outbound_secret -> Text,
        disabled_at -> Nullable<BigInt>,
        created_at -> BigInt,
    }
}

diesel::table! {
    webhook_receipts (integration_id, receipt_id) {
        integration_id -> Text,
        receipt_id -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    conversations (id) {
        id -> Text,
        account_id -> Text,
        kind -> Text,
        integration_id -> Nullable<Text>,
        provider -> Nullable<Text>,
        contact_id -> Nullable<Text>,
        direct_key -> Nullable<Text>,
        title -> Nullable<Text>,
        last_message_at -> BigInt,
        last_message_preview -> Nullable<Text>,
        unread_count -> BigInt,
        created_at -> BigInt,
        last_position -> BigInt,
    }
}

diesel::table! {
    messages (id) {
        id -> Text,
        conversation_id -> Text,
        account_id -> Text,
        direction -> Text,
        provider_message_id -> Nullable<Text>,
        sender_id -> Text,
        text -> Nullable<Text>,
        attachments -> Nullable<Text>,
        status -> Text,
        client_msg_id -> Nullable<Text>,
        ack_seq -> Nullable<BigInt>,
        created_at -> BigInt,
        position -> BigInt,
    }
}

diesel::table! {
    outbound_deliveries (id) {
        id -> Text,
        integration_id -> Text,
        message_id -> Text,
        payload -> Text,
        status -> Text,
        attempts -> BigInt,
        last_error -> Nullable<Text>,
        next_attempt_at -> BigInt,
        created_at -> BigInt,
        updated_at -> BigInt,
        leased_by -> Nullable<Text>,
        leased_until -> BigInt,
        kind -> Text,
    }
}

diesel::table! {
    presence_state (account_id, user_id) {
        account_id -> Text,
        user_id -> Text,
        online -> Bool,
        generation -> BigInt,
        decided -> BigInt,
        alone -> Bool,
        updated_at -> BigInt,
    }
}

diesel::table! {
    participants (conversation_id, user_id) {
        conversation_id -> Text,
        user_id -> Text,
        unread_count -> BigInt,
        last_read_message_id -> Nullable<Text>,
        joined_at -> BigInt,
    }
}

diesel::table! {
    notifications (id) {
        id -> Text,
        account_id -> Text,
        user_id -> Text,
        #[sql_name = "type"]
        kind -> Text,
        title -> Text,
        message -> Nullable<Text>,
        data -> Text,
        read_at -> Nullable<BigInt>,
        created_at -> BigInt,
    }
}

diesel::allow_tables_to_appear_in_same_query!(conversations, participants);

diesel::table! {
    publish_keys (account_id, idempotency_key) {
        account_id -> Text,
        idempotency_key -> Text,
        seq -> BigInt,
        created_at -> BigInt,
    }
}
