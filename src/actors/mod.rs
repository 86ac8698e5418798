//! The actors that move events: one [`broker::Broker`] per server, one [`room::Room`] per account
//! with live sessions, one [`session::Session`] per WebSocket connection.
//!
//! ```text
//!  publish API ──Publish──▶ Broker ──Publish/Join/Leave──▶ Room (account A) ──Deliver──▶ Session …
//!  Session ──Join/Leave──▶ Broker                          Room (account B) ──Deliver──▶ Session …
//! ```
//!
//! A room only ever holds sessions of its own account, and the broker routes by account id alone:
//! there is no path by which an event reaches a session of another account.
//!
//! Other nodes are reached only through [`peers::Peers`], a trait the engine defines and the
//! cluster implements: the actors never name the cluster.

pub mod broker;
pub mod peers;
pub mod presence_hook;
pub mod room;
pub mod service;
pub mod session;
