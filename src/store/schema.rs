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
    }
}

diesel::allow_tables_to_appear_in_same_query!(account_sequences, events);
