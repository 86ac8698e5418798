//! The user's requests over the socket: `send`, `read` and the audience of `typing` are asked
//! of the services through the engine's [`Service`] port (exactly what the REST API does, sends
//! drawing on the same per-user allowance); `typing` and `presence` then go through the broker.
//! None is awaited in the session's mailbox: each runs as a spawned future that answers when
//! done.

use std::num::NonZeroU32;
use std::time::Duration;

use actix::prelude::*;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::{json, Value};

use super::{Session, Wire};
use crate::actors::broker::{Ephemeral, OnlineUsers};
use crate::actors::service::{Refused, SendRequest};
use crate::protocol::{ephemeral_frame, Close, ServerFrame};

/// `typing` frames forwarded per session: one per this interval; the rest are dropped.
const TYPING_INTERVAL: Duration = Duration::from_secs(1);

/// Ephemeral channel messages (`publish`) forwarded per session and second; the rest are dropped.
pub(super) const CHANNEL_MESSAGES_PER_SECOND: u32 = 10;

/// Frames over the rate, within one heartbeat interval, after which the client is taken for
/// abusive and the session closed (1008).
const ABUSE_LIMIT: u32 = 100;

/// A session's request rates.
pub(super) struct Limits {
    /// Every frame from the client (pings included), whatever it asks for.
    frames: DefaultDirectRateLimiter,
    /// Frames refused since the last heartbeat.
    pub(super) frames_refused: u32,
    typing: DefaultDirectRateLimiter,
    /// Ephemeral channel messages (`publish`).
    pub(super) publish: DefaultDirectRateLimiter,
}

impl Limits {
    /// `frames_per_second`: the client's sustained rate; twice as many may come in a burst.
    pub(super) fn new(frames_per_second: NonZeroU32) -> Self {
        let per_second = |n| NonZeroU32::new(n).expect("a positive rate");
        Self {
            frames: RateLimiter::direct(
                Quota::per_second(frames_per_second)
                    .allow_burst(frames_per_second.saturating_mul(per_second(2))),
            ),
            frames_refused: 0,
            typing: RateLimiter::direct(
                Quota::with_period(TYPING_INTERVAL).expect("a positive interval"),
            ),
            publish: RateLimiter::direct(Quota::per_second(per_second(
                CHANNEL_MESSAGES_PER_SECOND,
            ))),
        }
    }
}

impl<W: Wire> Session<W> {
    /// Whether a frame from the client is within its rate. The first refused one in a heartbeat
    /// interval is answered with `rate-limited` (later ones are dropped silently, so a flood
    /// gets no flood back); past [`ABUSE_LIMIT`] the session is closed.
    pub(super) fn admit_frame(&mut self, ctx: &mut W::Context) -> bool {
        let Err(not_until) = self.limits.frames.check() else {
            return true;
        };
        self.limits.frames_refused += 1;
        if self.limits.frames_refused > ABUSE_LIMIT {
            log::info!(
                "closing a flooding client account={} user={} session={}",
                self.identity.account,
                self.identity.user,
                self.id
            );
            self.close(ctx, Close::TooManyFrames);
        } else if self.limits.frames_refused == 1 {
            let message = "too many frames; this one and any more until retry_after_ms are dropped";
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            self.rate_limited(ctx, wait, message, None);
        }
        false
    }

    /// Answers a request over its rate with `rate-limited` and when to try again.
    fn rate_limited(
        &mut self,
        ctx: &mut W::Context,
        wait: Duration,
        message: &str,
        reference: Option<Value>,
    ) {
        let frame = ServerFrame::Error {
            code: "rate-limited",
            message: message.to_owned(),
            reference,
            retry_after_ms: Some(wait.as_millis().max(1) as u64),
        };
        self.write(ctx, &frame);
    }

    fn refuse(&mut self, ctx: &mut W::Context, refused: Refused, reference: Option<Value>) {
        let frame = ServerFrame::Error {
            code: refused.code,
            message: refused.message,
            reference,
            retry_after_ms: None,
        };
        self.write(ctx, &frame);
    }

    pub(super) fn on_send(
        &mut self,
        send: SendRequest,
        reference: Option<Value>,
        ctx: &mut W::Context,
    ) {
        if let Err(wait) = self.shared.service.admit_send(&self.identity) {
            let message = "too many messages; slow down";
            return self.rate_limited(ctx, wait, message, reference);
        }
        if let Err(refused) = self.shared.service.check_send(&send) {
            return self.refuse(ctx, refused, reference);
        }
        let work = self.shared.service.send(&self.identity, send);
        ctx.spawn(
            work.into_actor(self)
                .map(move |result, session, ctx| match result {
                    Ok(sent) => {
                        let ack = ServerFrame::Ack {
                            reference,
                            conversation_id: &sent.conversation_id,
                            message_id: Some(&sent.message_id),
                            seq: Some(sent.seq),
                            duplicate: sent.duplicate,
                        };
                        session.write(ctx, &ack);
                    }
                    Err(refused) => session.refuse(ctx, refused, reference),
                }),
        );
    }

    pub(super) fn on_read(
        &mut self,
        conversation_id: String,
        up_to: Option<String>,
        reference: Option<Value>,
        ctx: &mut W::Context,
    ) {
        let work = (self.shared.service).read(&self.identity, conversation_id.clone(), up_to);
        ctx.spawn(
            work.into_actor(self)
                .map(move |result, session, ctx| match result {
                    Ok(()) => {
                        let ack = ServerFrame::Ack {
                            reference,
                            conversation_id: &conversation_id,
                            message_id: None,
                            seq: None,
                            duplicate: false,
                        };
                        session.write(ctx, &ack);
                    }
                    Err(refused) => session.refuse(ctx, refused, reference),
                }),
        );
    }

    /// Forwards "typing" to the others who see the conversation; at most one per
    /// [`TYPING_INTERVAL`], the rest dropped (a typing indicator loses nothing by it).
    pub(super) fn on_typing(&mut self, conversation_id: String, ctx: &mut W::Context) {
        if self.limits.typing.check().is_err() {
            return;
        }
        let broker = self.shared.broker.clone();
        let (account, user) = (self.identity.account.clone(), self.identity.user.clone());
        let audience =
            (self.shared.service).typing_audience(&self.identity, conversation_id.clone());
        let work = async move {
            let audience = audience.await?;
            let data = json!({ "conversation_id": conversation_id, "user_id": user.as_str() });
            broker.do_send(Ephemeral {
                account,
                users: audience,
                except: Some(user),
                channel: None,
                frame: ephemeral_frame("typing", &data),
            });
            Ok::<_, Refused>(())
        };
        ctx.spawn(work.into_actor(self).map(|result, session, ctx| {
            if let Err(refused) = result {
                session.refuse(ctx, refused, None);
            }
        }));
    }

    pub(super) fn on_presence(&mut self, reference: Option<Value>, ctx: &mut W::Context) {
        let query = self.shared.broker.send(OnlineUsers {
            account: self.identity.account.clone(),
        });
        ctx.spawn(query.into_actor(self).map(move |users, session, ctx| {
            let users = users.unwrap_or_default();
            session.write(
                ctx,
                &ServerFrame::Presence {
                    reference,
                    users: &users,
                },
            );
        }));
    }
}
