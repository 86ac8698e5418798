//! The channels a session follows: those given on connecting, and `subscribe` / `unsubscribe`
//! frames at any time — each checked against the token's grant (and again when a fresh token
//! comes with `auth`), bounded per session, and registered with the room, which delivers a
//! channel's events only to its followers.
//!
//! A `subscribe` is answered by the room (through this session's mailbox, so the answer comes
//! before any event of the channel) with its position: the channel's events after it arrive
//! live. With `since`, the channel's events after `since`, up to that position, are replayed
//! first (see [`super::replay`]), and its live events wait until they are written.

use std::sync::Arc;

use serde_json::Value;

use super::{Session, Wire};
use crate::actors::broker::{Ephemeral, Follow, FollowRequest};
use crate::channel::{Channel, ChannelsError, MAX_CHANNELS_PER_SESSION};
use crate::protocol::{
    channel_message_frame, check_event_name, FrameError, ServerFrame, SinceError,
};

/// What the session follows.
#[derive(Default)]
pub(super) struct Following {
    /// Followed now; each is in the room's index too, or on its way there.
    pub(super) channels: Vec<Channel>,
    /// Given on connecting: what a replay after `?since=` (or a `resume` frame) covers.
    pub(super) at_connect: Arc<[Channel]>,
    /// Subscribes that came before the room took the session in, sent to it once it has.
    early: Vec<(Channel, FollowRequest)>,
}

impl<W: Wire> Session<W> {
    /// The channels the session follows from the start, already checked against its token.
    pub fn with_channels(mut self, channels: Vec<Channel>) -> Self {
        self.following.at_connect = channels.clone().into();
        self.following.channels = channels;
        self
    }

    fn channel_error(
        &mut self,
        ctx: &mut W::Context,
        error: &ChannelsError,
        reference: Option<Value>,
    ) {
        let frame = ServerFrame::Error {
            code: error.code(),
            message: error.to_string(),
            reference,
            retry_after_ms: None,
        };
        self.write(ctx, &frame);
    }

    /// A `subscribe` frame.
    pub(super) fn on_subscribe(
        &mut self,
        name: &str,
        since: Option<Value>,
        reference: Option<Value>,
        ctx: &mut W::Context,
    ) {
        let channel = match Channel::new(name) {
            Ok(channel) => channel,
            Err(e) => return self.channel_error(ctx, &ChannelsError::Invalid(e), reference),
        };
        let refusal = if !self.identity.channels.allows(&channel) {
            Some(ChannelsError::Forbidden(channel.clone()))
        } else if !self.following.channels.contains(&channel)
            && self.following.channels.len() >= MAX_CHANNELS_PER_SESSION
        {
            Some(ChannelsError::TooMany)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            return self.channel_error(ctx, &refusal, reference);
        }
        let since = match since.as_ref().map(SinceError::parse).transpose() {
            Ok(since) => since,
            Err(error) => return self.refuse_since_with(ctx, error, reference),
        };
        // A channel already followed has been delivered live all along: nothing to replay.
        let since = since.filter(|_| !self.following.channels.contains(&channel));
        if since.is_some() && self.replaying() {
            let frame = ServerFrame::Error {
                code: "replay-in-progress",
                message: "a replay is under way; subscribe with `since` once it is done".into(),
                reference,
                retry_after_ms: None,
            };
            return self.write(ctx, &frame);
        }
        if !self.following.channels.contains(&channel) {
            self.following.channels.push(channel.clone());
        }
        let request = FollowRequest { reference, since };
        if self.resume.joined() {
            self.follow(channel, Some(request));
        } else {
            self.following.early.push((channel, request));
        }
    }

    /// An `unsubscribe` frame: answered at once (the room hears of it before any later publish).
    pub(super) fn on_unsubscribe(
        &mut self,
        name: &str,
        reference: Option<Value>,
        ctx: &mut W::Context,
    ) {
        let channel = match Channel::new(name) {
            Ok(channel) => channel,
            Err(e) => return self.channel_error(ctx, &ChannelsError::Invalid(e), reference),
        };
        self.stop_following(&channel);
        let answer = ServerFrame::Unsubscribed {
            reference,
            channel: channel.as_str(),
            reason: None,
        };
        self.write(ctx, &answer);
    }

    fn stop_following(&mut self, channel: &Channel) {
        if !self.following.channels.contains(channel) {
            return;
        }
        self.following.channels.retain(|c| c != channel);
        self.following.early.retain(|(c, _)| c != channel);
        if self.resume.joined() {
            self.shared.broker.do_send(Follow {
                account: self.identity.account.clone(),
                session: self.id,
                channel: channel.clone(),
                follow: false,
                request: None,
            });
        }
    }

    fn follow(&self, channel: Channel, request: Option<FollowRequest>) {
        self.shared.broker.do_send(Follow {
            account: self.identity.account.clone(),
            session: self.id,
            channel,
            follow: true,
            request,
        });
    }

    /// The room took the session in: the subscribes that came before go to it now.
    pub(super) fn send_early_follows(&mut self) {
        for (channel, request) in std::mem::take(&mut self.following.early) {
            self.follow(channel, Some(request));
        }
    }

    /// The room's answer to a `subscribe`: the channel's events after `seq` come live; with
    /// `since`, those after `since` are replayed first.
    pub(super) fn subscribed(
        &mut self,
        channel: Channel,
        seq: u64,
        request: FollowRequest,
        ctx: &mut W::Context,
    ) {
        // Unsubscribed while the room was answering: the room has let go of it too (it hears
        // of the unsubscribe after the subscribe), so there is nothing to announce or replay.
        if !self.following.channels.contains(&channel) {
            return;
        }
        let FollowRequest { reference, since } = request;
        match since {
            // Only the room knows the channel's position, so the follow is undone here: the
            // client hears only the refusal and follows nothing new.
            Some(since) if since > seq => {
                self.stop_following(&channel);
                self.refuse_since_with(ctx, SinceError::InFuture, reference);
            }
            // Another replay began meanwhile (the room could not queue an event): live only.
            Some(_) if self.replaying() => {
                self.subscribed_frame(ctx, &channel, seq, None, reference);
            }
            Some(since) => self.begin_channel_replay(channel, since, seq, reference, ctx),
            None => self.subscribed_frame(ctx, &channel, seq, None, reference),
        }
    }

    pub(super) fn subscribed_frame(
        &mut self,
        ctx: &mut W::Context,
        channel: &Channel,
        seq: u64,
        since: Option<u64>,
        reference: Option<Value>,
    ) {
        let frame = ServerFrame::Subscribed {
            reference,
            channel: channel.as_str(),
            seq,
            since,
        };
        self.write(ctx, &frame);
    }

    /// A `publish` frame: an ephemeral message to the channel's followers (other than this
    /// user), where the token's `publish` claim allows it. At most
    /// [`super::requests::CHANNEL_MESSAGES_PER_SECOND`] a second are forwarded; the rest are dropped.
    /// Answers whether it was taken (forwarded or dropped), so that a wire acknowledging every
    /// command (Socket.IO) can say so; a refusal has been answered with `reference`.
    pub(crate) fn on_channel_message(
        &mut self,
        name: &str,
        event: &str,
        data: Option<Value>,
        reference: Option<Value>,
        ctx: &mut W::Context,
    ) -> bool {
        let channel = match Channel::new(name) {
            Ok(channel) => channel,
            Err(e) => {
                self.channel_error(ctx, &ChannelsError::Invalid(e), reference);
                return false;
            }
        };
        if !self.identity.publish.allows(&channel) {
            self.channel_error(ctx, &ChannelsError::Forbidden(channel), reference);
            return false;
        }
        if let Err(reason) = check_event_name(event) {
            let error = FrameError::Invalid(format!("event: {reason}"));
            let frame = ServerFrame::Error {
                code: error.code(),
                message: error.to_string(),
                reference,
                retry_after_ms: None,
            };
            self.write(ctx, &frame);
            return false;
        }
        if self.limits.publish.check().is_err() {
            return true;
        }
        let data = data.unwrap_or(Value::Null);
        let user = self.identity.user.clone();
        let frame = channel_message_frame(channel.as_str(), event, &data, user.as_str());
        self.shared.broker.do_send(Ephemeral {
            account: self.identity.account.clone(),
            users: None,
            except: Some(user),
            channel: Some(channel),
            frame,
        });
        true
    }

    /// A fresh token took over: the channels it no longer allows are left, and the client told.
    pub(super) fn narrow_channels(&mut self, ctx: &mut W::Context) {
        let grant = self.identity.channels.clone();
        let lost: Vec<Channel> = (self.following.channels.iter())
            .filter(|channel| !grant.allows(channel))
            .cloned()
            .collect();
        for channel in lost {
            self.stop_following(&channel);
            let notice = ServerFrame::Unsubscribed {
                reference: None,
                channel: channel.as_str(),
                reason: Some("channel-forbidden"),
            };
            self.write(ctx, &notice);
        }
    }
}
