//! The WebSocket transport, and the count of bytes queued for the client.
//!
//! actix-web-actors keeps what a session writes in a private buffer that grows without bound
//! for a client that does not read. So the session counts each frame as it writes it
//! ([`Backlog::add`]), and the response stream — which the HTTP layer polls only as fast as the
//! socket drains — subtracts what it yields ([`Counted`]). The difference is what the server
//! holds for this client.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_http::ws::Codec;
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use actix_web_actors::ws::{self, WebsocketContext};
use futures_core::Stream;

use super::Session;

/// Bytes written for a client and not yet taken by the socket writer.
#[derive(Debug, Default)]
pub(super) struct Backlog(AtomicUsize);

impl Backlog {
    pub(super) fn add(&self, bytes: usize) {
        self.0.fetch_add(bytes, Ordering::Relaxed);
    }

    fn taken(&self, bytes: usize) {
        // Saturating: a frame the session did not count (none should exist) must not wrap.
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                Some(q.saturating_sub(bytes))
            });
    }

    pub(super) fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// The encoded size of a server frame (unmasked) with `payload` bytes.
pub(super) fn frame_size(payload: usize) -> usize {
    payload
        + match payload {
            0..=125 => 2,
            126..=65535 => 4,
            _ => 10,
        }
}

/// The response stream, counting what it hands to the HTTP layer.
struct Counted {
    inner: Pin<Box<dyn Stream<Item = Result<Bytes, actix_web::Error>>>>,
    backlog: Arc<Backlog>,
}

impl Stream for Counted {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Ok(bytes))) = &item {
            self.backlog.taken(bytes.len());
        }
        item
    }
}

/// Upgrades the request and starts the session on it.
pub fn start(
    session: Session,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    let mut response = ws::handshake(req)?;
    let codec = Codec::new().max_size(session.shared.max_frame_bytes);
    let backlog = session.backlog.clone();
    let inner = Box::pin(WebsocketContext::with_codec(session, payload, codec));
    Ok(response.streaming(Counted { inner, backlog }))
}
