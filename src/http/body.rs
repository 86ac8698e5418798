//! Request bodies under a deadline. Every body must arrive whole within the body timeout and,
//! once [`GRACE`] is over, at a minimum average rate; else its request is answered 408
//! `request-timeout` and the connection closed. One middleware wraps every request's payload, so
//! no handler can forget it, and whatever a handler leaves unread closes the connection after
//! the answer rather than being read on. It also words the payload's errors for people.
//!
//! An actix-web middleware; uses [`crate::error`] and [`crate::metrics`], and no route.

use std::cell::{Cell, RefCell};
use std::future::{ready, Future, Ready};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use actix_http::ConnectionType;
use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::error::PayloadError;
use actix_web::web::Bytes;
use actix_web::{HttpMessage, ResponseError};
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

use crate::config::EdgeLimits;
use crate::error::{unreadable_body, ApiError};
use crate::metrics;

/// How long a body may take before the minimum rate applies: its first bytes may wait on a slow
/// start, a proxy's buffering, a lost packet.
pub const GRACE: Duration = Duration::from_secs(5);

/// The middleware: `App::wrap(BodyDeadline::new(&limits))`.
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline {
    timeout: Duration,
    /// Bytes per second; 0: none.
    min_rate: u32,
}

impl BodyDeadline {
    pub fn new(limits: &EdgeLimits) -> Self {
        Self {
            timeout: limits.body_timeout,
            min_rate: limits.body_min_rate,
        }
    }

    /// When a body of which `received` bytes have come, started at `start`, is overdue: at the
    /// timeout, or earlier once it falls below the minimum rate after the grace.
    fn due(&self, start: Instant, received: u64) -> Instant {
        let allowed = match self.min_rate {
            0 => self.timeout,
            rate => {
                let earned = Duration::from_secs_f64(received as f64 / f64::from(rate));
                self.timeout.min(GRACE + earned)
            }
        };
        start + allowed
    }
}

impl<S, B> Transform<S, ServiceRequest> for BodyDeadline
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = actix_web::Error;
    type Transform = Deadlined<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(Deadlined {
            service,
            limits: *self,
        }))
    }
}

pub struct Deadlined<S> {
    service: S,
    limits: BodyDeadline,
}

impl<S, B> Service<ServiceRequest> for Deadlined<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>>>>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        let body = match req.take_payload() {
            Payload::None => None,
            payload => {
                let body = Rc::new(BodyState::default());
                let timed = Timed {
                    inner: Some(payload),
                    limits: self.limits,
                    clock: None,
                    received: 0,
                    done: false,
                    state: body.clone(),
                };
                let stream: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> =
                    Box::pin(timed);
                req.set_payload(Payload::from(stream));
                Some(body)
            }
        };
        let response = self.service.call(req);
        Box::pin(async move {
            let response = response.await?.map_into_boxed_body();
            Ok(match body {
                Some(body) => body.settle(response),
                None => response,
            })
        })
    }
}

/// What became of a request's body, shared by its [`Timed`] stream and the middleware.
#[derive(Default)]
struct BodyState {
    timed_out: Cell<bool>,
    /// The payload, when its reader was dropped before the end.
    unread: RefCell<Option<Payload>>,
}

impl BodyState {
    /// The response as it goes out: 408 if the body timed out; and, if the body was left
    /// unread, the connection closed after it.
    fn settle(&self, mut response: ServiceResponse<BoxBody>) -> ServiceResponse<BoxBody> {
        if self.timed_out.get() {
            let (req, _) = response.into_parts();
            response = ServiceResponse::new(req, ApiError::RequestTimeout.error_response());
            close(&mut response);
        }
        match self.unread.take() {
            None => response,
            Some(unread) => {
                close(&mut response);
                response.map_body(|_, body| {
                    BoxBody::new(HoldingUnread {
                        body,
                        _unread: unread,
                    })
                })
            }
        }
    }
}

fn close(response: &mut ServiceResponse<BoxBody>) {
    response
        .response_mut()
        .head_mut()
        .set_connection_type(ConnectionType::Close);
}

/// The body's clock, started when the body is first read (time the server spends before then is
/// not the client's).
struct Clock {
    start: Instant,
    alarm: Pin<Box<Sleep>>,
}

/// A request's payload under its deadline.
struct Timed {
    /// Taken at the end of the body; otherwise handed to [`BodyState::unread`] on drop.
    inner: Option<Payload>,
    limits: BodyDeadline,
    clock: Option<Clock>,
    received: u64,
    /// Failed or timed out: nothing more is read.
    done: bool,
    state: Rc<BodyState>,
}

impl Stream for Timed {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut().filter(|_| !this.done) else {
            return Poll::Ready(None);
        };
        let limits = this.limits;
        let clock = this.clock.get_or_insert_with(|| {
            let start = Instant::now();
            let alarm = Box::pin(tokio::time::sleep_until(limits.due(start, 0)));
            Clock { start, alarm }
        });
        match Pin::new(inner).poll_next(cx) {
            Poll::Ready(Some(Ok(bytes))) => {
                this.received += bytes.len() as u64;
                Poll::Ready(Some(Ok(bytes)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                let message = unreadable_body(&e);
                Poll::Ready(Some(Err(PayloadError::Io(io::Error::other(message)))))
            }
            Poll::Ready(None) => {
                this.inner = None;
                Poll::Ready(None)
            }
            Poll::Pending => loop {
                ready!(clock.alarm.as_mut().poll(cx));
                // The alarm was set for the deadline as it stood; bytes since have moved it on.
                let due = limits.due(clock.start, this.received);
                if Instant::now() < due {
                    clock.alarm.as_mut().reset(due);
                    continue;
                }
                this.done = true;
                this.state.timed_out.set(true);
                metrics::body_timeout();
                let late = io::Error::new(io::ErrorKind::TimedOut, "the body came too slowly");
                return Poll::Ready(Some(Err(PayloadError::Io(late))));
            },
        }
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        if let Some(unread) = self.inner.take() {
            self.state.unread.replace(Some(unread));
        }
    }
}

/// A response body, holding the request body its handler left unread until the response has
/// gone. actix-http closes a connection whose request body is still held unread once it has
/// answered; but a chunked body whose reader was dropped it reads and discards — for as long as
/// the client keeps sending, under no deadline.
struct HoldingUnread {
    body: BoxBody,
    _unread: Payload,
}

impl MessageBody for HoldingUnread {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}
