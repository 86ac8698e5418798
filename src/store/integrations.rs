//! Integrations: which account owns a provider's page, OA or source, and the secrets that
//! verify its webhooks and sign its outbound replies.

use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};

use super::schema::integrations;
use super::{deliveries, now_ms, DbConnection, StoreError};
use crate::ids::AccountId;

/// The providers an integration can be for, by the name stored and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Facebook,
    Zalo,
    /// Any system, through Standard Webhooks.
    Generic,
    /// Where the account's `user.online` / `user.offline` webhooks go (`outbound_url`, signed
    /// with `outbound_secret`); its external id is the account's id. Receives nothing.
    Presence,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Facebook => "facebook",
            Self::Zalo => "zalo",
            Self::Generic => "generic",
            Self::Presence => "presence",
        }
    }

    /// The provider of a stored or requested name; `None` for no provider served.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "facebook" => Some(Self::Facebook),
            "zalo" => Some(Self::Zalo),
            "generic" => Some(Self::Generic),
            "presence" => Some(Self::Presence),
            _ => None,
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An integration as stored. Its secrets are never serialized into an API answer: see
/// `api::integrations` for the public view.
#[derive(Debug, Clone, Queryable)]
pub struct Integration {
    pub id: String,
    pub provider: String,
    pub external_id: String,
    #[diesel(deserialize_as = String)]
    pub account_id: AccountId,
    pub secret: String,
    pub app_id: Option<String>,
    pub outbound_url: Option<String>,
    pub outbound_secret: String,
    pub disabled_at: Option<i64>,
    pub created_at: i64,
}

pub struct NewIntegration<'a> {
    pub id: &'a str,
    pub provider: &'a str,
    pub external_id: &'a str,
    pub account_id: &'a str,
    pub secret: &'a str,
    pub app_id: Option<&'a str>,
    pub outbound_url: Option<&'a str>,
    pub outbound_secret: &'a str,
}

/// `None` when the provider already has an integration with that external id.
pub fn create(
    conn: &mut DbConnection,
    new: &NewIntegration<'_>,
) -> Result<Option<Integration>, StoreError> {
    let inserted = diesel::insert_into(integrations::table)
        .values((
            integrations::id.eq(new.id),
            integrations::provider.eq(new.provider),
            integrations::external_id.eq(new.external_id),
            integrations::account_id.eq(new.account_id),
            integrations::secret.eq(new.secret),
            integrations::app_id.eq(new.app_id),
            integrations::outbound_url.eq(new.outbound_url),
            integrations::outbound_secret.eq(new.outbound_secret),
            integrations::created_at.eq(now_ms()),
        ))
        .execute(conn);
    match inserted {
        Ok(_) => get(conn, new.id),
        Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub fn get(conn: &mut DbConnection, id: &str) -> Result<Option<Integration>, StoreError> {
    Ok(integrations::table.find(id).first(conn).optional()?)
}

/// The enabled integration a webhook addresses.
pub fn find_enabled(
    conn: &mut DbConnection,
    provider: &str,
    external_id: &str,
) -> Result<Option<Integration>, StoreError> {
    Ok(integrations::table
        .filter(integrations::provider.eq(provider))
        .filter(integrations::external_id.eq(external_id))
        .filter(integrations::disabled_at.is_null())
        .first(conn)
        .optional()?)
}

/// The enabled integrations of these pages (a Facebook webhook may batch several; the caller
/// bounds how many ids it asks for).
pub fn find_enabled_among(
    conn: &mut DbConnection,
    provider: &str,
    external_ids: &[String],
) -> Result<Vec<Integration>, StoreError> {
    Ok(integrations::table
        .filter(integrations::provider.eq(provider))
        .filter(integrations::external_id.eq_any(external_ids))
        .filter(integrations::disabled_at.is_null())
        .load(conn)?)
}

pub fn list(
    conn: &mut DbConnection,
    account_id: Option<&str>,
) -> Result<Vec<Integration>, StoreError> {
    let mut query = integrations::table
        .order(integrations::created_at.asc())
        .into_boxed();
    if let Some(account_id) = account_id {
        query = query.filter(integrations::account_id.eq(account_id));
    }
    Ok(query.load(conn)?)
}

/// Which of an integration's secrets to replace.
#[derive(Debug, Clone, Copy)]
pub enum SecretKind {
    Inbound,
    Outbound,
}

pub fn set_secret(
    conn: &mut DbConnection,
    id: &str,
    kind: SecretKind,
    secret: &str,
) -> Result<Option<Integration>, StoreError> {
    let target = integrations::table.find(id);
    let rows = match kind {
        SecretKind::Inbound => diesel::update(target)
            .set(integrations::secret.eq(secret))
            .execute(conn)?,
        SecretKind::Outbound => diesel::update(target)
            .set(integrations::outbound_secret.eq(secret))
            .execute(conn)?,
    };
    if rows == 0 {
        return Ok(None);
    }
    get(conn, id)
}

/// Disables the integration: its webhooks find it no more, and it sends nothing more — each of
/// its pending outbound deliveries is made due now, so that the dispatcher ends it as `failed`
/// ("integration disabled") at its next scan instead of sending it.
pub fn disable(conn: &mut DbConnection, id: &str) -> Result<Option<Integration>, StoreError> {
    diesel::update(integrations::table.find(id))
        .filter(integrations::disabled_at.is_null())
        .set(integrations::disabled_at.eq(now_ms()))
        .execute(conn)?;
    deliveries::due_now_of(conn, id)?;
    get(conn, id)
}
