//! One Engine.IO connection: whichever transport currently carries it (HTTP long-polling or a
//! WebSocket), the session on it once the client connected, and the packets waiting for the
//! next poll.
//!
//! Before it has a session, a connection holds little and briefly: its admission slot, and at
//! most one packet of its own — the CONNECT refusal it closes with.
//!
//! The session writes through the link without knowing the transport; the HTTP handlers and
//! the WebSocket actor read from it. Shared across threads (a poll may be served by any worker),
//! so its state sits behind a mutex held only for queue operations.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use actix::prelude::*;
use bytestring::ByteString;
use tokio::sync::Notify;

use super::admission::Slot;
use super::socket::{Shut, Socket, Write};
use super::wire::{Engine, FromLink};
use super::Engines;
use crate::actors::session::{frame_size, Backlog, Session};
use crate::auth::TokenError;
use crate::config::Secret;
use crate::protocol::socket_io as packet;

/// How long a closed polling connection still answers polls.
const LINGER: Duration = Duration::from_secs(5);

pub struct Link {
    pub sid: String,
    /// What the handshake request carried (`Authorization: Bearer` or `?token=`), for a CONNECT
    /// whose `auth` has no `token`: the token, or why it is not kept (longer than a token may
    /// be), for the CONNECT to answer.
    pub handshake_token: Option<Result<Secret, TokenError>>,
    /// The client's address at the handshake: a CONNECT with a bad token counts against it.
    pub peer: Option<IpAddr>,
    /// Bytes written for the client and not yet taken by a poll or the socket.
    pub backlog: Arc<Backlog>,
    state: Mutex<State>,
    /// Wakes the waiting poll.
    wake: Notify,
    engines: Weak<Engines>,
}

enum Transport {
    Polling,
    WebSocket(Addr<Socket>),
}

struct State {
    transport: Transport,
    /// Packets for the next poll; `true` for those counted in the backlog.
    queue: VecDeque<(ByteString, bool)>,
    /// A poll is waiting.
    polling: bool,
    /// A WebSocket is being probed: the waiting poll answers at once (with a noop if need be),
    /// so the client can switch.
    upgrading: bool,
    /// A WebSocket is open to probe (one at a time).
    probe: bool,
    session: Option<Addr<Session<Engine>>>,
    /// The connection's place among those without a session; given back once it has one (or,
    /// dropped with the link, once it is gone).
    slot: Option<Slot>,
    closed: bool,
}

/// Why a poll was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PollError {
    /// The connection moved to a WebSocket, or closed.
    Gone,
    /// A second poll while one waits: the protocol forbids it, and the connection is closed.
    Overlap,
}

impl Link {
    pub fn new(
        sid: String,
        handshake_token: Option<Result<Secret, TokenError>>,
        peer: Option<IpAddr>,
        max_queued_bytes: usize,
        slot: Slot,
        engines: Weak<Engines>,
    ) -> Self {
        Self {
            sid,
            handshake_token,
            peer,
            backlog: Arc::new(Backlog::new(max_queued_bytes)),
            state: Mutex::new(State {
                transport: Transport::Polling,
                queue: VecDeque::new(),
                polling: false,
                upgrading: false,
                probe: false,
                session: None,
                slot: Some(slot),
                closed: false,
            }),
            wake: Notify::new(),
            engines,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding it leaves only a queue behind: carry on with it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A packet the session counted in the backlog.
    pub fn send(&self, packet: ByteString) {
        let mut state = self.state();
        if state.closed {
            return;
        }
        match &state.transport {
            Transport::WebSocket(socket) => socket.do_send(Write(packet)),
            Transport::Polling => {
                state.queue.push_back((packet, true));
                drop(state);
                self.wake.notify_one();
            }
        }
    }

    /// A CONNECT refused (CONNECT_ERROR): before a session, the connection closes after it, as
    /// socket.io-client does on its side (it opens a new connection to try again); so a client
    /// cannot pile refusals up. Beside a session (a CONNECT for another namespace), it is
    /// counted in the backlog, and the connection closes past its bound.
    pub fn refuse(&self, packet: ByteString) {
        if self.session().is_none() {
            return self.close_with([packet]);
        }
        if self.backlog.reserve(frame_size(packet.len())) {
            self.send(packet);
        } else {
            log::debug!("refusals piled up past the backlog bound; closing the connection");
            self.close();
        }
    }

    pub fn session(&self) -> Option<Addr<Session<Engine>>> {
        self.state().session.clone()
    }

    pub fn set_session(&self, session: Addr<Session<Engine>>) {
        let mut state = self.state();
        state.session = Some(session);
        // Authenticated: no longer one of the connections nobody vouches for.
        state.slot = None;
    }

    pub fn is_closed(&self) -> bool {
        self.state().closed
    }

    /// The packets for one poll (joined by the record separator, at most about `max_payload`
    /// bytes), waiting up to `wait` for one; a noop when none came.
    pub async fn poll(&self, max_payload: usize, wait: Duration) -> Result<String, PollError> {
        let deadline = tokio::time::Instant::now() + wait;
        {
            let mut state = self.state();
            if state.polling {
                drop(state);
                self.close();
                return Err(PollError::Overlap);
            }
            state.polling = true;
        }
        // Not waiting any more however this ends — answered, or dropped with its request.
        struct Waiting<'a>(&'a Link);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.state().polling = false;
            }
        }
        let _waiting = Waiting(self);
        loop {
            if let Some(answer) = self.take(max_payload) {
                return answer;
            }
            if tokio::time::timeout_at(deadline, self.wake.notified())
                .await
                .is_err()
            {
                return self
                    .take(max_payload)
                    .unwrap_or(Ok(packet::NOOP.to_owned()));
            }
        }
    }

    /// What a poll can answer now, if anything.
    fn take(&self, max_payload: usize) -> Option<Result<String, PollError>> {
        let mut state = self.state();
        if matches!(state.transport, Transport::WebSocket(_)) {
            return Some(Err(PollError::Gone));
        }
        if state.queue.is_empty() {
            return match (state.closed, state.upgrading) {
                (true, _) => Some(Ok(packet::CLOSE.to_owned())),
                (false, true) => Some(Ok(packet::NOOP.to_owned())),
                (false, false) => None,
            };
        }
        let mut body = String::new();
        while let Some((packet, counted)) = state.queue.front() {
            if !body.is_empty() && body.len() + packet.len() + 1 > max_payload {
                break;
            }
            if !body.is_empty() {
                body.push(packet::SEPARATOR);
            }
            body.push_str(packet);
            if *counted {
                self.backlog.taken(frame_size(packet.len()));
            }
            state.queue.pop_front();
        }
        if state.closed && state.queue.is_empty() {
            body.push(packet::SEPARATOR);
            body.push_str(packet::CLOSE);
        }
        Some(Ok(body))
    }

    /// A WebSocket opens to probe this connection: `false` when another probe is open, or the
    /// connection is not on long-polling any more (a client probes once), so that one
    /// connection cannot hold any number of sockets.
    pub fn probe(&self) -> bool {
        let mut state = self.state();
        let free = !state.probe && matches!(state.transport, Transport::Polling);
        if free {
            state.probe = true;
        }
        free
    }

    /// The probing WebSocket asked to upgrade: release the waiting poll.
    pub fn upgrading(&self) {
        self.state().upgrading = true;
        self.wake.notify_one();
    }

    /// The probe ended without an upgrade.
    pub fn upgrade_abandoned(&self) {
        let mut state = self.state();
        state.upgrading = false;
        state.probe = false;
    }

    /// The client switched to `socket`: what was queued for polling goes there, and so does
    /// everything after.
    pub fn upgraded(&self, socket: Addr<Socket>) {
        let mut state = self.state();
        if state.closed {
            socket.do_send(Shut);
            return;
        }
        // Still counted: the socket uncounts them as it writes them.
        for (packet, _) in state.queue.drain(..) {
            socket.do_send(Write(packet));
        }
        state.transport = Transport::WebSocket(socket);
        state.probe = false;
        drop(state);
        self.wake.notify_one();
    }

    /// The connection is over: the transport is closed, the session told, the link forgotten.
    /// Idempotent.
    pub fn close(&self) {
        self.close_with(std::iter::empty());
    }

    /// Closes after `last` — the packets that say why — so that the client gets them with the
    /// close (one poll answer carries both).
    pub fn close_with(&self, last: impl IntoIterator<Item = ByteString>) {
        let mut state = self.state();
        if state.closed {
            return;
        }
        state.closed = true;
        let polling = match &state.transport {
            Transport::WebSocket(socket) => {
                for packet in last {
                    socket.do_send(Write(packet));
                }
                socket.do_send(Shut);
                false
            }
            Transport::Polling => {
                state
                    .queue
                    .extend(last.into_iter().map(|packet| (packet, false)));
                true
            }
        };
        let session = state.session.take();
        drop(state);
        // A waiting poll answers with what is left, and the close packet.
        self.wake.notify_one();
        if let Some(session) = session {
            session.do_send(FromLink::TransportClosed);
        }
        let Some(engines) = self.engines.upgrade() else {
            return;
        };
        if polling {
            // A client that was not polling just then still gets what was queued, and the
            // close packet, from its next poll.
            let sid = self.sid.clone();
            actix::spawn(async move {
                tokio::time::sleep(LINGER).await;
                engines.forget(&sid);
            });
        } else {
            engines.forget(&self.sid);
        }
    }
}
