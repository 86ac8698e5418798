//! Switchboard's integration tests: each starts a real server on an ephemeral port (see
//! `common`) and talks to it with real WebSocket and HTTP clients. Tests marked as running on
//! each backend run on SQLite, and on PostgreSQL when `SWITCHBOARD_TEST_DATABASE_URL` is set
//! while they are built (`build.rs`); without it, those variants and the cluster tests are
//! ignored, and `cargo test` lists them so, with the reason.

mod common;

mod architecture;
mod auth;
mod bad_input;
mod browser_side;
mod channels;
mod cli;
mod cluster;
mod control;
mod conversations;
mod delivery;
mod docs;
mod heartbeat;
mod isolation;
mod lifetime;
mod limits;
mod operations;
mod outbound_cluster;
mod outbox;
mod persistence;
mod pipelining;
mod presence_webhooks;
mod resume;
mod socket_io;
mod sse;
mod users;
mod webhook_fuzz;
mod webhooks;
