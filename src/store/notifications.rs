//! Notifications the application creates for a user. Every query takes the owner (account and
//! user), so someone else's notification is simply not found.

use diesel::prelude::*;
use serde::Serialize;
use serde_json::value::RawValue;

use super::conversations::Cursor;
use super::schema::notifications as n;
use super::{now_ms, DbConnection, StoreError};
use crate::ids::{random_id, AccountId, UserId};

#[derive(Debug, Clone, Queryable)]
pub struct Notification {
    pub id: String,
    pub account_id: String,
    pub user_id: String,
    pub kind: String,
    pub title: String,
    pub message: Option<String>,
    pub data: String,
    pub read_at: Option<i64>,
    pub created_at: i64,
}

#[derive(Serialize)]
struct NotificationView<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    message: Option<&'a str>,
    data: &'a RawValue,
    read: bool,
    read_at: Option<i64>,
    created_at: i64,
}

impl Notification {
    pub fn to_json(&self) -> String {
        let null = RawValue::from_string("null".into()).expect("null is JSON");
        let data = serde_json::from_str::<&RawValue>(&self.data).unwrap_or(&null);
        serde_json::to_string(&NotificationView {
            id: &self.id,
            kind: &self.kind,
            title: &self.title,
            message: self.message.as_deref(),
            data,
            read: self.read_at.is_some(),
            read_at: self.read_at,
            created_at: self.created_at,
        })
        .expect("notifications serialize")
    }
}

pub struct NewNotification<'a> {
    pub kind: &'a str,
    pub title: &'a str,
    pub message: Option<&'a str>,
    /// JSON text.
    pub data: &'a str,
}

type Backend = <DbConnection as diesel::Connection>::Backend;

/// The user's own notifications.
fn owned(account: &AccountId, user: &UserId) -> n::BoxedQuery<'static, Backend> {
    n::table
        .filter(n::account_id.eq(account.as_str().to_owned()))
        .filter(n::user_id.eq(user.as_str().to_owned()))
        .into_boxed()
}

pub fn create(
    conn: &mut DbConnection,
    account: &AccountId,
    user: &UserId,
    new: &NewNotification<'_>,
) -> Result<Notification, StoreError> {
    let id = random_id("ntf");
    diesel::insert_into(n::table)
        .values((
            n::id.eq(&id),
            n::account_id.eq(account.as_str()),
            n::user_id.eq(user.as_str()),
            n::kind.eq(new.kind),
            n::title.eq(new.title),
            n::message.eq(new.message),
            n::data.eq(new.data),
            n::created_at.eq(now_ms()),
        ))
        .execute(conn)?;
    Ok(n::table.find(&id).first(conn)?)
}

/// The user's notifications, newest first.
pub fn list(
    conn: &mut DbConnection,
    account: &AccountId,
    user: &UserId,
    unread_only: bool,
    limit: i64,
    before: Option<&Cursor>,
) -> Result<Vec<Notification>, StoreError> {
    let mut query = owned(account, user)
        .order((n::created_at.desc(), n::id.desc()))
        .limit(limit);
    if unread_only {
        query = query.filter(n::read_at.is_null());
    }
    if let Some(c) = before {
        query = query.filter(
            n::created_at
                .lt(c.time)
                .or(n::created_at.eq(c.time).and(n::id.lt(c.id.clone()))),
        );
    }
    Ok(query.load(conn)?)
}

pub fn unread_count(
    conn: &mut DbConnection,
    account: &AccountId,
    user: &UserId,
) -> Result<i64, StoreError> {
    Ok(owned(account, user)
        .filter(n::read_at.is_null())
        .count()
        .get_result(conn)?)
}

/// Marks one (`Some(id)`) or all of the user's notifications read; `false` if the id is not
/// theirs.
pub fn mark_read(
    conn: &mut DbConnection,
    account: &AccountId,
    user: &UserId,
    id: Option<&str>,
) -> Result<bool, StoreError> {
    if let Some(id) = id {
        if !exists(conn, account, user, id)? {
            return Ok(false);
        }
    }
    let unread = n::table
        .filter(n::account_id.eq(account.as_str()))
        .filter(n::user_id.eq(user.as_str()))
        .filter(n::read_at.is_null());
    let now = n::read_at.eq(now_ms());
    match id {
        Some(id) => diesel::update(unread.filter(n::id.eq(id)))
            .set(now)
            .execute(conn)?,
        None => diesel::update(unread).set(now).execute(conn)?,
    };
    Ok(true)
}

fn exists(
    conn: &mut DbConnection,
    account: &AccountId,
    user: &UserId,
    id: &str,
) -> Result<bool, StoreError> {
    Ok(owned(account, user)
        .filter(n::id.eq(id.to_owned()))
        .count()
        .get_result::<i64>(conn)?
        > 0)
}

/// Deletes the user's notification; `false` if it is not theirs.
pub fn delete(
    conn: &mut DbConnection,
    account: &AccountId,
    user: &UserId,
    id: &str,
) -> Result<bool, StoreError> {
    let deleted = diesel::delete(
        n::table
            .filter(n::id.eq(id))
            .filter(n::account_id.eq(account.as_str()))
            .filter(n::user_id.eq(user.as_str())),
    )
    .execute(conn)?;
    Ok(deleted > 0)
}
