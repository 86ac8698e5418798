//! The room's members: each session's delivery address, framing, backlog and channels, how a
//! frame is offered to one (to every member, one user's, or a channel's followers — found in the
//! room's channel index, never by looking at every member), and who joins.
//!
//! Part of the room actor (engine layer): uses `event`, `protocol` and the session's messages.

use std::sync::Arc;

use actix::prelude::*;
use bytestring::ByteString;

use super::super::broker::{Follow, Join, SessionInfo};
use super::super::session::{frame_size, Backlog, Deliver, Framing, FromRoom, Reservation};
use super::Room;
use crate::channel::Channel;
use crate::event::{Handed, RoomEvent};
use crate::ids::{SessionId, UserId};
use crate::metrics;

/// A member with more than this queued for its client no longer holds publishers back (see
/// [`Handed`]): a client that stopped reading must not slow its whole account.
const PACED_BELOW: usize = 16 * 1024;

/// A frame on its way to the members: native, and framed for Socket.IO when a member first
/// needs it — once per event, however many members speak Socket.IO.
pub(super) struct Framed<'a> {
    native: &'a ByteString,
    socket_io: std::cell::OnceCell<Option<ByteString>>,
}

impl<'a> Framed<'a> {
    pub(super) fn new(native: &'a ByteString) -> Self {
        Self {
            native,
            socket_io: std::cell::OnceCell::new(),
        }
    }

    /// `None` for a frame that is not an event frame: every frame here was built by this node,
    /// so that is a bug, said once per frame; the frame is dropped.
    fn get(&self, framing: Framing) -> Option<&ByteString> {
        match framing {
            Framing::Native => Some(self.native),
            Framing::SocketIo => self
                .socket_io
                .get_or_init(|| {
                    let encoded = framing.encode(self.native);
                    if encoded.is_none() {
                        log::error!("a frame could not be framed for Socket.IO; dropped");
                    }
                    encoded
                })
                .as_ref(),
        }
    }
}

pub(super) struct Member {
    pub(super) user: UserId,
    /// The channels it follows, each also in the room's index [`Room::channels`].
    pub(super) channels: Vec<Channel>,
    framing: Framing,
    transport: &'static str,
    deliver: Recipient<Deliver>,
    pub(super) notices: Recipient<FromRoom>,
    backlog: Arc<Backlog>,
    /// Since when (milliseconds since the Unix epoch), for the control API.
    connected_at: i64,
}

impl Member {
    /// What the control API shows of it.
    pub(super) fn info(&self, id: SessionId) -> SessionInfo {
        SessionInfo {
            session_id: id.to_string(),
            user_id: self.user.as_str().to_owned(),
            transport: self.transport,
            connected_at: self.connected_at,
            channels: self
                .channels
                .iter()
                .map(|c| c.as_str().to_owned())
                .collect(),
            queued_bytes: self.backlog.queued(),
        }
    }
}

impl Member {
    /// Queues a frame for the member unless its client is too far behind. The session then
    /// closes itself as a slow consumer (at its next message or heartbeat), and the client
    /// resumes from its last sequence number, so the frames not queued are not lost. A session
    /// replaying history is not closed for a stored event that does not fit: it is told it
    /// missed it, and its replay reads it from the database. Answers whether the frame was
    /// queued.
    fn offer(&self, framed: &Framed, seq: Option<u64>, handed: Option<&Handed>) -> bool {
        let Some(frame) = framed.get(self.framing) else {
            return false;
        };
        let handed = handed.filter(|_| self.backlog.queued() < PACED_BELOW);
        let size = frame_size(frame.len());
        let queued = match seq {
            Some(seq) => match self.backlog.reserve_stored(size) {
                Reservation::Queued => true,
                Reservation::Missed => {
                    // The session is replaying: it reads this one from the database.
                    self.notices.do_send(FromRoom::Missed { seq });
                    false
                }
                Reservation::Refused => false,
            },
            None => self.backlog.reserve(size),
        };
        if !queued {
            return false;
        }
        self.deliver.do_send(Deliver {
            frame: frame.clone(),
            seq,
            handed: handed.cloned(),
        });
        true
    }
}

impl Room {
    /// Sends an ephemeral frame to the sessions of `users` (all when `None`), except `except`'s.
    pub(super) fn send_ephemeral(
        &self,
        frame: &ByteString,
        users: Option<&[UserId]>,
        except: Option<&UserId>,
    ) {
        let framed = Framed::new(frame);
        let deliver = |(user, ids): (&UserId, &Vec<SessionId>)| {
            if Some(user) == except {
                return;
            }
            for id in ids {
                if let Some(member) = self.members.get(id) {
                    member.offer(&framed, None, None);
                }
            }
        };
        match users {
            None => self.tabs.iter().for_each(deliver),
            Some(users) => users
                .iter()
                .filter_map(|u| self.tabs.get_key_value(u))
                .for_each(deliver),
        }
    }

    /// Sends an ephemeral frame to the followers of `channel`, except `except`'s sessions.
    pub(super) fn send_to_channel(
        &self,
        frame: &ByteString,
        channel: &Channel,
        except: Option<&UserId>,
    ) {
        let framed = Framed::new(frame);
        for id in self.channels.get(channel).into_iter().flatten() {
            if let Some(member) = self.members.get(id).filter(|m| Some(&m.user) != except) {
                member.offer(&framed, None, None);
            }
        }
    }

    pub(super) fn fan_out(&mut self, event: &RoomEvent) {
        if let Some(handed) = &event.handed {
            self.pacing.pace(handed);
        }
        let framed = Framed::new(&event.frame);
        let deliver = |id: &SessionId| {
            self.members
                .get(id)
                .is_some_and(|member| member.offer(&framed, Some(event.seq), event.handed.as_ref()))
        };
        let delivered = match (&event.channel, &event.user) {
            // Only the channel's followers are looked at, not the whole room: a publish to a
            // channel costs work in proportion to its audience.
            (Some(channel), user) => self
                .channels
                .get(channel)
                .into_iter()
                .flatten()
                .filter(|id| {
                    (user.as_ref())
                        .is_none_or(|u| self.members.get(id).is_some_and(|m| m.user == *u))
                })
                .filter(|id| deliver(id))
                .count(),
            (None, None) => self.members.keys().filter(|id| deliver(id)).count(),
            (None, Some(user)) => self
                .tabs
                .get(user)
                .into_iter()
                .flatten()
                .filter(|id| deliver(id))
                .count(),
        };
        if delivered > 0 {
            metrics::delivered(delivered);
            if let Some(handed) = &event.handed {
                handed.offered();
            }
        }
    }

    /// A member follows a channel, or stops; a follow is answered with the room's position, after
    /// which every event of the channel reaches the member.
    pub(super) fn follow(&mut self, follow: Follow) {
        let Some(member) = self.members.get_mut(&follow.session) else {
            return;
        };
        let followed = member.channels.contains(&follow.channel);
        if follow.follow && !followed {
            member.channels.push(follow.channel.clone());
            self.channels
                .entry(follow.channel.clone())
                .or_default()
                .insert(follow.session);
        } else if !follow.follow && followed {
            member.channels.retain(|c| *c != follow.channel);
        }
        let notices = member.notices.clone();
        if !follow.follow && followed {
            self.unindex(follow.session, &follow.channel);
        }
        if let Some(request) = follow.request.filter(|_| follow.follow) {
            notices.do_send(FromRoom::Subscribed {
                channel: follow.channel,
                seq: self.last_seq,
                request,
            });
        }
    }

    /// Takes `session` out of the channel's index (and the channel out, once nobody follows it).
    pub(super) fn unindex(&mut self, session: SessionId, channel: &Channel) {
        if let Some(followers) = self.channels.get_mut(channel) {
            followers.remove(&session);
            if followers.is_empty() {
                self.channels.remove(channel);
            }
        }
    }

    /// Takes a session in: it is told the last event it will not get, then gets every later one.
    pub(super) fn join(&mut self, join: Join, ctx: &mut Context<Self>) {
        // A tab in a reload loop, or a script, must not pile up sessions without end.
        if self
            .tabs
            .get(&join.user)
            .is_some_and(|tabs| tabs.len() >= self.max_sessions_per_user)
        {
            join.notices.do_send(FromRoom::TooManySessions);
            return;
        }
        // Sent before any event for this session, so the welcome frame is always first.
        join.notices
            .do_send(FromRoom::Joined { seq: self.last_seq });
        let first_tab = !self.tabs.contains_key(&join.user);
        if first_tab {
            self.tell_hook(&join.user, true);
        }
        let returning = self.leaving.remove(&join.user);
        if let Some(timer) = returning {
            // Back within the grace (a reload): never went offline.
            ctx.cancel_future(timer);
        }
        self.tabs
            .entry(join.user.clone())
            .or_default()
            .push(join.session);
        for channel in &join.channels {
            self.channels
                .entry(channel.clone())
                .or_default()
                .insert(join.session);
        }
        self.members.insert(
            join.session,
            Member {
                user: join.user.clone(),
                channels: join.channels,
                framing: join.framing,
                transport: join.transport,
                deliver: join.deliver,
                notices: join.notices.clone(),
                backlog: join.backlog,
                connected_at: join.connected_at,
            },
        );
        if first_tab && returning.is_none() {
            self.presence_here(join.user, true, ctx);
        }
    }
}
