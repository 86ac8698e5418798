//! Which accepted connections the server takes on, and how long they may go without a request.
//! At most so many open connections per client address (an IPv6 /64), WebSockets included, and
//! at most so many server-wide that have not yet sent a whole first request: checked as a
//! connection is accepted, before a byte of it is read; a connection past either cap is closed
//! at once, the cheapest refusal there is (an answer would mean reading its request first). And
//! once a request has been answered, the next must arrive whole within [`NEXT_REQUEST_WITHIN`]
//! (actix-http times only a connection's first request head).
//!
//! One [`Admission`] is shared by every worker. It knows nothing of HTTP but "a request has
//! arrived" and "it has been answered" ([`Requests`]); it uses only [`crate::config`] and
//! [`crate::metrics`].

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use actix_web::rt::net::TcpStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::pacing::Pace;
use crate::config::EdgeLimits;
use crate::metrics;

/// How long after an answer the connection's next request must have arrived whole: the 5 s a
/// kept-alive connection may wait for its next request (actix-http's default), then the 5 s a
/// first request gets for its head.
pub const NEXT_REQUEST_WITHIN: Duration = Duration::from_secs(10);

/// The counts behind the caps.
pub struct Admission {
    /// Open connections allowed per address; 0: no cap.
    per_address: usize,
    /// Connections allowed without a whole first request; 0: no cap.
    max_pending: usize,
    /// Open connections per address. An address leaves the map with its last connection, so it
    /// holds no more entries than there are open connections.
    open: Mutex<HashMap<IpAddr, usize>>,
    pending: AtomicUsize,
}

/// Why a connection was refused (the label of `switchboard_connections_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    PerAddress,
    Pending,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Self::PerAddress => "per-address",
            Self::Pending => "pending",
        }
    }
}

impl Admission {
    pub fn new(limits: &EdgeLimits) -> Arc<Self> {
        Arc::new(Self {
            per_address: limits.max_connections_per_address,
            max_pending: limits.max_pending_connections,
            open: Mutex::default(),
            pending: AtomicUsize::new(0),
        })
    }

    /// Takes on an accepted connection, or refuses it (dropping, so closing, it); what it holds
    /// is given back when the [`Admitted`] (or the [`Ticket`] split from it) is dropped.
    pub fn admit(self: &Arc<Self>, stream: TcpStream) -> Result<Admitted, Refusal> {
        let peer = stream.peer_addr().ok().map(|peer| peer.ip());
        let address = match peer {
            Some(ip) if self.per_address > 0 => Some(self.enter_address(ip)?),
            _ => None,
        };
        let requests = self.enter_pending()?;
        Ok(Admitted {
            stream,
            ticket: Ticket {
                _address: address,
                requests: Rc::new(requests),
            },
            alarm: None,
        })
    }

    fn enter_address(self: &Arc<Self>, ip: IpAddr) -> Result<AddressSlot, Refusal> {
        let key = address_key(ip);
        let mut open = self.open.lock().expect("not poisoned");
        let count = open.entry(key).or_insert(0);
        // Never at the cap when just inserted (the cap is at least 1): no empty entry stays.
        if *count >= self.per_address {
            metrics::connection_refused(Refusal::PerAddress.label());
            log::debug!("connection from {ip} refused: its address has {count} open");
            return Err(Refusal::PerAddress);
        }
        *count += 1;
        Ok(AddressSlot {
            admission: self.clone(),
            key,
        })
    }

    fn enter_pending(self: &Arc<Self>) -> Result<Requests, Refusal> {
        let before = self.pending.fetch_add(1, Ordering::Relaxed);
        if self.max_pending > 0 && before >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            metrics::connection_refused(Refusal::Pending.label());
            log::debug!("connection refused: {before} connections have not sent a request yet");
            return Err(Refusal::Pending);
        }
        Ok(Requests {
            admission: self.clone(),
            pending: Cell::new(true),
            next_due: Cell::new(None),
            pace: Pace::default(),
        })
    }
}

/// The address a cap counts under: an IPv4 address (also when mapped into IPv6), or an IPv6
/// /64 — the least a site is given, so one client cannot spread itself over 2^64 addresses.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u64::MAX as u128))),
        },
    }
}

/// A connection's place under its address's cap.
struct AddressSlot {
    admission: Arc<Admission>,
    key: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.admission.open.lock().expect("not poisoned");
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// A connection's requests as its socket needs to know them: whether the first has arrived (till
/// then the connection counts among the pending), and by when the next must have.
pub struct Requests {
    admission: Arc<Admission>,
    pending: Cell<bool>,
    /// Set when a request has been answered; cleared when the next arrives.
    next_due: Cell<Option<Instant>>,
    /// When the socket may read the next request.
    pace: Pace,
}

impl Requests {
    /// A request's head has arrived whole (and its body, if any, is to follow).
    pub fn arrived(&self, has_body: bool) {
        if self.pending.replace(false) {
            self.admission.pending.fetch_sub(1, Ordering::Relaxed);
        }
        self.next_due.set(None);
        self.pace.arrived(has_body);
    }

    /// A request has been answered: the clock for the next one starts.
    pub fn answered(&self) {
        self.next_due
            .set(Some(Instant::now() + NEXT_REQUEST_WITHIN));
        self.pace.answered();
    }
}

impl Drop for Requests {
    fn drop(&mut self) {
        if self.pending.get() {
            self.admission.pending.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// What an admitted connection holds, for as long as it is open.
pub struct Ticket {
    _address: Option<AddressSlot>,
    /// Shared with the connection's requests (as connection data), which tell it of each one.
    requests: Rc<Requests>,
}

impl Ticket {
    pub fn requests(&self) -> Rc<Requests> {
        self.requests.clone()
    }
}

/// An admitted connection: its socket and its [`Ticket`], as actix-http's I/O. Reads go one
/// request at a time ([`super::pacing`]), and end (as if the client had closed) once the next
/// request is overdue.
pub struct Admitted {
    stream: TcpStream,
    ticket: Ticket,
    /// Wakes the connection when the next request falls due; made on first need.
    alarm: Option<Pin<Box<Sleep>>>,
}

impl Admitted {
    pub fn ticket(&self) -> &Ticket {
        &self.ticket
    }

    /// The socket, for a WebSocket's session, and the ticket, to be held as long as it.
    pub fn into_parts(self) -> (TcpStream, Ticket) {
        (self.stream, self.ticket)
    }

    /// Ready once the next request is overdue.
    fn poll_overdue(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(due) = self.ticket.requests.next_due.get() else {
            return Poll::Pending;
        };
        let alarm = self
            .alarm
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if alarm.deadline() != due {
            alarm.as_mut().reset(due);
        }
        ready!(alarm.as_mut().poll(cx));
        log::debug!("connection closed: no whole request within {NEXT_REQUEST_WITHIN:?}");
        Poll::Ready(())
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this
            .ticket
            .requests
            .pace
            .poll_read(&mut this.stream, cx, buf)
        {
            // Nothing read: the end of the stream, to actix-http.
            Poll::Pending => this.poll_overdue(cx).map(Ok),
            read => read,
        }
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.ticket.requests.pace.wrote(buf.len(), &written);
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        let offered = bufs.iter().map(|b| b.len()).sum();
        this.ticket.requests.pace.wrote(offered, &written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::address_key;
    use std::net::IpAddr;

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let key = |s: &str| address_key(s.parse::<IpAddr>().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
    }
}
