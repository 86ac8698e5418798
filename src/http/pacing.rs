//! One request at a time: what a connection's socket hands actix-http to read.
//!
//! Left to itself, actix-http reads whatever has arrived (32 KiB at a go), decodes every whole
//! request in it, and writes their answers into its write buffer whether or not the client reads
//! them; with its queue of decoded requests full and its read buffer too, it wakes itself again
//! and again. Ten connections each pipelining 50,000 `GET /healthz` (1.7 MB) without reading an
//! answer grew the (debug) server by 351 MiB (tests/pipelining.rs). So a connection's socket
//! hands it one request head at a time: it peeks at what has arrived, gives up to the end of the
//! first head (through a [`PEEK_BYTES`] window), and gives nothing more until that request has
//! been answered and the answer taken by the kernel whole. What a pipelining client sends beyond that waits in the
//! kernel's socket buffers, which push back on it; what the server holds for it is one request
//! and one answer. A request with a body is read on freely until it has been answered: the body
//! is under [`super::body`]'s deadline and actix-http's payload back-pressure.
//!
//! Used by [`super::admission`]'s connection I/O; knows the socket and HTTP/1.1's head syntax,
//! nothing of actix.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use actix_web::rt::net::TcpStream;
use tokio::io::{AsyncRead, ReadBuf};

/// The most of a request head handed over per read: a head longer than this takes several.
pub const PEEK_BYTES: usize = 4096;

/// Where the connection's current request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// Between requests, or partway through a head: reading.
    Reading,
    /// A whole head has been handed over; its request has not reached the app yet.
    Handed,
    /// A request without a body is with the app, or its answer on its way out.
    Answering,
    /// A request with a body is with the app: its body (and whatever follows) is read freely.
    Body,
}

/// One connection's pace, shared by its socket (reads and writes) and its requests (arrived,
/// answered). Single-threaded, like the connection.
pub struct Pace {
    turn: Cell<Turn>,
    head: Cell<HeadEnd>,
    /// A write took less than it was given: part of an answer is still in actix-http's buffer.
    unsent: Cell<bool>,
    /// The connection's task, while its reading waits for an answer to go out.
    waiting: Cell<Option<Waker>>,
}

impl Default for Pace {
    fn default() -> Self {
        Self {
            turn: Cell::new(Turn::Reading),
            head: Cell::new(HeadEnd::default()),
            unsent: Cell::new(false),
            waiting: Cell::new(None),
        }
    }
}

impl Pace {
    /// The request whose head was handed over has reached the app.
    pub fn arrived(&self, has_body: bool) {
        self.turn.set(if has_body {
            Turn::Body
        } else {
            Turn::Answering
        });
        // A body is read on: the reading that waited for this request must go on now.
        if has_body {
            self.wake();
        }
    }

    /// Its answer has been written to the connection's buffer: the next head may be read once
    /// that buffer has gone out.
    pub fn answered(&self) {
        self.turn.set(Turn::Reading);
        self.head.set(HeadEnd::default());
        self.wake();
    }

    /// A write of `offered` bytes came out as `written`.
    pub fn wrote(&self, offered: usize, written: &Poll<io::Result<usize>>) {
        match written {
            Poll::Ready(Ok(n)) if *n >= offered => {
                if self.unsent.replace(false) {
                    self.wake();
                }
            }
            Poll::Ready(Ok(_)) | Poll::Pending => self.unsent.set(true),
            Poll::Ready(Err(_)) => {}
        }
    }

    fn wake(&self) {
        if let Some(waker) = self.waiting.take() {
            waker.wake();
        }
    }

    /// Reads from `socket` into `buf` as far as the connection's turn allows: `Pending` while an
    /// answer is owed or unsent (woken when it has gone out).
    pub fn poll_read(
        &self,
        socket: &mut TcpStream,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match (self.turn.get(), self.unsent.get()) {
            (Turn::Body, false) => return Pin::new(socket).poll_read(cx, buf),
            (Turn::Reading, false) => {}
            _ => {
                self.waiting.set(Some(cx.waker().clone()));
                return Poll::Pending;
            }
        }
        let mut window = [0u8; PEEK_BYTES];
        let room = buf.remaining().min(PEEK_BYTES);
        let mut peek = ReadBuf::new(&mut window[..room]);
        ready!(socket.poll_peek(cx, &mut peek))?;
        let peeked = peek.filled();
        if peeked.is_empty() {
            // The end of the stream (or no room, which actix-http never asks with).
            return Poll::Ready(Ok(()));
        }
        let (take, _) = self.head.get().scan(peeked);
        let mut into = ReadBuf::new(buf.initialize_unfilled_to(take));
        // What was peeked is there: this read is ready at once, and takes no more than that.
        ready!(Pin::new(socket).poll_read(cx, &mut into))?;
        let read = into.filled().len();
        buf.advance(read);
        let (_, after) = self.head.get().scan(&peeked[..read]);
        match after {
            Some(state) => self.head.set(state),
            None => self.turn.set(Turn::Handed),
        }
        Poll::Ready(Ok(()))
    }
}

/// How far a request head has come, byte by byte: it ends at its first empty line. Blank lines
/// before a request are skipped, as HTTP/1.1 lets a server do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct HeadEnd {
    /// A byte of the request line has been seen.
    started: bool,
    /// The current line has nothing in it yet but `\r`.
    at_line_start: bool,
}

impl HeadEnd {
    /// How many of `bytes` belong to this head, and the state after them: `None` if the head
    /// ends within them (after the count given).
    fn scan(mut self, bytes: &[u8]) -> (usize, Option<Self>) {
        for (i, &b) in bytes.iter().enumerate() {
            match b {
                b'\r' => {}
                b'\n' if !self.started => {}
                b'\n' if self.at_line_start => return (i + 1, None),
                b'\n' => self.at_line_start = true,
                _ => {
                    self.started = true;
                    self.at_line_start = false;
                }
            }
        }
        (bytes.len(), Some(self))
    }
}

#[cfg(test)]
mod tests {
    use super::HeadEnd;

    #[test]
    fn a_head_ends_at_its_first_empty_line_whatever_the_pieces() {
        let two = b"\r\nGET / HTTP/1.1\r\nHost: s\r\n\r\nGET /b HTTP/1.1\n\n";
        let start = HeadEnd::default();
        assert_eq!(start.scan(two), (29, None));
        assert_eq!(start.scan(&two[29..]), (two.len() - 29, None));
        // Split anywhere, the same end.
        for split in 1..29 {
            let (n, state) = start.scan(&two[..split]);
            assert_eq!(n, split);
            assert_eq!(state.unwrap().scan(&two[split..]).0, 29 - split);
        }
        assert_eq!(start.scan(b"\r\n\r\n").1, Some(start));
    }
}
