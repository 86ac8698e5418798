//! The WebSocket transport (adapter layer): the native wire of a session ([`Native`]) and the
//! socket of an upgraded connection, handed to its session once the `101` is written
//! ([`Handover`], [`Writer`]; the `http` module does the handing). With `api::ws`, which checks
//! the handshake, and the Socket.IO WebSocket transport, which runs on [`serve`], the only user of
//! actix-web-actors and of the socket handover.
//!
//! Uses the engine's session (its `Wire` contract and `Backlog`), `protocol` and `auth`.
//!
//! actix-web-actors is deprecated upstream in favour of actix-ws; moving off it touches this
//! module, `api::ws` and `socket_io` only.

mod native;
mod transport;

pub use native::Native;
pub use transport::{serve, start, Handover, Writer};
