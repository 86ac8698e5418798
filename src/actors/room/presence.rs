//! Presence in a room: who came online or went offline, announced to the account in batches,
//! with a grace before a user whose last tab closed counts as gone. In a cluster the decision is
//! the peers' (see [`Peers`](crate::actors::peers::Peers)).
//!
//! Part of the room actor (engine layer): uses `protocol` (the ephemeral frame) and `config`.

use std::time::Duration;

use actix::prelude::*;

use super::Room;
use crate::ids::UserId;
use crate::protocol::ephemeral_frame;

/// How long presence changes are gathered before they are announced: a room filling up (a
/// deploy, everyone reconnecting) announces its arrivals in a few frames, not one frame per
/// arrival to every member — which would cost the square of the room's size.
const PRESENCE_BATCH: Duration = Duration::from_millis(100);

impl Room {
    /// A user came online or went offline: announced at once when nothing was announced within
    /// the last [`PRESENCE_BATCH`], otherwise gathered with whatever else changes until then.
    pub(super) fn presence_changed(
        &mut self,
        user: &UserId,
        online: bool,
        ctx: &mut Context<Self>,
    ) {
        if self.members.len() > self.presence.broadcast_max {
            return;
        }
        if self.presence_batching {
            self.presence_changes.retain(|(u, _)| u != user);
            self.presence_changes.push((user.clone(), online));
            return;
        }
        self.announce(vec![(user.clone(), online)]);
        self.batch_presence(ctx);
    }

    /// Holds presence changes back for [`PRESENCE_BATCH`], then announces them together; goes on
    /// batching while changes keep coming.
    pub(super) fn batch_presence(&mut self, ctx: &mut Context<Self>) {
        self.presence_batching = true;
        ctx.run_later(PRESENCE_BATCH, |room, ctx| {
            room.guarded(ctx, |room, ctx| {
                let changes = std::mem::take(&mut room.presence_changes);
                if changes.is_empty() {
                    room.presence_batching = false;
                } else {
                    room.announce(changes);
                    room.batch_presence(ctx);
                }
            })
        });
    }

    /// Tells the account who came online or went offline. One change is a `user-online` or
    /// `user-offline` event (the user's own tabs know already); several are one
    /// `presence-changed` event listing them. Large rooms do not announce (see
    /// `Presence::broadcast_max`).
    pub(super) fn announce(&self, changes: Vec<(UserId, bool)>) {
        if self.members.len() > self.presence.broadcast_max {
            return;
        }
        if let [(user, online)] = changes.as_slice() {
            let event = if *online {
                "user-online"
            } else {
                "user-offline"
            };
            let frame = ephemeral_frame(event, &serde_json::json!({ "user_id": user.as_str() }));
            self.send_ephemeral(&frame, None, Some(user));
            return;
        }
        let users = |wanted: bool| -> Vec<&str> {
            changes
                .iter()
                .filter(|(_, online)| *online == wanted)
                .map(|(user, _)| user.as_str())
                .collect()
        };
        let frame = ephemeral_frame(
            "presence-changed",
            &serde_json::json!({ "online": users(true), "offline": users(false) }),
        );
        self.send_ephemeral(&frame, None, None);
    }

    /// A user's first session here opened (`online`), or their last one closed. Alone, the room
    /// decides what that means for their presence, keeping the grace itself; in a cluster, the
    /// peers decide — the user may have sessions on other nodes, and this room may close
    /// before the grace is over.
    pub(super) fn presence_here(&mut self, user: UserId, online: bool, ctx: &mut Context<Self>) {
        match (&self.peers, online) {
            (Some(peers), _) => peers.presence(&self.account, &user, online),
            (None, true) => self.presence_changed(&user, true, ctx),
            (None, false) => {
                self.tell_hook(&user, false);
                self.going_offline(user, ctx)
            }
        }
    }

    /// The user's last session closed: offline once the grace has passed without a new one.
    pub(super) fn going_offline(&mut self, user: UserId, ctx: &mut Context<Self>) {
        let timer = ctx.run_later(self.presence.grace, {
            let user = user.clone();
            move |room, ctx| {
                room.guarded(ctx, |room, ctx| {
                    room.leaving.remove(&user);
                    room.presence_changed(&user, false, ctx);
                })
            }
        });
        self.leaving.insert(user, timer);
    }

    /// Alone (without peers), tells the presence hook that the user's first tab here opened
    /// (a reload's included) or their last closed: the hook keeps its own grace, as this room
    /// may close before its grace is over.
    pub(super) fn tell_hook(&self, user: &UserId, online: bool) {
        if let (None, Some(hook)) = (&self.peers, &self.presence_hook) {
            hook.here(&self.account, user, online);
        }
    }
}
