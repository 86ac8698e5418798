//! What sessions ask on their users' behalf, done by the services: the engine's
//! [`Service`](crate::actors::service::Service) implemented with the inbox, through the one
//! commit path, with the per-user allowance of sends the REST API draws on too.
//!
//! Services layer: uses `inbox`, `commit`, `store` and the engine's port.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::actors::service::{Refused, SendRequest, Sent, Service};
use crate::auth::Identity;
use crate::commit::Committer;
use crate::ids::UserId;
use crate::inbox::{self, InboxError, Send, SendRate};
use crate::store::Store;

/// The sessions' requests, served by the inbox.
pub struct Requests {
    commits: Committer,
    store: Store,
    /// Each user's allowance of sends, shared with the REST API.
    sends: Arc<SendRate>,
}

impl Requests {
    pub fn new(commits: Committer, store: Store, sends: Arc<SendRate>) -> Self {
        Self {
            commits,
            store,
            sends,
        }
    }
}

fn message(send: &SendRequest) -> Send<'_> {
    Send {
        conversation_id: &send.conversation_id,
        text: send.text.as_deref(),
        attachments: send.attachments.as_deref(),
        client_msg_id: send.client_msg_id.as_deref(),
    }
}

/// How the client is told of an inbox error; a fault is logged here, once.
fn refused(error: InboxError) -> Refused {
    if let InboxError::Store(e) = &error {
        log::error!("session request failed: {e}");
    }
    let message = match &error {
        InboxError::Store(_) => "internal error; try again".to_owned(),
        other => other.to_string(),
    };
    Refused {
        code: error.code(),
        message,
    }
}

impl Service for Requests {
    fn admit_send(&self, who: &Identity) -> Result<(), Duration> {
        self.sends.check(&who.account, &who.user)
    }

    fn check_send(&self, send: &SendRequest) -> Result<(), Refused> {
        message(send).validate().map_err(refused)
    }

    fn send(&self, who: &Identity, send: SendRequest) -> BoxFuture<'static, Result<Sent, Refused>> {
        let commits = self.commits.clone();
        let (account, user) = (who.account.clone(), who.user.clone());
        Box::pin(async move {
            let sent = commits
                .commit(account.clone(), move |conn| {
                    inbox::send(conn, &account, &user, &message(&send))
                })
                .await
                .map_err(refused)?;
            Ok(Sent {
                conversation_id: sent.message.conversation_id,
                message_id: sent.message.id,
                seq: sent.seq,
                duplicate: sent.duplicate,
            })
        })
    }

    fn read(
        &self,
        who: &Identity,
        conversation_id: String,
        up_to: Option<String>,
    ) -> BoxFuture<'static, Result<(), Refused>> {
        let commits = self.commits.clone();
        let (account, user) = (who.account.clone(), who.user.clone());
        Box::pin(async move {
            commits
                .commit(account.clone(), move |conn| {
                    inbox::mark_read(conn, &account, &user, &conversation_id, up_to.as_deref())
                })
                .await
                .map(|_: (_, _)| ())
                .map_err(refused)
        })
    }

    fn typing_audience(
        &self,
        who: &Identity,
        conversation_id: String,
    ) -> BoxFuture<'static, Result<Option<Vec<UserId>>, Refused>> {
        let store = self.store.clone();
        let (account, user) = (who.account.clone(), who.user.clone());
        Box::pin(async move {
            store
                .run(move |conn| inbox::typing_audience(conn, &account, &user, &conversation_id))
                .await
                .map_err(refused)
        })
    }
}
