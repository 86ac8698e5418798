//! Switchboard: a realtime engine. Applications publish events for an account (a tenant); every
//! WebSocket session of that account — or of one user of it — receives them, in sequence order,
//! and no session of any other account ever does.
//!
//! # Layout
//!
//! The modules form layers; a module uses its own layer and those below it, never one above
//! (`tests/architecture.rs` checks it; the only cycles are among the actors that exchange
//! messages). Read from the bottom up.
//!
//! **Wiring** — composes everything.
//! - [`server`] — builds the store, the actors and the app; used by the binary and the tests.
//! - [`cli`], [`logging`] and [`scheduling`] — the binary's command line, log set-up and the
//!   scheduling policy of its threads.
//!
//! **HTTP** — routes and the one mapping of errors to responses.
//! - [`api`] — HTTP routes: `/ws`, the publish API, integrations (admin), conversations (users),
//!   the browser SDK (`src/sdk/`, embedded) and the demo page (`src/demo/`); it routes
//!   `/socket.io/` and `/webhooks/…` to their adapters, handing each its own handles.
//! - [`error`] — the API's error type and its one mapping to HTTP responses, the adapters'
//!   errors ([`socket_io::Refusal`], [`webhooks::WebhookError`]) included.
//! - [`http`] — the app on actix-http, with each WebSocket's socket handed to its session once
//!   the `101` is written; what a client may hold before it has proved anything.
//!
//! **Adapters** — the transports and other systems.
//! - [`ws`] — the WebSocket transport: the native wire of a session, and the socket handed to it
//!   once the `101` is written.
//! - [`sse`] — Server-Sent Events: a session's frames as an event stream.
//! - [`socket_io`] — `/socket.io/`: Socket.IO clients, as a second wire of the same sessions;
//!   given [`socket_io::SocketIo`], knows nothing of the HTTP layer's state.
//! - [`cluster`] — several nodes on one PostgreSQL and one Redis (`REDIS_URL`); implements the
//!   engine's [`actors::peers::Peers`].
//! - [`webhooks`] — Facebook, Zalo and generic (Standard Webhooks) ingestion, signatures;
//!   given [`webhooks::Webhooks`].
//!
//! **Services** — the domain operations, each through the one commit path.
//! - [`commit`] — write in the account's transaction → hand the events to the broker → dispatch
//!   an outbound delivery.
//! - [`publisher`] — group commit for the publish API.
//! - [`outbox`] — the PostgreSQL outbox: events the application inserts in its own transactions,
//!   published once each, in order, through the publisher.
//! - [`requests`] — what sessions ask on their users' behalf (the engine's
//!   [`actors::service::Service`]).
//! - [`inbox`] — conversations and messages as persisted, sequenced events.
//! - [`outbound`] — replies handed to the application by signed, retried webhooks.
//! - [`presence_webhooks`] — `user.online` / `user.offline` recorded once per transition and
//!   sent through the outbound deliveries.
//! - [`retention`] — how long events are kept; [`revocation`] — revoked users, on every node.
//!
//! **Engine** — moving events to sessions.
//! - [`event`] — the event as it is delivered (serialized once) and its pacing ticket.
//! - [`actors`] — the broker, one room per account, one session per connection; other nodes
//!   only through the [`actors::peers::Peers`] trait, the services only through
//!   [`actors::service::Service`].
//!
//! **Store** — [`store`]: the database (SQLite or PostgreSQL, chosen at run time), migrations,
//! queries; synchronous diesel reached through one executor.
//!
//! **Base** — what everything may use.
//! - [`config`] — every setting, read and validated once into [`config::Config`];
//!   development-mode keys.
//! - [`ids`] — `AccountId`, `UserId`, `SessionId` newtypes; [`channel`] — channel names and
//!   the token's grant of them.
//! - [`auth`] — verifying application-issued JWTs (the only source of identity), with failed
//!   authentications limited per client address; minting development tokens; which pages may
//!   open a socket (the `Origin` check).
//! - [`protocol`] — WebSocket frames and close codes.
//! - [`json`] — the one nesting limit on JSON taken in from outside.
//! - [`metrics`] — Prometheus metrics, at `/metrics`.

pub mod actors;
pub mod api;
pub mod auth;
pub mod channel;
pub mod cli;
pub mod cluster;
pub mod commit;
pub mod config;
pub mod error;
pub mod event;
pub mod http;
pub mod ids;
pub mod inbox;
pub mod json;
pub mod logging;
pub mod metrics;
pub mod outbound;
pub mod outbox;
pub mod presence_webhooks;
pub mod protocol;
pub mod publisher;
pub mod requests;
pub mod retention;
pub mod revocation;
pub mod scheduling;
pub mod server;
pub mod socket_io;
pub mod sse;
pub mod store;
pub mod webhooks;
pub mod ws;
